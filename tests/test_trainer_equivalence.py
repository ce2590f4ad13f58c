"""`SDPOTrainer`'s loss and gradients against independent computations: TRL's DPOTrainer, float64 forward passes."""

import copy
import math

import pytest
import torch
from datasets import Dataset
from reference import float64_sequence_logp
from tiny import make_model, make_tokenizer
from tolerances import assert_fp32_close, assert_fp32_dicts_close
from trl import DPOConfig, DPOTrainer

from trl_sdpo import SDPOConfig, SDPOTrainer

COMMON = dict(
    report_to=[],
    bf16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    max_length=None,
    seed=0,
)

ROWS = [
    {
        "prompt": "Which movie next? Heat, Fargo. Answer:",
        "chosen": " Fargo",
        "rejected": [" Heat", " Babe", " Casino"],
    },
    {"prompt": "Recommend one artist. Answer:", "chosen": " Muse", "rejected": [" Blur", " Pulp", " Oasis"]},
    {"prompt": "The user likes Toy Story. Answer:", "chosen": " Jumanji", "rejected": [" Sabrina", " Heat", " Babe"]},
    {"prompt": "Given the candidates: red, blue. Answer:", "chosen": " blue", "rejected": [" red", " green", " cat"]},
]


def perturbed_copy(model, scale=0.05, seed=1):
    """A reference model different from the policy, so that rewards are not all zero."""
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return ref


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def logps_scale(trainer):
    """Magnitude of the summed log-probs behind the last logged loss (TRL's own metrics): the scale of its rounding."""
    metrics = trainer._metrics["train"]
    return abs(metrics["logps/chosen"][-1]) + abs(metrics["logps/rejected"][-1])


def loss_and_grads(trainer):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_k1_equals_trl_dpo_sigmoid(tmp_path, prefix_sharing):
    tokenizer = make_tokenizer()
    policy = make_model("llama")
    ref = perturbed_copy(policy)
    pair_rows = [{**r, "rejected": r["rejected"][0]} for r in ROWS]
    list_rows = [{**r, "rejected": r["rejected"][:1]} for r in ROWS]

    dpo = DPOTrainer(
        copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=DPOConfig(str(tmp_path / "dpo"), loss_type=["sigmoid"], beta=0.5, **COMMON),
        train_dataset=Dataset.from_list(pair_rows),
        processing_class=tokenizer,
    )
    sdpo = SDPOTrainer(
        copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=SDPOConfig(str(tmp_path / "sdpo"), beta=0.5, prefix_sharing=prefix_sharing, **COMMON),
        train_dataset=Dataset.from_list(list_rows),
        processing_class=tokenizer,
    )
    dpo_loss, dpo_grads = loss_and_grads(dpo)
    sdpo_loss_value, sdpo_grads = loss_and_grads(sdpo)
    assert dpo_loss.item() > 0
    # Two code paths (TRL's fused head, ours) over the same log-probs: the loss is beta * (differences of summed
    # log-probs), so its rounding is that of the log-probs' magnitude, read off TRL's logged metric.
    assert_fp32_close(sdpo_loss_value, dpo_loss, scale=0.5 * logps_scale(dpo))
    assert dpo_grads.keys() == sdpo_grads.keys() and len(dpo_grads) > 0
    assert_fp32_dicts_close(sdpo_grads, dpo_grads)
    # The logged metrics agree under TRL's names too
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert_fp32_close(sdpo._metrics["train"][name][-1], dpo._metrics["train"][name][-1], scale=logps_scale(dpo))


def float64_sdpo_loss(policy, ref, tokenizer, rows, beta):
    losses = []
    for row in rows:
        r = [
            float64_sequence_logp(policy, tokenizer, row["prompt"], c)
            - float64_sequence_logp(ref, tokenizer, row["prompt"], c)
            for c in [row["chosen"], *row["rejected"]]
        ]
        total = sum(math.exp(beta * (rj - r[0])) for rj in r[1:])
        losses.append(math.log1p(total))  # -log sigmoid(-log total)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_k3_loss_equals_float64_separate_forward_passes(tmp_path, prefix_sharing):
    tokenizer = make_tokenizer()
    policy = make_model("qwen2")
    ref = perturbed_copy(policy)
    trainer = SDPOTrainer(
        policy,
        ref_model=ref,
        args=SDPOConfig(str(tmp_path), beta=2.0, prefix_sharing=prefix_sharing, **COMMON),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    batch = first_batch(trainer)
    assert batch["rejected_mask"].shape == (4, 3)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    # The dataloader shuffles; the mean over all four rows does not depend on the order.
    expected = float64_sdpo_loss(policy, ref, tokenizer, ROWS, beta=2.0)
    assert_fp32_close(loss, expected, scale=2.0 * logps_scale(trainer))  # beta = 2


def test_variable_k_with_masking_equals_each_row_alone(tmp_path):
    tokenizer = make_tokenizer()
    policy = make_model("llama")
    ref = perturbed_copy(policy)
    rows = [{**r, "rejected": r["rejected"][: i % 3 + 1]} for i, r in enumerate(ROWS)]  # k = 1, 2, 3, 1

    def loss_of(rows_subset):
        trainer = SDPOTrainer(
            copy.deepcopy(policy),
            ref_model=copy.deepcopy(ref),
            args=SDPOConfig(str(tmp_path), beta=1.0, **{**COMMON, "per_device_train_batch_size": len(rows_subset)}),
            train_dataset=Dataset.from_list(rows_subset),
            processing_class=tokenizer,
        )
        batch = first_batch(trainer)
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item(), batch, logps_scale(trainer)

    together, batch, scale = loss_of(rows)
    assert batch["rejected_mask"].sum(1).sort().values.tolist() == [1, 1, 2, 3]
    alone = [loss_of([row])[0] for row in rows]
    assert_fp32_close(together, sum(alone) / len(alone), scale=scale)  # other padding, other summation order


def test_num_negatives_takes_the_first_k(tmp_path):
    tokenizer = make_tokenizer()
    policy = make_model("llama")
    ref = perturbed_copy(policy)

    def loss_of(rows, **kwargs):
        trainer = SDPOTrainer(
            copy.deepcopy(policy),
            ref_model=copy.deepcopy(ref),
            args=SDPOConfig(str(tmp_path), beta=1.0, **COMMON, **kwargs),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, first_batch(trainer)).item()

    capped = loss_of(ROWS, num_negatives=2)
    sliced = loss_of([{**r, "rejected": r["rejected"][:2]} for r in ROWS])
    full = loss_of(ROWS)
    assert capped == sliced  # the same tokenized batch in the same order: the same kernels on the same inputs
    assert capped != pytest.approx(full, abs=1e-4)


def test_shared_prefix_and_rows_give_the_same_loss_and_gradients(tmp_path):
    tokenizer = make_tokenizer()
    policy = make_model("llama")
    ref = perturbed_copy(policy)
    rows = [{**r, "rejected": r["rejected"][: i % 3 + 1]} for i, r in enumerate(ROWS)]  # variable k
    results = {}
    for prefix_sharing in (True, False):
        trainer = SDPOTrainer(
            copy.deepcopy(policy),
            ref_model=copy.deepcopy(ref),
            args=SDPOConfig(str(tmp_path), beta=1.0, prefix_sharing=prefix_sharing, **COMMON),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        results[prefix_sharing] = loss_and_grads(trainer)
    (shared_loss, shared_grads), (rows_loss, rows_grads) = results[True], results[False]
    # beta = 1: the loss carries the rounding of the summed log-probs it is made of
    assert_fp32_close(shared_loss, rows_loss, scale=logps_scale(trainer))
    assert_fp32_dicts_close(shared_grads, rows_grads)
