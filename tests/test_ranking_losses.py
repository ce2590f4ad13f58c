"""The ranking losses (`ranking_loss`) and the `sft` term, against independent computations.

Pure functions: float64 Python arithmetic written out from each formula. Through the trainer: TRL's own
`DPOTrainer` on the rows split into pairs (`pairwise`) or on k=1 pairs (`["sigmoid", "sft"]`), and float64 separate
forward passes (`plackett_luce`), never this package's own code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset
from reference import float64_sequence_logp
from test_dpo_compat import COMMON, ROWS, Recorder, assert_same_steps, moved, train_both
from tiny import make_model, make_tokenizer
from tolerances import assert_fp32_close, assert_fp32_dicts_close, magnitude
from trl import DPOConfig, DPOTrainer

from trl_sdpo import SDPOConfig, SDPOTrainer, pairwise_dpo_loss, plackett_luce_loss, sdpo_loss, split_into_pairs
from trl_sdpo.loss import RANKING_LOSSES

# ------------------------------------------------------------------------------------------- float64 references


def dpo_pair_loss(r_w: float, r_l: float) -> float:
    """-log sigmoid(r_w - r_l), rewards already multiplied by beta."""
    return math.log1p(math.exp(-(r_w - r_l)))


def pairwise_reference(r_w: float, negatives: list[float]) -> float:
    return sum(dpo_pair_loss(r_w, r_j) for r_j in negatives) / len(negatives)


def plackett_luce_reference(scores: list[float]) -> float:
    """NLL of the order `scores[0] > scores[1] > ...`: at each position, pick that item among those left."""
    return sum(
        math.log(sum(math.exp(s) for s in scores[i:])) - scores[i]
        for i in range(len(scores) - 1)  # the last pick has one candidate: log 1 = 0
    )


def random_inputs(rows: int, k: int, seed: int, scale: float = 3.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((rows,), (rows, k), (rows,), (rows, k))
    return [torch.randn(*shape, generator=gen, dtype=dtype) * scale for shape in shapes]


def rewards(pc, pr, rc, rr, beta):
    return (beta * (pc - rc)).tolist(), (beta * (pr - rr)).tolist()


# ------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_pairwise_matches_the_mean_of_dpo_pair_losses_in_float64(beta):
    pc, pr, rc, rr = random_inputs(6, 4, seed=0)
    mask = torch.tensor([[True] * 4, [True, False, False, False], [True, True, False, False]] * 2)
    losses, _, _ = pairwise_dpo_loss(pc, pr, rc, rr, beta, mask)
    chosen, rejected = rewards(pc, pr, rc, rr, beta)
    for i in range(6):
        present = [r for r, m in zip(rejected[i], mask[i].tolist()) if m]
        assert losses[i].item() == pytest.approx(pairwise_reference(chosen[i], present), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_plackett_luce_matches_the_ranking_likelihood_in_float64(beta):
    pc, pr, rc, rr = random_inputs(6, 4, seed=1)
    mask = torch.tensor([[True] * 4, [True, False, False, False], [True, True, True, False]] * 2)
    losses, _, _ = plackett_luce_loss(pc, pr, rc, rr, beta, mask)
    chosen, rejected = rewards(pc, pr, rc, rr, beta)
    for i in range(6):
        order = [chosen[i]] + [r for r, m in zip(rejected[i], mask[i].tolist()) if m]
        assert losses[i].item() == pytest.approx(plackett_luce_reference(order), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", list(RANKING_LOSSES))
def test_every_ranking_loss_is_dpo_at_k1(name):
    pc, pr, rc, rr = random_inputs(8, 1, seed=2, dtype=torch.float32)
    losses, chosen, rejected = RANKING_LOSSES[name](pc, pr, rc, rr, 0.1)
    # TRL's DPO "sigmoid" loss, written independently in float64
    delta = (pc.double() - rc.double()) - (pr[:, 0].double() - rr[:, 0].double())
    expected = -torch.nn.functional.logsigmoid(0.1 * delta)
    assert_fp32_close(losses, expected, scale=magnitude(expected, 0.1 * delta))
    assert_fp32_close(chosen, 0.1 * (pc.double() - rc.double()))
    assert_fp32_close(rejected, 0.1 * (pr.double() - rr.double()))


def test_plackett_luce_first_position_is_the_softmax_loss():
    # L_PL(w > r0 > r1 > r2) = L_softmax(w against r0, r1, r2) + L_PL(r0 > r1 > r2): the first pick is S-DPO's event
    pc, pr, rc, rr = random_inputs(5, 3, seed=3)
    full, _, _ = plackett_luce_loss(pc, pr, rc, rr, 0.7)
    first, _, _ = sdpo_loss(pc, pr, rc, rr, 0.7)
    rest, _, _ = plackett_luce_loss(pr[:, 0], pr[:, 1:], rr[:, 0], rr[:, 1:], 0.7)
    torch.testing.assert_close(full, first + rest, rtol=1e-12, atol=1e-12)


def test_the_losses_differ_beyond_k1():
    pc, pr, rc, rr = random_inputs(5, 3, seed=4)
    values = [RANKING_LOSSES[name](pc, pr, rc, rr, 1.0)[0] for name in RANKING_LOSSES]
    for a in range(len(values)):
        for b in range(a + 1, len(values)):
            assert (values[a] - values[b]).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(RANKING_LOSSES))
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_loss_and_gradients_for_huge_margins_and_padding(name, sign, dtype):
    # beta * margin = 1e4, past where a sum of exponentials overflows (~88 in fp32); one row padded
    pc = torch.zeros(2, dtype=dtype, requires_grad=True)
    pr = torch.full((2, 3), sign * 1e4, dtype=dtype, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    losses, _, _ = RANKING_LOSSES[name](pc, pr, torch.zeros(2, dtype=dtype), torch.zeros(2, 3, dtype=dtype), 1.0, mask)
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert (pr.grad[~mask] == 0).all()  # padded negatives get no gradient


@pytest.mark.parametrize("name", list(RANKING_LOSSES))
def test_gradients_match_float64_autograd_of_the_reference(name):
    pc, pr, rc, rr = random_inputs(4, 3, seed=5, scale=1.0)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    RANKING_LOSSES[name](pc, pr, rc, rr, 0.7)[0].sum().backward()
    got = (pc.grad.clone(), pr.grad.clone())
    pc.grad = pr.grad = None
    w, neg = 0.7 * (pc - rc), 0.7 * (pr - rr)
    if name == "softmax":
        naive = torch.log1p(torch.exp(neg - w.unsqueeze(1)).sum(1))
    elif name == "pairwise":
        naive = torch.log1p(torch.exp(neg - w.unsqueeze(1))).mean(1)
    else:
        scores = torch.cat([w.unsqueeze(1), neg], 1)
        naive = sum(torch.log(torch.exp(scores[:, i:]).sum(1)) - scores[:, i] for i in range(3))
    naive.sum().backward()
    torch.testing.assert_close(got[0], pc.grad)
    torch.testing.assert_close(got[1], pr.grad)


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(ranking_loss="listwise"), r"`ranking_loss` is 'listwise'"),
        (dict(loss_type=["hinge"]), r"loss_type=\['hinge'\]"),
        (dict(loss_type=["sft"]), r"loss_type=\['sft'\]"),
        (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "loss_weights"),
        (dict(beta=0.0), r"`beta` must be positive, got 0.0"),
        (dict(beta=-1.0), r"`beta` must be positive, got -1.0"),
    ],
    ids=["unknown-ranking-loss", "hinge", "sft-alone", "weights-length", "beta-0", "beta-negative"],
)
def test_config_refuses_what_cannot_be_meant(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        SDPOConfig(str(tmp_path), report_to=[], **settings)


def test_plackett_luce_refuses_num_negatives_that_cut_a_ranking(tmp_path):
    tokenizer = make_tokenizer()
    policy = make_model("llama", tokenizer=tokenizer)
    rows = [{**ROWS[0], "rejected": ROWS[0]["rejected"][:2]}, ROWS[1]]  # k = 2, then 3
    args = SDPOConfig(str(tmp_path), ranking_loss="plackett_luce", num_negatives=2, **COMMON)
    with pytest.raises(ValueError, match=r"Row 1 of the train dataset: field `rejected` holds a ranking of 3"):
        SDPOTrainer(
            policy, copy.deepcopy(policy), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
    # The softmax loss takes the first k of interchangeable negatives: allowed
    args = SDPOConfig(str(tmp_path), num_negatives=2, **COMMON)
    SDPOTrainer(
        policy, copy.deepcopy(policy), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


# ------------------------------------------------------------------------------------------- split_into_pairs


def test_split_into_pairs_gives_one_row_per_negative_in_order():
    rows = [
        {"prompt": "p0", "chosen": "c0", "rejected": ["a", "b", "c"], "id": 0},
        {"prompt": "p1", "chosen": "c1", "rejected": ["d"], "id": 1},
    ]
    pairs = split_into_pairs(Dataset.from_list(rows))
    assert pairs.to_list() == [
        {"prompt": "p0", "chosen": "c0", "rejected": "a", "id": 0},
        {"prompt": "p0", "chosen": "c0", "rejected": "b", "id": 0},
        {"prompt": "p0", "chosen": "c0", "rejected": "c", "id": 0},
        {"prompt": "p1", "chosen": "c1", "rejected": "d", "id": 1},
    ]
    assert split_into_pairs(Dataset.from_list(rows[:1]), num_negatives=2)["rejected"] == ["a", "b"]


def test_split_into_pairs_keeps_conversational_completions_whole():
    turn = [{"role": "user", "content": "pick"}]
    rows = [
        {
            "prompt": turn,
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [[{"role": "assistant", "content": "y"}], [{"role": "assistant", "content": "z"}]],
        }
    ]
    pairs = split_into_pairs(Dataset.from_list(rows))
    assert [p["rejected"] for p in pairs] == [[{"role": "assistant", "content": c}] for c in "yz"]


def test_split_into_pairs_names_the_bad_row():
    rows = [{"prompt": "p", "chosen": "c", "rejected": ["a"]}, {"prompt": "p", "chosen": "c", "rejected": []}]
    with pytest.raises(ValueError, match=r"Row 1: field `rejected` is an empty list"):
        split_into_pairs(Dataset.from_list(rows))


# ------------------------------------------------------------------------------------------- through the trainer


def one_sgd_step(trainer):
    """Train one step; return the loss and every parameter's update."""
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    recorder = Recorder(trainer)
    trainer.train()
    assert len(recorder.losses) == 1
    return recorder.losses[0], {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "lfm2"])  # lfm2: a conv hybrid, where the shared prefix falls back to rows
def test_pairwise_equals_dpo_trainer_on_the_split_pairs(tmp_path, arch):
    tokenizer = make_tokenizer()
    policy = moved(make_model(arch, tokenizer=tokenizer))
    ref = moved(copy.deepcopy(policy), scale=0.05, seed=4)  # differs from the policy: rewards are not zero
    assert {len(r["rejected"]) for r in ROWS} == {3}
    settings = {**COMMON, "max_steps": 1}
    dpo = DPOTrainer(
        copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=DPOConfig(str(tmp_path / "dpo"), **{**settings, "per_device_train_batch_size": 3 * len(ROWS)}),
        train_dataset=split_into_pairs(Dataset.from_list(ROWS)),
        processing_class=tokenizer,
    )
    sdpo = SDPOTrainer(
        copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=SDPOConfig(
            str(tmp_path / "sdpo"),
            ranking_loss="pairwise",
            **{**settings, "per_device_train_batch_size": len(ROWS)},
        ),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    dpo_loss, dpo_updates = one_sgd_step(dpo)
    sdpo_loss_value, sdpo_updates = one_sgd_step(sdpo)
    logps = dpo.state.log_history[0]
    scale = COMMON["beta"] * (abs(logps["logps/chosen"]) + abs(logps["logps/rejected"]))
    assert_fp32_close(sdpo_loss_value, dpo_loss, scale=scale)
    # Each update is -lr * (the clipped gradient): two code paths round the gradient differently, nothing else
    assert_fp32_dicts_close(sdpo_updates, dpo_updates)
    assert magnitude(*dpo_updates.values()) > 1e-4  # the step moved the model


def float64_reward(policy, ref, tokenizer, prompt, completion, beta):
    return beta * (
        float64_sequence_logp(policy, tokenizer, prompt, completion)
        - float64_sequence_logp(ref, tokenizer, prompt, completion)
    )


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_plackett_luce_equals_float64_separate_forward_passes_at_ragged_k(tmp_path, prefix_sharing):
    tokenizer = make_tokenizer()
    policy = moved(make_model("qwen2", tokenizer=tokenizer), scale=0.05)
    ref = moved(copy.deepcopy(policy), scale=0.05, seed=4)
    rows = [{**r, "rejected": r["rejected"][: i % 3 + 1]} for i, r in enumerate(ROWS)]  # k = 1, 2, 3, 1, 2, 3
    beta = 2.0
    trainer = SDPOTrainer(
        policy,
        ref_model=ref,
        args=SDPOConfig(
            str(tmp_path),
            ranking_loss="plackett_luce",
            prefix_sharing=prefix_sharing,
            **{**COMMON, "beta": beta, "per_device_train_batch_size": len(rows)},
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    expected, logps = [], []
    for row in rows:
        completions = [row["chosen"], *row["rejected"]]
        scores = [float64_reward(policy, ref, tokenizer, row["prompt"], c, beta) for c in completions]
        logps += [float64_sequence_logp(policy, tokenizer, row["prompt"], c) for c in completions]
        expected.append(plackett_luce_reference(scores))
    # The mean over rows does not depend on the dataloader's order; the rounding is that of beta * summed log-probs
    assert_fp32_close(loss, sum(expected) / len(expected), scale=beta * magnitude(logps) * 2)


def test_sigmoid_and_sft_at_k1_match_dpo_trainer_step_by_step(tmp_path):
    tokenizer = make_tokenizer()
    policy = moved(make_model("llama", tokenizer=tokenizer), scale=0.05)
    ref = moved(copy.deepcopy(policy), scale=0.05, seed=4)
    dpo, sdpo = train_both(
        tmp_path, policy, ref, tokenizer=tokenizer, loss_type=["sigmoid", "sft"], loss_weights=[0.8, 0.3]
    )
    assert_same_steps(dpo, sdpo)


def test_sft_term_at_k3_is_the_chosen_tokens_mean_nll(tmp_path):
    tokenizer = make_tokenizer()
    policy = moved(make_model("llama", tokenizer=tokenizer), scale=0.05)
    ref = moved(copy.deepcopy(policy), scale=0.05, seed=4)
    losses = {}
    for loss_type, weights in ((["sigmoid"], None), (["sigmoid", "sft"], [1.0, 0.4])):
        trainer = SDPOTrainer(
            copy.deepcopy(policy),
            ref_model=copy.deepcopy(ref),
            args=SDPOConfig(
                str(tmp_path),
                loss_type=loss_type,
                loss_weights=weights,
                **{**COMMON, "per_device_train_batch_size": len(ROWS)},
            ),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():
            losses[len(loss_type)] = trainer.compute_loss(trainer.model, batch).item()
    # The chosen completions' NLL over all their tokens (EOS included), from float64 forward passes
    total, tokens = 0.0, 0
    for row in ROWS:
        total -= float64_sequence_logp(policy, tokenizer, row["prompt"], row["chosen"])
        prompt = len(tokenizer(row["prompt"])["input_ids"])
        tokens += len(tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"]) - prompt
    assert_fp32_close(losses[2] - losses[1], 0.4 * total / tokens, scale=total)
