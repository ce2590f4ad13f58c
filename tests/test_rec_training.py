"""The training steps shared by the commands and the experiment runner (`trl_sdpo.rec.training`)."""

from datasets import Dataset
from tiny import make_model, make_tokenizer
from trl import SFTConfig, SFTTrainer

from trl_sdpo.rec.training import train_sft

ROWS = [{"prompt": "The user watched Heat, Fargo. Answer:", "completion": " Babe"}] * 4


def _args(tmp_path):
    return SFTConfig(
        str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to="none", save_strategy="no",
        bf16=False, activation_checkpointing=False,
    )  # fmt: skip


def test_training_keeps_the_kv_cache_setting(tmp_path):
    tokenizer = make_tokenizer()
    # TRL's trainer switches the KV cache off in the model's config (save_pretrained would then write it out, and
    # every generation with the trained model would recompute its whole prefix per token)...
    plain = make_model("llama", tokenizer=tokenizer)
    assert plain.config.use_cache is True
    rows = Dataset.from_list(ROWS)
    trainer = SFTTrainer(model=plain, args=_args(tmp_path / "trl"), train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    assert trainer.model.config.use_cache is False
    # ... and our training step puts it back.
    model, metrics = train_sft(
        make_model("llama", tokenizer=tokenizer), tokenizer, Dataset.from_list(ROWS), _args(tmp_path)
    )
    assert model.config.use_cache is True
    assert metrics["log_history"]
