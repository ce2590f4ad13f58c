"""
Training steps on recommendation rows with TRL's trainers, shared by the `trl-sdpo` commands and the experiment runner.

Each step takes a model, trains it and returns the trained model with the trainer's metrics and log history. The
reference of DPO and S-DPO is the starting model: the adapter-disabled model under LoRA, a frozen copy otherwise.
"""

from __future__ import annotations

import copy
from typing import Any


def fit(
    trainer_class,
    model,
    tokenizer,
    train_dataset,
    args,
    peft_config=None,
    eval_dataset=None,
    resume_from_checkpoint=None,
    **extra,
) -> tuple:
    """
    Build `trainer_class` (a TRL trainer) on the dataset, train, and return `(trained model, metrics)`.

    Args:
        resume_from_checkpoint (`str`, *optional*): A Trainer checkpoint of this very run to continue from (weights,
            optimizer, scheduler, RNG and data position restored by the Trainer).
        **extra: More keyword arguments of the trainer (`ref_model`, `callbacks`).

    Returns:
        `tuple`: the trainer's model (a `PeftModel` with `peft_config`) and `{"train": metrics, "log_history": [...],
        "global_step": last optimizer step}` (short of the run's end when a callback stopped it).
    """
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        **extra,
    )
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    # Training switches the KV cache off in the model's config (and `save_pretrained` would write that out), which
    # makes generation with the trained model, here or after reloading it, recompute the whole prefix every token.
    if use_cache is not None:
        trainer.model.config.use_cache = use_cache
    metrics = {"train": output.metrics, "log_history": trainer.state.log_history, "global_step": output.global_step}
    return trainer.model, metrics


def train_sft(model, tokenizer, train_dataset, args, peft_config=None, eval_dataset=None, **extra) -> tuple[Any, dict]:
    """
    Run [`~trl_sdpo.CompletionSFTTrainer`] (TRL's `SFTTrainer` with the LM head on completion positions only: the
    same loss, no logits over the prompt); returns the trained model (a `PeftModel` with `peft_config`) and metrics.
    """
    from ..sft import CompletionSFTTrainer

    return fit(CompletionSFTTrainer, model, tokenizer, train_dataset, args, peft_config, eval_dataset, **extra)


def train_sdpo(
    model, tokenizer, train_dataset, args, peft_config=None, eval_dataset=None, **extra
) -> tuple[Any, dict]:
    """
    Run `SDPOTrainer` from `model` with `model` itself as the reference; returns the trained model and metrics.

    With `peft_config` the trainer wraps `model` in a new adapter and uses the adapter-disabled model as reference.
    Without, we pass a frozen copy ([`reference_copy`]): TRL would otherwise reload the reference from
    `config._name_or_path`, which for a model fine-tuned in this process is not these weights.
    """
    from ..trainer import SDPOTrainer

    # Precomputed reference log-probs (columns of a prepared dataset, or computed by the trainer) need no reference
    # model at all
    precomputed = args.precompute_ref_log_probs
    ref_model = reference_copy(model) if peft_config is None and not precomputed else None
    return fit(
        SDPOTrainer, model, tokenizer, train_dataset, args, peft_config, eval_dataset, ref_model=ref_model, **extra
    )


def precompute_reference(model, tokenizer, rows, args):
    """
    `rows` (S-DPO rows) tokenized as `SDPOTrainer` tokenizes them, with `model`'s log-probs of every completion as
    the columns `ref_chosen_logps` / `ref_rejected_logps`: hand the result to several `SDPOTrainer`s with
    `precompute_ref_log_probs=True` (any `num_negatives` up to the rows' k) and none recomputes it.

    Args:
        model: The reference (the starting model of the trainers that will use the columns).
        tokenizer: Its tokenizer.
        rows (`datasets.Dataset`): prompt / chosen / rejected rows.
        args (`SDPOConfig`): With `precompute_ref_log_probs=True`; `max_length`, truncation and precision as the
            trainers that will read the columns.
    """
    from ..trainer import SDPOTrainer

    if not args.precompute_ref_log_probs:
        raise ValueError("precompute_reference needs `precompute_ref_log_probs=True` in `args`.")
    trainer = SDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    return trainer.train_dataset


def train_dpo(model, tokenizer, train_dataset, args, peft_config=None, eval_dataset=None, **extra) -> tuple[Any, dict]:
    """TRL's own `DPOTrainer` (one `rejected` string per row), with the same reference rule as [`train_sdpo`]."""
    from trl import DPOTrainer

    ref_model = reference_copy(model) if peft_config is None else None
    return fit(
        DPOTrainer, model, tokenizer, train_dataset, args, peft_config, eval_dataset, ref_model=ref_model, **extra
    )


def reference_copy(model):
    """
    A frozen copy of `model`'s weights in a freshly built model, for use as the DPO / S-DPO reference.

    Not `copy.deepcopy`: a model that went through a trainer or an evaluation carries instance-level forward patches
    (TRL 1.16's `add_fused_lm_head`, ours), and TRL's patch is a closure over the original model's forward. A deep
    copy keeps that closure, so its plain and TRL-fused forwards run the policy's weights (our log-prob head
    re-patches a copy, but nothing else that calls the copy would know).
    """
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_config(
        model.config, dtype=model.dtype, attn_implementation=model.config._attn_implementation
    )
    ref.load_state_dict(model.state_dict())
    ref.generation_config = copy.deepcopy(model.generation_config)
    return ref.to(model.device).eval().requires_grad_(False)


def plain_model(model, merge: bool = True):
    """A trained model without adapters: LoRA merged into the weights (a no-op for full fine-tuning)."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and merge:
        return model.merge_and_unload()
    return model


def causal_lm_lora(r: int, alpha: int, dropout: float, target_modules) -> Any:
    """A causal-LM LoRA config; `["all-linear"]` becomes PEFT's `"all-linear"` shorthand (every linear layer)."""
    from peft import LoraConfig

    targets = list(target_modules)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
