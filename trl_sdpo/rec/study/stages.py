"""
The stages a study trains: the SFT stage of a seed (with its learning curve) and the preference stage of a method
(sft-continued, dpo, dpo-pairs, sdpo) from that SFT model, resumable across sittings when the stage sets `save_steps`.

Choices, stated once:
- The training seed draws the SFT rows, the preference rows (an independent sample: seed + `PREFERENCE_SEED_OFFSET`,
  with `heldout_rows` more drawn beside them for the held-out rewards), their negatives, LoRA initialization and
  data order. With `sft_seed`, every training seed starts from that one seed's SFT model.
- sft-continued, dpo, dpo-pairs and sdpo start from the same SFT model, train on the same preference rows for the
  same number of optimizer steps, and use the SFT model as reference (precomputed once per seed and rows). dpo is
  SDPOTrainer at k=1 on the first negative of each S-DPO row (TRL's own `DPOTrainer` with `trainer: trl`);
  dpo-pairs is SDPOTrainer with `ranking_loss="pairwise"` on all k negatives of the same rows (what `DPOTrainer` on
  the rows split into k pairs computes); sft-continued is SFT on the rows' prompt + chosen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..machine import precision_name
from . import models
from .config import (
    PREFERENCE_KINDS,
    RANKING_LOSS_OF_KIND,
    ConfigError,
    MethodConfig,
    stage_steps,
)
from .models import peft_config_of, save_plain, training_args
from .records import (
    STAGE_MARKER,
    digest,
    json_safe,
    run_settings,
    sft_checkpoint_dir,
    sitting_seconds,
    stage_rows,
)

if TYPE_CHECKING:
    from .context import StudyContext

logger = logging.getLogger(__name__)


PREFERENCE_SEED_OFFSET = 1_000_003


def train_sft_checkpoint(
    context: StudyContext, seed: int, directory: Path, settings: dict[str, Any], until_rows: int | None = None
) -> dict[str, Any] | None:
    """
    Train the SFT stage of a seed from the base model and save it (merged) with its record, atomically; with
    `sft.curve_rows`, also each point of the learning curve on the way (`sft-rows<N>/` beside it). With
    `sft.save_steps` the stage keeps Trainer checkpoints in `trainer-sft/` and a later call resumes from the latest;
    then `until_rows` (a curve point) stops there, with a Trainer checkpoint, and returns `None` (not at the end yet).
    """
    from transformers import set_seed
    from trl import SFTConfig

    from ..builders import build_sft_dataset
    from ..machine import machine_info
    from ..training import train_sft
    from .resumable import CurveCallback, SittingCallback, fresh_folder, prepare_folder, read_sittings

    config, stage = context.config, context.config.sft
    trainer_dir = directory.parent / "trainer-sft"
    precision = precision_name(context.bf16)
    resume = prepare_folder(trainer_dir, settings, precision) if stage.save_steps else fresh_folder(trainer_dir)
    logger.info(
        f"[experiment] SFT of seed {seed}: {stage_steps(stage)} steps, saved to {directory}"
        + (f", resuming from {resume}" if resume else "")
    )
    set_seed(seed)
    model, tokenizer = models.load_base_model(config)
    examples = context.train_examples(stage.train_rows, seed)
    batch = stage.batch_size * stage.gradient_accumulation_steps

    sitting = SittingCallback(trainer_dir, machine_info(), str(resume) if resume else None, precision)

    def record(state) -> dict[str, Any]:
        sitting.record(state)
        sittings = read_sittings(trainer_dir)
        return {
            "settings": settings,
            "rows_seen": state.global_step * batch,
            "log_history": json_safe(state.log_history),
            "train_s": sitting_seconds(sittings),
            "sittings": sittings,
        }

    stop_at = None
    if stage.save_steps and until_rows is not None and until_rows != stage_rows(stage):
        stop_at = until_rows // batch
    points = {
        rows // batch: sft_checkpoint_dir(config, seed, rows)
        for rows in stage.curve_rows or []
        if sft_checkpoint_dir(config, seed, rows) != directory
    }
    callbacks = [
        sitting,
        CurveCallback(
            points,
            STAGE_MARKER,
            record,
            lambda m, folder: save_plain(m, tokenizer, folder),
            stop_at=stop_at,
        ),
    ]
    args = training_args(SFTConfig, config, stage, seed, trainer_dir)
    model, metrics = train_sft(
        model,
        tokenizer,
        build_sft_dataset(examples),
        args,
        peft_config=peft_config_of(config),
        resume_from_checkpoint=str(resume) if resume else None,
        callbacks=callbacks,
    )
    if stop_at is not None and metrics["global_step"] < (stage_steps(stage) or 0):
        return None  # stopped at a curve point; the end comes in a later call
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    save_plain(model, tokenizer, tmp)
    sittings = read_sittings(trainer_dir)
    final = {
        "settings": settings,
        "rows_seen": (stage_steps(stage) or 0) * batch or len(examples),
        "log_history": json_safe(metrics["log_history"]),
        "train_s": sitting_seconds(sittings),
        "sittings": sittings,
    }
    (tmp / STAGE_MARKER).write_text(json.dumps(final, indent=1) + "\n")
    if directory.exists():  # an incomplete folder of a killed sitting (no marker)
        import shutil

        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return final


def _rows_key(method: MethodConfig, seed: int) -> tuple:
    """What decides a method's preference rows: methods with the same key train on the very same rows."""
    s = method.settings
    return (seed, s.train_rows, s.num_negatives, s.negative_strategy, s.heldout_rows)


def kept_model_dir(context: StudyContext, method: MethodConfig, seed: int) -> Path | None:
    """
    Where a resumable preference run (`save_steps` set) keeps its Trainer checkpoints and, at the end, its trained
    model: `checkpoints/seed<seed>/<kind>-<digest of what decides the result>`, so the same training under another
    method name (the chosen variant of a learning-rate sweep) or on the other split is trained once. `None` for runs
    without `save_steps` (trained again by every call).
    """
    if method.kind not in PREFERENCE_KINDS or method.settings.save_steps is None:
        return None
    return keyed_folder(
        context.output_dir / "checkpoints" / f"seed{seed}",
        method.kind,
        lambda spelt: kept_key(context, method, seed, spelt),
    )


def keyed_folder(parent: Path, prefix: str, key: Callable[[bool], Any]) -> Path:
    """
    `parent/<prefix>-<digest of key(False)>`; where only the folder of `key(True)` exists (the key with the SFT model's
    path as the output folder was spelt, see `StudyContext.sft_model_id`), that one, so that models and log-probs kept
    before the key changed are used, not computed again.
    """
    path = parent / f"{prefix}-{digest(key(False))}"
    if not path.exists():
        old = parent / f"{prefix}-{digest(key(True))}"
        if old.exists():
            return old
    return path


# Settings of the evaluation only: the same trained model serves every value of them (valid and test rows)
_EVAL_ONLY_KEYS = (
    "eval_rows",
    "generation_rows",
    "generation",
    "max_new_tokens",
    "eval_batch_size",
    "data_seed",
    "extra_eval_samplers",
    "extra_eval_methods",
)


def kept_key(context: StudyContext, method: MethodConfig, seed: int, spelt: bool = False) -> dict[str, Any]:
    """What decides a preference run's trained model: its settings without the method's name and the evaluation's,
    the SFT model (`spelt`: see `StudyContext.sft_model_id`), the seed."""
    key = run_settings(context.config, method) | {"sft_model": context.sft_model_id(seed, spelt), "seed": seed}
    key["method"].pop("name")
    for name in _EVAL_ONLY_KEYS:
        key.pop(name, None)
    return key


def preference_rows(context: StudyContext, method: MethodConfig, seed: int, model, tokenizer):
    """
    The preference examples and S-DPO rows of a method, and the held-out S-DPO rows drawn with them (disjoint, from
    the train split; `None` without `heldout_rows`); cached so that dpo and sdpo train on the same rows.
    """
    from ..builders import build_preference_dataset

    s = method.settings
    key = _rows_key(method, seed)
    if key not in context.preference_cache:
        drawn = None if s.train_rows is None else s.train_rows + s.heldout_rows
        examples = context.train_examples(drawn, seed + PREFERENCE_SEED_OFFSET)
        if s.heldout_rows and len(examples) <= s.heldout_rows:
            raise ConfigError(f"`heldout_rows` ({s.heldout_rows}) leaves no training rows of {len(examples)} drawn.")
        examples, heldout = (
            (examples[: -s.heldout_rows], examples[-s.heldout_rows :]) if s.heldout_rows else (examples, [])
        )
        hard = s.negative_strategy == "model"  # only model negatives need the SFT model to score candidates

        def build(chosen):
            return build_preference_dataset(
                chosen,
                num_negatives=s.num_negatives,
                strategy=s.negative_strategy,
                seed=seed,
                dataset=context.dataset,
                model=model if hard else None,
                tokenizer=tokenizer if hard else None,
            )

        context.preference_cache[key] = (examples, build(examples), build(heldout) if heldout else None)
    return context.preference_cache[key]


def reference_rows(
    context: StudyContext, method: MethodConfig, seed: int, model, tokenizer, rows, part: str = "train"
):
    """
    The S-DPO rows tokenized, with the SFT model's reference log-probs of every completion as columns: computed once
    per seed and rows, before any method of the seed trains, and shared by sdpo and dpo (which reads the first
    negative's). Saves the reference forward of every training step, and the reference model's memory. A resumable
    run (`save_steps`) keeps them on disk beside its checkpoints, so a later sitting does not compute them again.
    """
    from datasets import load_from_disk

    from ...config import SDPOConfig
    from ..training import precompute_reference

    s = method.settings
    key = (*_rows_key(method, seed), part)
    if key not in context.reference_cache:
        seed_dir = context.output_dir / "checkpoints" / f"seed{seed}"
        args = training_args(
            SDPOConfig, context.config, s, seed, seed_dir / "trainer-reference", precompute_ref_log_probs=True
        )
        stored = None
        if s.save_steps is not None:
            what = {"rows": key, "max_length": context.config.max_length, "precision": precision_name(context.bf16)}
            stored = keyed_folder(
                seed_dir, f"reference-{part}", lambda spelt: what | {"sft": context.sft_model_id(seed, spelt)}
            )
        if stored is not None and (stored / "dataset_info.json").is_file():
            context.reference_cache[key] = load_from_disk(str(stored))
        else:
            prepared = precompute_reference(model, tokenizer, rows, args)
            if stored is not None:
                prepared.save_to_disk(str(stored.with_name(stored.name + ".tmp")))
                if stored.exists():
                    import shutil

                    shutil.rmtree(stored)
                os.replace(stored.with_name(stored.name + ".tmp"), stored)
            context.reference_cache[key] = prepared
    return context.reference_cache[key]


def train_preference(
    context: StudyContext, method: MethodConfig, seed: int, model, tokenizer, kept: Path | None = None
):
    """
    Train sft-continued, dpo or sdpo from the SFT model; returns (plain model, log history, info for the JSON).

    With `heldout_rows`, the implicit rewards of the held-out rows are logged every `eval_steps` (in the training
    precision) and measured once more at the end in fp32 (`info["heldout"]`, with per-row values). With `kept` (a
    resumable run: `save_steps`), Trainer checkpoints go there, a killed sitting resumes from the latest, and the
    trained model is saved there at the end with its log, info and sittings.
    """
    from transformers import set_seed
    from trl import DPOConfig, SFTConfig

    from ...config import SDPOConfig
    from ..builders import build_sft_dataset
    from ..machine import machine_info
    from ..training import plain_model, train_dpo, train_sdpo, train_sft
    from .heldout import HeldoutRewardsCallback
    from .resumable import SittingCallback, prepare_folder, read_sittings

    config, s = context.config, method.settings
    examples, rows, heldout = preference_rows(context, method, seed, model, tokenizer)
    out = kept or context.output_dir / "checkpoints" / f"seed{seed}" / f"trainer-{method.name}"
    precision = precision_name(context.bf16)
    resume = prepare_folder(out, kept_key(context, method, seed), precision) if kept else None
    callbacks = [SittingCallback(out, machine_info(), str(resume) if resume else None, precision)] if kept else []
    heldout_callback = None
    if heldout is not None:
        heldout_callback = HeldoutRewardsCallback(
            reference_rows(context, method, seed, model, tokenizer, heldout, part="heldout"),
            beta=s.beta,
            pad_token_id=tokenizer.pad_token_id,
            max_length=config.max_length,
            batch_size=config.eval_batch_size,
            bf16=context.bf16,
            every=s.eval_steps,
        )
        callbacks.append(heldout_callback)
    fit_kwargs = {"callbacks": callbacks, "resume_from_checkpoint": str(resume) if resume else None}
    peft = peft_config_of(config)
    set_seed(seed)
    info = {"train_rows": len(examples)}
    if method.kind == "sft-continued":
        args = training_args(SFTConfig, config, s, seed, out)
        model, metrics = train_sft(model, tokenizer, build_sft_dataset(examples), args, peft_config=peft, **fit_kwargs)
    elif method.kind == "dpo" and method.trainer == "trl":
        # The cross-check: TRL's own trainer on pairs, with a reference forward at every step
        pairs = rows.map(lambda row: {"rejected": row["rejected"][0]})
        info["dpo_negative"] = f"first of the {s.num_negatives} {s.negative_strategy} negatives of each S-DPO row"
        info["trainer"] = "trl.DPOTrainer (pairs, reference forward every step)"
        args = training_args(DPOConfig, config, s, seed, out, beta=s.beta, loss_type=["sigmoid"])
        model, metrics = train_dpo(model, tokenizer, pairs, args, peft_config=peft, **fit_kwargs)
    else:
        prepared = reference_rows(context, method, seed, model, tokenizer, rows)
        # dpo: k=1 on the same rows, the first negative of each S-DPO row and its reference column. Equal to TRL's
        # DPOTrainer in loss and gradients (tests/test_dpo_compat.py) at the cost of an S-DPO k=1 step. dpo-pairs:
        # all k negatives, DPO's loss on each pair (equal to DPOTrainer on the split pairs, tests/test_ranking_losses.py).
        k = 1 if method.kind == "dpo" else s.num_negatives
        ranking_loss = RANKING_LOSS_OF_KIND[method.kind]
        if method.kind == "dpo":
            info["dpo_negative"] = f"first of the {s.num_negatives} {s.negative_strategy} negatives of each S-DPO row"
        loss_text = "" if ranking_loss == "softmax" else f", ranking_loss={ranking_loss}"
        info["trainer"] = (
            f"trl_sdpo.SDPOTrainer (k={k}{loss_text}, shared prefix, reference precomputed once per seed)"
        )
        args = training_args(
            SDPOConfig,
            config,
            s,
            seed,
            out,
            beta=s.beta,
            num_negatives=k,
            ranking_loss=ranking_loss,
            precompute_ref_log_probs=True,
        )
        model, metrics = train_sdpo(model, tokenizer, prepared, args, peft_config=peft, **fit_kwargs)
    model = plain_model(model)
    if heldout_callback is not None:
        # The verdict's number: fp32, whatever the training precision (bf16 rounds summed log-probs by ~0.2 nats)
        heldout_callback.kwargs["bf16"] = False
        final = heldout_callback.evaluate(model, metrics["global_step"])
        info["heldout"] = {"precision": "fp32", "beta": s.beta, "rows_drawn_beside_training": s.heldout_rows, **final}
    log_history = json_safe(metrics["log_history"])
    if kept is not None:
        info["sittings"] = read_sittings(out)
        tmp = kept / "model.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        save_plain(model, tokenizer, tmp)
        record = {"log_history": log_history, "train_s": sitting_seconds(info["sittings"]), "info": info}
        (tmp / STAGE_MARKER).write_text(json.dumps(json_safe(record), indent=1) + "\n")
        # The kept model replaces the Trainer checkpoints (1.6 GB each with the optimizer state)
        for stale in kept.glob("checkpoint-*"):
            import shutil

            shutil.rmtree(stale)
        # The marker last: a folder without it is not a finished model
        for item in sorted(tmp.iterdir(), key=lambda path: path.name == STAGE_MARKER):
            os.replace(item, kept / item.name)
        tmp.rmdir()
    return model, log_history, info
