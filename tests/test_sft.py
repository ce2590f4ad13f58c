"""`CompletionSFTTrainer` against TRL's own `SFTTrainer`: the same loss and gradients, step by step."""

import copy

import pytest
import torch
from datasets import Dataset
from tiny import make_model, make_tokenizer
from tolerances import FP32_ULPS, assert_fp32_close, assert_fp32_dicts_close
from trl import SFTConfig, SFTTrainer

from trl_sdpo import CompletionSFTTrainer

ROWS = [
    {"prompt": "The user watched Heat, Casino, Fargo. Candidates: Babe, Toy Story. Answer:", "completion": " Babe"},
    {"prompt": "Recommend one artist from the list: Muse, Blur, Pulp. Answer:", "completion": " Blur"},
    {"prompt": "Given the candidates: red, green, blue. Answer:", "completion": " green"},
    {"prompt": "hello world, yes or no? Answer:", "completion": " yes"},
    {"prompt": "a b c d e f g: pick one. Answer:", "completion": " d"},
    {"prompt": "Which movie next? Jumanji, Sabrina. Answer:", "completion": " Sabrina"},
]
COMMON = dict(
    report_to=[],
    bf16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    per_device_train_batch_size=2,
    max_steps=3,
    logging_steps=1,
    optim="sgd",  # a rounding difference moves the next step by lr times itself (Adam would amplify near-zero ones)
    learning_rate=0.5,
    max_length=None,
    seed=0,
)


def train(trainer_class, model, tokenizer, tmp_path, rows=ROWS, **overrides):
    trainer = trainer_class(
        copy.deepcopy(model),
        args=SFTConfig(str(tmp_path / trainer_class.__name__), **{**COMMON, **overrides}),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    losses, inner = [], trainer.compute_loss

    def compute_loss(*args, **kwargs):
        loss = inner(*args, **kwargs)
        losses.append(loss.item())
        return loss

    trainer.compute_loss = compute_loss
    trainer.train()
    return trainer, losses


@pytest.mark.parametrize("overrides", [{}, {"gradient_accumulation_steps": 2}], ids=["plain", "accumulation"])
def test_loss_and_weights_equal_trl_sft_trainer_step_by_step(tmp_path, overrides):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    expected, expected_losses = train(SFTTrainer, model, tokenizer, tmp_path, **overrides)
    actual, losses = train(CompletionSFTTrainer, model, tokenizer, tmp_path, **overrides)
    assert len(losses) == len(expected_losses) >= 3
    # A loss is a mean of per-token log-probs of magnitude ~log(vocab); each forward adds one rounding budget
    scale = max(abs(x) for x in expected_losses)
    for call, (a, b) in enumerate(zip(losses, expected_losses)):
        assert_fp32_close(a, b, scale=scale, ulps=FP32_ULPS * (call + 1), msg=f"loss {call}")
    after = {n: p.detach() for n, p in actual.model.named_parameters()}
    reference = {n: p.detach() for n, p in expected.model.named_parameters()}
    assert_fp32_dicts_close(after, reference, ulps=FP32_ULPS * len(losses))
    assert not torch.equal(after["model.embed_tokens.weight"], model.model.embed_tokens.weight)  # it trained
    logged = [h["num_tokens"] for h in actual.state.log_history if "num_tokens" in h]
    assert logged == [h["num_tokens"] for h in expected.state.log_history if "num_tokens" in h]


def test_the_lm_head_sees_only_completion_positions(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    trainer = CompletionSFTTrainer(
        model,
        args=SFTConfig(str(tmp_path), **{**COMMON, "max_steps": 1, "per_device_train_batch_size": 6}),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    rows = []
    trainer.model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    trainer.train()
    labels = trainer.data_collator(list(trainer.train_dataset))["labels"]  # TRL's collator: -100 off the completion
    assert rows == [
        int((labels[:, 1:] != -100).sum())
    ]  # one head call over the labelled positions only, not batch x length
