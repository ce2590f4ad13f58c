"""What DPOTrainer users rely on keeps working with SDPOTrainer: each run completes, changes the parameters and
lowers the loss on a small separable task."""

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from reference import float64_sequence_logp
from tiny import make_model, make_tokenizer
from tolerances import assert_fp32_close, assert_fp32_dicts_close, magnitude
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_sdpo import SDPOConfig, SDPOTrainer

# A separable task: the chosen answer is always " yes", whatever the prompt; k varies from row to row.
NEGATIVES = [" no", " red", " cat", " bad", " moon"]
ROWS = [
    {"prompt": f"Question {i}: is {w} good? Answer:", "chosen": " yes", "rejected": NEGATIVES[: 1 + i % 4]}
    for i, w in enumerate(["Heat", "Fargo", "Babe", "Muse", "Blur", "Pulp", "Oasis", "Casino"])
]


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=12,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        beta=1.0,
        seed=0,
        max_length=None,
    )
    values.update(overrides)
    return SDPOConfig(**values)


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_trained(trainer, before):
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 4
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    after = params_of(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, "no parameter changed"
    return changed


def test_explicit_ref_model(tmp_path):
    model = make_model("llama")
    before = params_of(model)
    ref = copy.deepcopy(model)
    trainer = SDPOTrainer(
        model,
        ref_model=ref,
        args=make_args(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=make_tokenizer(),
    )
    trainer.train()
    assert_trained(trainer, before)
    for n, p in ref.named_parameters():  # the reference stays frozen: no operation writes it, so bit for bit
        torch.testing.assert_close(p, before[n], atol=0, rtol=0)


def test_peft_lora_reference_is_the_adapter_disabled_model(tmp_path):
    model = make_model("llama")
    base = copy.deepcopy(model)
    trainer = SDPOTrainer(
        model,
        args=make_args(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=make_tokenizer(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.ref_model is None
    before = params_of(trainer.model)
    trainer.train()
    changed = assert_trained(trainer, before)
    assert all("lora" in n for n in changed)
    # After training, the reference log-probs still equal the untouched base model's.
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    base_trainer = SDPOTrainer(
        base,
        ref_model=copy.deepcopy(base),
        args=make_args(tmp_path / "b"),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=make_tokenizer(),
    )
    expected_chosen, expected_rejected = base_trainer.compute_ref_log_probs(base, batch)
    assert_fp32_close(ref_chosen, expected_chosen)  # LoRA-disabled forward against the plain base model
    assert_fp32_close(ref_rejected, expected_rejected, scale=magnitude(expected_chosen, expected_rejected))


def test_precompute_ref_log_probs_with_variable_k(tmp_path):
    model = make_model("qwen2")
    reference = copy.deepcopy(model)
    before = params_of(model)
    trainer = SDPOTrainer(
        model,
        args=make_args(tmp_path, precompute_ref_log_probs=True, precompute_ref_batch_size=3),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=make_tokenizer(),
    )
    assert trainer.ref_model is None
    stored = trainer.train_dataset
    assert "ref_rejected_logps" in stored.column_names
    # The stored values are the frozen initial model's, row by row, as separate float64 forward passes give them.
    tokenizer = make_tokenizer()
    for i, row in enumerate(ROWS):
        expected = [
            float64_sequence_logp(reference, tokenizer, row["prompt"], c) for c in [row["chosen"], *row["rejected"]]
        ]
        assert_fp32_close(stored[i]["ref_chosen_logps"], expected[0])  # fp32 against float64
        k = len(row["rejected"])
        assert_fp32_close(stored[i]["ref_rejected_logps"][:k], expected[1:])
        assert all(v == 0 for v in stored[i]["ref_rejected_logps"][k:])  # padded to the widest k
    trainer.train()
    assert_trained(trainer, before)


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    def one_step(**kwargs):
        model = make_model("llama")
        trainer = SDPOTrainer(
            model,
            ref_model=copy.deepcopy(model),
            args=make_args(tmp_path, max_steps=1, optim="sgd", learning_rate=0.5, **kwargs),
            train_dataset=Dataset.from_list(ROWS[:4]),
            processing_class=make_tokenizer(),
        )
        trainer.train()
        return params_of(trainer.model)

    large = one_step(per_device_train_batch_size=4)
    accumulated = one_step(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    initial = params_of(make_model("llama"))
    assert any(not torch.equal(initial[n], large[n]) for n in large)
    assert_fp32_dicts_close(accumulated, large)  # two half-batch means summed against one mean: another order


def test_eval_dataset_reports_loss_and_metrics(tmp_path):
    model = make_model("llama")
    trainer = SDPOTrainer(
        model,
        ref_model=copy.deepcopy(model),
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=6),
        train_dataset=Dataset.from_list(ROWS),
        eval_dataset=Dataset.from_list(ROWS[:4]),
        processing_class=make_tokenizer(),
    )
    first = trainer.evaluate()
    trainer.train()
    last = trainer.evaluate()
    for key in (
        "eval_loss",
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_rewards/accuracies",
        "eval_rewards/margins",
        "eval_logps/chosen",
        "eval_logps/rejected",
    ):
        assert key in last, key
    assert last["eval_loss"] < first["eval_loss"]
    assert any("eval_loss" in h for h in trainer.state.log_history[:-1])  # periodic evaluation ran during training


def test_save_model_and_reload(tmp_path):
    model = make_model("llama")
    trainer = SDPOTrainer(
        model,
        ref_model=copy.deepcopy(model),
        args=make_args(tmp_path, max_steps=3),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=make_tokenizer(),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    ids = torch.tensor([[5, 17, 42, 99]])
    trainer.model.eval()
    # The weights read back from disk give the trained model's outputs.
    with torch.no_grad():
        assert_fp32_close(reloaded(ids).logits, trainer.model(ids).logits)


class StopAt(TrainerCallback):
    """Interrupts training after `step` steps, as a crash would (the schedule still plans for max_steps)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    def run(output, resume=None, callbacks=None):
        model = make_model("llama")
        trainer = SDPOTrainer(
            model,
            ref_model=copy.deepcopy(model),
            args=make_args(
                tmp_path,
                output_dir=str(output),
                max_steps=6,
                save_strategy="steps",
                save_steps=3,
                per_device_train_batch_size=2,
            ),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=make_tokenizer(),
            callbacks=callbacks,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "interrupted", callbacks=[StopAt(3)])
    assert interrupted.state.global_step == 3
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    a, b = params_of(straight.model), params_of(resumed.model)
    assert_fp32_dicts_close(b, a)


@pytest.mark.parametrize("conversational", [True])
def test_conversational_rows_train(tmp_path, conversational):
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [[{"role": "assistant", "content": n}] for n in r["rejected"]],
        }
        for r in ROWS
    ]
    model = make_model("llama")
    before = params_of(model)
    trainer = SDPOTrainer(
        model,
        ref_model=copy.deepcopy(model),
        args=make_args(tmp_path),
        train_dataset=Dataset.from_list(rows),
        processing_class=make_tokenizer(),
    )
    row = trainer.train_dataset[0]
    tokenizer = make_tokenizer()
    # The chosen completion is the assistant turn as the chat template renders it, after the generation prompt.
    assert tokenizer.decode(row["chosen_ids"]).startswith(" yes<|end|>")
    trainer.train()
    assert_trained(trainer, before)
