"""The study's models: the starting model (embedded SmolLM2, a Hub id or folder, or `tiny-random`), checkpoints,
adapters, and the TRL config of a stage."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .config import (
    TINY_RANDOM,
    ExperimentConfig,
    StageSettings,
)

# ----------------------------------------------------------------------------------------------------- models
_tokenizers: dict[str, Any] = {}


def default_tokenizer(cache_dir: str | None = None):
    """The embedded SmolLM2 tokenizer: from the converted cache when there, else straight from the GGUF (seconds)."""
    from transformers import AutoTokenizer

    from ..models import _MARKER, default_gguf_path, default_model_dir, prepare_tokenizer

    if "default" not in _tokenizers:
        cached = default_model_dir(cache_dir)
        if (cached / _MARKER).is_file():
            tokenizer = AutoTokenizer.from_pretrained(cached)
        else:
            gguf = default_gguf_path()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _tokenizers["default"] = prepare_tokenizer(tokenizer)
    return copy.deepcopy(_tokenizers["default"])


def tiny_random_model(tokenizer):
    """A 2-layer random-weight Llama (seeded, so every call builds the same weights) for smoke runs only."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_base_model(config: ExperimentConfig):
    """(model, tokenizer) of the study's starting model: `model`, the embedded default, or `tiny-random`."""
    import torch

    from ..models import load_model_and_tokenizer

    if config.model == TINY_RANDOM:
        tokenizer = default_tokenizer(config.model_cache_dir)
        return tiny_random_model(tokenizer), tokenizer
    return load_model_and_tokenizer(config.model, cache_dir=config.model_cache_dir, dtype=getattr(torch, config.dtype))


def load_checkpoint(path: Path, config: ExperimentConfig):
    import torch

    from ..models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(path), dtype=getattr(torch, config.dtype))


def peft_config_of(config: ExperimentConfig):
    if config.lora is None:
        return None
    from ..training import causal_lm_lora

    return causal_lm_lora(config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.target_modules)


def training_args(config_class, config: ExperimentConfig, stage: StageSettings, seed: int, output_dir: Path, **extra):
    """A TRL config (`SFTConfig`, `DPOConfig`, `SDPOConfig`) for one stage: a log line per step, the latest Trainer
    checkpoint kept every `stage.save_steps` steps (none when unset)."""
    import torch

    from ..machine import FAST_OPTIMIZER, precision_kwargs
    from .resumable import checkpoint_kwargs

    length = {"max_steps": stage.steps} if stage.steps is not None else {"num_train_epochs": stage.epochs}
    return config_class(
        output_dir=str(output_dir),
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=stage.lr_scheduler_type,
        warmup_steps=stage.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers >= 5)
        max_length=config.max_length,
        logging_steps=1,
        report_to="none",
        activation_checkpointing=config.activation_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        **precision_kwargs(config.bf16),
        optim=FAST_OPTIMIZER,
        seed=seed,
        data_seed=seed,
        **length,
        **(checkpoint_kwargs(stage.save_steps) | extra),
    )


def save_plain(model, tokenizer, folder: Path) -> None:
    """Save `model` without adapters (a merged copy under LoRA: training goes on with the adapter) and `tokenizer`."""
    from peft import PeftModel

    from ..training import plain_model

    if isinstance(model, PeftModel):
        model = plain_model(copy.deepcopy(model))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
