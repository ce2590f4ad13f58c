"""Run a recommendation study: every (method, seed) of an [`ExperimentConfig`] on one split, one JSON per run.

Layout under `output_dir`: `<split>/<method>/seed<seed>.json` (schema 1, written atomically: a `.json.tmp` file then
`os.replace`, so a crash or a kill leaves no partial JSON; an existing JSON is a finished run and is skipped) and
`checkpoints/seed<seed>/sft/` (the seed's SFT model, trained once and shared by sft, sft-continued, dpo and sdpo of
every split and sitting).

Choices, stated once:
- Eval rows are a sample of the split drawn by `data_seed`, with candidates drawn by `data_seed`: the same rows and
  candidate lists for every method and seed, so comparisons are paired by row.
- The training seed draws the SFT rows, the preference rows (an independent sample: seed + `PREFERENCE_SEED_OFFSET`),
  their negatives, LoRA initialization and data order.
- sft-continued, dpo and sdpo start from the seed's SFT checkpoint, train on the same preference rows for the same
  number of optimizer steps, and use the SFT model as reference (dpo and sdpo). dpo is TRL's own `DPOTrainer`
  (sigmoid loss) on the first negative of each S-DPO row; sft-continued is SFT on the rows' prompt + chosen.
- `base` does not depend on the seed: it is evaluated once per split and the same result is written for every seed
  (`"seed_independent": true` in its JSON).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..machine import precision_name, resolve_bf16
from .experiment_config import (
    BASELINE_KINDS,
    LM_KINDS,
    PREFERENCE_KINDS,
    TINY_RANDOM,
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    StageSettings,
    stage_steps,
)

logger = logging.getLogger(__name__)

SCHEMA = 1
PREFERENCE_SEED_OFFSET = 1_000_003
_STAGE_MARKER = "trl_sdpo_stage.json"  # written last into a checkpoint folder: without it the folder is incomplete
# Top-level settings that do not change a run's result, left out of the `config` compared when a run is skipped.
_NOT_RESULT_KEYS = (
    "output_dir",
    "sft_checkpoints_dir",
    "seeds",
    "preset",
    "description",
    "eval_split",
    "model_cache_dir",
    "methods",
)


# ------------------------------------------------------------------------------------------------------ the plan
def run_path(output_dir: str | Path, split: str, method: str, seed: int) -> Path:
    """Where the JSON of one run goes."""
    return Path(output_dir) / split / method / f"seed{seed}.json"


def sft_checkpoint_dir(config: ExperimentConfig, seed: int, rows: int | None = None) -> Path:
    """Where the SFT model of a seed is saved (independent of the split): `<sft_checkpoints_dir or
    output_dir/checkpoints>/seed<seed>/sft`, and a point of the learning curve (`rows` seen, `sft.curve_rows`) before
    the end of the stage in `.../seed<seed>/sft-rows<rows>`. A study that shares another's SFT models points
    `sft_checkpoints_dir` at that study's `checkpoints/`; the settings recorded in the folder must then equal this
    study's `sft:` section."""
    root = Path(config.sft_checkpoints_dir) if config.sft_checkpoints_dir else Path(config.output_dir) / "checkpoints"
    if rows is None or rows == _stage_rows(config.sft):
        return root / f"seed{seed}" / "sft"
    return root / f"seed{seed}" / f"sft-rows{rows}"


def _stage_rows(stage: StageSettings) -> int | None:
    """Rows seen by the end of a stage (optimizer steps x effective batch); None for epochs of the whole split."""
    steps = stage_steps(stage)
    return None if steps is None else steps * stage.batch_size * stage.gradient_accumulation_steps


def sft_start_rows(config: ExperimentConfig, method: MethodConfig) -> int | None:
    """The SFT curve point a method starts from (kind sft: its `sft_rows`; the rest: `sft.start_rows`)."""
    if method.kind == "sft" and method.sft_rows is not None:
        return method.sft_rows
    return config.sft.start_rows


# Stage keys added after runs were committed, left out of recorded settings at these values (the same runs); keys
# that do not change a result (where checkpoints go, how often) are always left out.
_NEW_STAGE_DEFAULTS = {"curve_rows": None, "start_rows": None, "heldout_rows": 0, "eval_steps": None}
_NOT_RESULT_STAGE_KEYS = ("save_steps",)


def stage_record(stage: StageSettings, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A stage's settings as recorded in run JSONs and checkpoint folders (see `_NEW_STAGE_DEFAULTS`)."""
    out = dataclasses.asdict(stage)
    for key, default in _NEW_STAGE_DEFAULTS.items():
        if out[key] == default:
            out.pop(key)
    for key in (*_NOT_RESULT_STAGE_KEYS, *drop):
        out.pop(key, None)
    return out


def _steps_text(stage: StageSettings) -> str:
    steps = stage_steps(stage)
    return f"{steps} steps" if steps is not None else f"{stage.epochs} epochs"


def plan(config: ExperimentConfig, split: str | None = None) -> dict[str, Any]:
    """
    What a call of [`run_experiment`] would do: the runs still to do, those done, the SFT checkpoints to train,
    the optimizer steps and the rows to evaluate.
    """
    split = split or config.eval_split
    todo, done, sft_to_train = [], [], []
    steps = 0
    lm_evaluations = 0
    for seed in config.seeds:
        needs_sft = False
        for name, method in config.methods.items():
            path = run_path(config.output_dir, split, name, seed)
            (done if path.exists() else todo).append((name, seed))
            if path.exists():
                continue
            if method.kind in ("sft", *PREFERENCE_KINDS):
                needs_sft = True
            if method.kind in PREFERENCE_KINDS:
                steps += stage_steps(method.settings) or 0
            if method.kind in LM_KINDS and not (method.kind == "base" and lm_evaluations and seed != config.seeds[0]):
                lm_evaluations += 1
        sft_seed = seed if config.sft_seed is None else config.sft_seed
        if needs_sft and sft_seed not in sft_to_train:
            points = {
                sft_start_rows(config, m) for m in config.methods.values() if m.kind in ("sft", *PREFERENCE_KINDS)
            }
            if not all((sft_checkpoint_dir(config, sft_seed, rows) / _STAGE_MARKER).exists() for rows in points):
                sft_to_train.append(sft_seed)
            steps += stage_steps(config.sft) or 0
    return {
        "split": split,
        "todo": todo,
        "done": done,
        "sft_to_train": sft_to_train,
        "optimizer_steps": steps,
        "lm_evaluations": lm_evaluations,
        "eval_rows": config.eval_rows,
    }


def describe_plan(config: ExperimentConfig, split: str | None = None) -> str:
    """The plan as text (`trl-sdpo experiment --dry-run`)."""
    p = plan(config, split)
    lines = [
        f"study {config.study!r}, preset {config.preset!r}, split {p['split']}, output {config.output_dir}",
        f"model {config.model or 'SmolLM2-135M-Instruct (embedded)'}, {config.num_candidates} candidates, "
        f"{config.eval_rows or 'all'} eval rows (data seed {config.data_seed}), seeds {config.seeds}, "
        f"generation {'on' if config.generation else 'off'}, candidate lists {config.sampler}, "
        f"precision {precision_name(resolve_bf16(config.bf16))} (bf16: {config.bf16})"
        + "".join(f", also ranked on the {sampler} lists" for sampler in config.extra_eval_samplers)
        + (
            f" (methods {', '.join(config.extra_eval_methods)})"
            if config.extra_eval_samplers and config.extra_eval_methods is not None
            else ""
        ),
        f"SFT stage: {config.sft.train_rows or 'all'} rows, {_steps_text(config.sft)} x {config.sft.batch_size} rows "
        f"x {config.sft.gradient_accumulation_steps} accumulation, lr {config.sft.learning_rate}",
    ]
    for name, method in config.methods.items():
        line = f"  {name:<16} kind {method.kind:<14}"
        if method.settings is not None:
            s = method.settings
            line += (
                f"{s.train_rows or 'all'} rows, {_steps_text(s)} x {s.batch_size} x {s.gradient_accumulation_steps}, "
                f"lr {s.learning_rate}"
            )
            if method.kind != "sft-continued":
                line += f", beta {s.beta}, k {1 if method.kind == 'dpo' else s.num_negatives} {s.negative_strategy}"
            if method.trainer == "trl":
                line += ", TRL's DPOTrainer"
        if method.sft_rows is not None:
            line += f"the SFT curve point after {method.sft_rows} rows"
        if method.options:
            line += ", ".join(f"{key} {value}" for key, value in method.options.items())
        lines.append(line)
    lines.append(f"runs to do: {len(p['todo'])} ({', '.join(f'{m}/seed{s}' for m, s in p['todo']) or 'none'})")
    lines.append(f"runs done (skipped): {len(p['done'])}")
    lines.append(f"SFT checkpoints to train: seeds {p['sft_to_train'] or 'none'}")
    lines.append(
        f"estimated: {p['optimizer_steps']} optimizer steps (stages given in epochs of the whole split not counted), "
        f"{p['lm_evaluations']} LM evaluations of "
        f"{config.eval_rows or 'all'} rows"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- models
_tokenizers: dict[str, Any] = {}


def default_tokenizer(cache_dir: str | None = None):
    """The embedded SmolLM2 tokenizer: from the converted cache when there, else straight from the GGUF (seconds)."""
    from transformers import AutoTokenizer

    from .models import _MARKER, default_gguf_path, default_model_dir, prepare_tokenizer

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

    from .models import load_model_and_tokenizer

    if config.model == TINY_RANDOM:
        tokenizer = default_tokenizer(config.model_cache_dir)
        return tiny_random_model(tokenizer), tokenizer
    return load_model_and_tokenizer(config.model, cache_dir=config.model_cache_dir, dtype=getattr(torch, config.dtype))


def load_checkpoint(path: Path, config: ExperimentConfig):
    import torch

    from .models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(path), dtype=getattr(torch, config.dtype))


def _peft_config(config: ExperimentConfig):
    if config.lora is None:
        return None
    from .training import causal_lm_lora

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


# ------------------------------------------------------------------------------------------------ small helpers
def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def _timed(timings: dict[str, float | None], name: str):
    since = time.perf_counter()
    yield
    # Added up: the lists of several `extra_eval_samplers` share one key
    timings[name] = round((timings.get(name) or 0.0) + time.perf_counter() - since, 2)


def run_settings(config: ExperimentConfig, method: MethodConfig, seed: int | None = None) -> dict[str, Any]:
    """The settings that decide one run's result: shared data/model/eval settings, the SFT stage if used, the method.
    `sft_seed` is recorded where it differs from the run's `seed` (where it equals it, the run is what it was before
    the key existed)."""
    shared = {k: v for k, v in config.to_dict().items() if k not in _NOT_RESULT_KEYS}
    # Absent from runs written before the keys existed: the same settings
    if not shared["extra_eval_samplers"]:
        shared.pop("extra_eval_samplers")
    if shared["extra_eval_methods"] is None:
        shared.pop("extra_eval_methods")
    if shared["sft_seed"] in (None, seed) or method.kind not in ("sft", *PREFERENCE_KINDS):
        shared.pop("sft_seed")
    if shared["generation_rows"] is None:  # absent from runs written before the key existed
        shared.pop("generation_rows")
    if method.kind not in ("sft", *PREFERENCE_KINDS):
        shared.pop("sft")
    else:
        # A point of the curve does not depend on which point later stages start from
        shared["sft"] = stage_record(config.sft, drop=("start_rows",) if method.sft_rows is not None else ())
    shared.pop("preference")
    if method.kind in BASELINE_KINDS:
        lm_keys = ("model", "dtype", "bf16", "lora", "activation_checkpointing", "max_length", "generation")
        for key in (*lm_keys, "max_new_tokens", "eval_batch_size"):
            shared.pop(key)
    shared["method"] = dataclasses.asdict(method)
    if method.settings is not None:
        shared["method"]["settings"] = stage_record(method.settings)
    for key in ("trainer", "sft_rows"):  # None is the default; absent from runs written before the keys existed
        if shared["method"][key] is None:
            shared["method"].pop(key)
    return _json_safe(shared)


def _row_ids(examples) -> list[str]:
    return [f"{e.row.split}:{e.row.index}" for e in examples]


def _check_existing(path: Path, settings: dict[str, Any]) -> None:
    try:
        existing = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); delete it to run it again.") from None
    if existing.get("config") != settings:
        raise ConfigError(
            f"{path} was written with other settings than this study's (preset {existing.get('preset')!r}); "
            "choose another --output_dir, or delete the file to run it again."
        )


# ----------------------------------------------------------------------------------------------------- the runner
class _Runner:
    def __init__(self, config: ExperimentConfig, split: str, show_progress: bool):
        self.config, self.split, self.show_progress = config, split, show_progress
        self.output_dir = Path(config.output_dir)
        self._preference_cache: dict[tuple, Any] = {}
        # Prepared preference rows with the SFT model's reference log-probs, computed once per seed and rows and
        # shared by every method that trains on them (dpo reads the first negative's columns)
        self._reference_cache: dict[tuple, Any] = {}
        self.bf16 = resolve_bf16(config.bf16)
        self._base_result: dict[str, Any] | None = None

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        from .builders import build_examples
        from .loaders import load_dataset_by_name

        c = self.config
        self.dataset = load_dataset_by_name(c.dataset, data_dir=c.data_dir, min_history=c.min_history)
        self.eval_examples = build_examples(
            self.dataset, self.split, seed=c.data_seed, max_rows=c.eval_rows, **self._rows()
        )
        self.row_ids = _row_ids(self.eval_examples)
        # The same rows with other samplers' candidate lists (the rows are drawn before the lists, by `data_seed`)
        self.other_examples = {}
        for sampler in c.extra_eval_samplers:
            rows = self._rows() | {"sampler": sampler}
            examples = build_examples(self.dataset, self.split, seed=c.data_seed, max_rows=c.eval_rows, **rows)
            if _row_ids(examples) != self.row_ids:
                raise RuntimeError(f"The {sampler} lists were built for other rows than the study's eval rows.")
            self.other_examples[sampler] = examples
        self._train_lists: dict[str, tuple[list, list]] = {}

    def _rows(self) -> dict[str, Any]:
        c = self.config
        return {
            "num_candidates": c.num_candidates,
            "sampler": c.sampler,
            "conversational": c.conversational,
            "paraphrase": c.paraphrase,
        }

    def train_examples(self, rows: int, seed: int):
        from .builders import build_examples

        return build_examples(self.dataset, "train", seed=seed, max_rows=rows, **self._rows())

    # ---------------------------------------------------------------- SFT checkpoint
    def sft_model_id(self, seed: int) -> str:
        """The folder of the SFT model that training seed `seed`'s preference stage starts from."""
        sft_seed = seed if self.config.sft_seed is None else self.config.sft_seed
        return str(sft_checkpoint_dir(self.config, sft_seed, self.config.sft.start_rows))

    def sft_settings(self, seed: int) -> dict[str, Any]:
        """What the SFT stage of a seed was trained with (`start_rows` only picks a point afterwards)."""
        stage = stage_record(self.config.sft, drop=("start_rows",))
        return _json_safe({"sft": stage, **self._model_settings(), "seed": seed})

    def sft_checkpoint(self, seed: int, rows: int | None = None) -> tuple[Path, dict[str, Any]]:
        """The seed's SFT model folder (the end of the stage, or the curve point after `rows` rows) and its record
        (settings, log history, time, sittings); the stage is trained (or resumed) if the folder is missing."""
        directory = sft_checkpoint_dir(self.config, seed, rows)
        settings = self.sft_settings(seed)
        marker = directory / _STAGE_MARKER
        if not marker.is_file():
            train_sft_checkpoint(self, seed, sft_checkpoint_dir(self.config, seed), settings, until_rows=rows)
        record = json.loads(marker.read_text())
        if record.get("settings") != settings:
            raise ConfigError(
                f"{directory} holds an SFT model trained with other settings than this study's `sft:` "
                "section; choose another --output_dir or delete the folder."
            )
        return directory, record

    def _model_settings(self) -> dict[str, Any]:
        c = self.config
        keys = ("dataset", "data_dir", "min_history", "sampler", "num_candidates", "conversational", "paraphrase")
        keys += ("model", "dtype", "max_length", "activation_checkpointing", "bf16")
        return {k: getattr(c, k) for k in keys} | {"lora": dataclasses.asdict(c.lora) if c.lora else None}

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model, tokenizer, timings, examples=None) -> tuple[dict, dict]:
        """Generation (if on) and ranking metrics and per-row records on the eval rows (`examples`: other lists)."""
        import torch
        from transformers import set_seed

        c = self.config
        other_lists = examples is not None
        examples = self.eval_examples if examples is None else examples
        model.eval()
        set_seed(c.data_seed)
        # The precision the methods trained in (autocast; log-softmax stays fp32 in the log-prob head)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._evaluate(model, tokenizer, timings, examples, other_lists)

    def _evaluate(self, model, tokenizer, timings, examples, other_lists: bool) -> tuple[dict, dict]:
        from .evaluate import evaluate_generation
        from .ranking import evaluate_ranking

        c = self.config
        generation, hits, valid = None, None, None
        if c.generation and not other_lists:
            with _timed(timings, "eval_generation"):
                result = evaluate_generation(
                    model,
                    tokenizer,
                    examples[: c.generation_rows],  # the first rows only with `generation_rows`
                    batch_size=c.eval_batch_size,
                    max_new_tokens=c.max_new_tokens,
                    return_records=True,
                    show_progress=self.show_progress,
                )
            records = result.pop("records")
            generation = result
            hits = [int(r["hit"]) for r in records]
            valid = [int(r["valid"]) for r in records]
        with _timed(timings, "eval_other_lists" if other_lists else "eval_ranking"):
            ranking = evaluate_ranking(
                model,
                tokenizer,
                examples,
                batch_size=c.eval_batch_size,
                return_records=True,
                show_progress=self.show_progress,
            )
        ranks = [r["rank"] for r in ranking.pop("records")]
        metrics = {"generation": generation, "ranking": ranking}
        rows = {"ids": self.row_ids, "target_rank": ranks, "generation_hit": hits, "generation_valid": valid}
        return metrics, rows

    # ---------------------------------------------------------------- methods
    def run_method(self, method: MethodConfig, seed: int) -> dict[str, Any] | None:
        timings: dict[str, float | None] = {"train": None, "eval_generation": None, "eval_ranking": None}
        if self.other_lists_for(method):
            timings["eval_other_lists"] = None
        extra: dict[str, Any] = {}
        log_history: list = []
        start = time.perf_counter()
        if method.kind in BASELINE_KINDS:
            every_ranks = self.baseline_ranks(method, seed, timings)
            if every_ranks is None:
                return None
            record = _ranking_record(every_ranks.pop(None), self.row_ids)
            metrics, rows = record["metrics"], record["rows"]
            for sampler, other in every_ranks.items():
                extra.setdefault("other_lists", {})[sampler] = _ranking_record(other, self.row_ids)
        elif method.kind == "base":
            if self._base_result is None:
                self._base_result = self.existing_base(method) or self.evaluate_base(timings, seed, method)
            metrics, rows, timings, extra["evaluated_with_seed"], other = copy.deepcopy(self._base_result)
            extra.update(other)
            extra["seed_independent"] = True
            extra["note"] = (
                "base does not depend on the seed: evaluated once per split, the same result for every seed"
            )
        else:
            sft_seed = seed if self.config.sft_seed is None else self.config.sft_seed
            directory, record = self.sft_checkpoint(sft_seed, sft_start_rows(self.config, method))
            extra["sft_checkpoint"] = str(directory)
            extra["sft_train_s"] = record["train_s"]
            if "rows_seen" in record:
                extra["sft_rows_seen"] = record["rows_seen"]
            if record.get("sittings"):
                extra["sft_sittings"] = record["sittings"]
            kept = kept_model_dir(self, method, seed)
            if method.kind == "sft":
                model, tokenizer = load_checkpoint(directory, self.config)
                log_history = record["log_history"]
                timings["train"] = record["train_s"]
            elif kept is not None and (kept / _STAGE_MARKER).is_file():
                # Trained in an earlier call (on the other split, or under another name with the same settings)
                model, tokenizer = load_checkpoint(kept, self.config)
                kept_record = json.loads((kept / _STAGE_MARKER).read_text())
                log_history, timings["train"] = kept_record["log_history"], kept_record["train_s"]
                extra.update(kept_record["info"], trained_model=str(kept))
            else:
                model, tokenizer = load_checkpoint(directory, self.config)
                with _timed(timings, "train"):
                    model, log_history, info = train_preference(self, method, seed, model, tokenizer, kept)
                if kept is not None:
                    timings["train"] = _sitting_seconds(info["sittings"])
                    extra["trained_model"] = str(kept)
                extra.update(info)
            metrics, rows = self.evaluate(model, tokenizer, timings)
            extra.update(self.evaluate_other_lists(model, tokenizer, timings, method))
            del model
        timings["total"] = round(time.perf_counter() - start, 2) if method.kind != "base" else timings["total"]
        return {
            "metrics": metrics,
            "rows": rows,
            "log_history": _json_safe(log_history),
            "timings_s": timings,
            **extra,
        }

    def other_lists_for(self, method: MethodConfig) -> dict[str, list]:
        """The eval rows with each `extra_eval_samplers` list that `method` is also evaluated on (`extra_eval_methods`)."""
        names = self.config.extra_eval_methods
        return self.other_examples if names is None or method.name in names else {}

    def evaluate_other_lists(self, model, tokenizer, timings, method: MethodConfig) -> dict[str, Any]:
        """`{"other_lists": {sampler: {"metrics", "rows"}}}` for `extra_eval_samplers` (ranking only); `{}` if none."""
        out = {}
        for sampler, examples in self.other_lists_for(method).items():
            metrics, rows = self.evaluate(model, tokenizer, timings, examples=examples)
            out[sampler] = {"metrics": metrics, "rows": rows}
        return {"other_lists": out} if out else {}

    def evaluate_base(self, timings, seed: int, method: MethodConfig):
        start = time.perf_counter()
        model, tokenizer = load_base_model(self.config)
        metrics, rows = self.evaluate(model, tokenizer, timings)
        other = self.evaluate_other_lists(model, tokenizer, timings, method)
        timings["total"] = round(time.perf_counter() - start, 2)
        return metrics, rows, timings, seed, other

    def existing_base(self, method: MethodConfig):
        """The base result of another seed of this split with the same settings, written in an earlier sitting."""
        settings = run_settings(self.config, method)  # base: no SFT seed
        for path in sorted((self.output_dir / self.split / method.name).glob("seed*.json")):
            data = json.loads(path.read_text())
            if data.get("config") == settings and data["rows"]["ids"] == self.row_ids:
                other = {"other_lists": data["other_lists"]} if "other_lists" in data else {}
                return data["metrics"], data["rows"], data["timings_s"], data.get("evaluated_with_seed"), other
        return None

    def baseline_ranks(self, method: MethodConfig, seed: int, timings) -> dict[str | None, list[int]] | None:
        """The target ranks of a baseline on the eval rows (key `None`) and on the same rows with each
        `extra_eval_samplers` list (key: the sampler); `None` if the baseline is not available."""
        from .baselines import memorizer_ranks, popularity_ranks, random_ranks

        sets = {None: self.eval_examples, **self.other_lists_for(method)}
        if method.kind == "sasrec":
            try:  # the optional `baselines` extra: our module imports without it, replay-rec may not be there
                from .sasrec import require_replay, sasrec_ranks

                require_replay()
            except ImportError as error:
                logger.warning(
                    f"Skipping {method.name}: SASRec is not available ({error}); pip install 'trl-sdpo[baselines]'."
                )
                return None
            # One model for every list: scoring a row reads only its history and its own candidates, so the rows of
            # all lists are scored in one pass after one training (minutes on CPU) instead of one training per list.
            with _timed(timings, "train"):
                joined = [example for examples in sets.values() for example in examples]
                ranks = sasrec_ranks(self.dataset, joined, seed=seed, **method.options)
            out, start = {}, 0
            for sampler, examples in sets.items():
                out[sampler], start = ranks[start : start + len(examples)], start + len(examples)
            return out
        out = {}
        for sampler, examples in sets.items():
            with _timed(timings, "train" if sampler is None else "eval_other_lists"):
                if method.kind == "random":
                    out[sampler] = random_ranks(examples, seed=seed)
                elif method.kind == "popular":
                    out[sampler] = popularity_ranks(self.dataset, examples)
                else:  # memorizer
                    lists = self.train_lists(sampler or self.config.sampler)
                    out[sampler] = memorizer_ranks(*lists, examples, seed=seed)
        return out

    def train_lists(self, sampler: str) -> tuple[list, list]:
        """The train split's candidate lists from `sampler` (seeded by `data_seed`) and targets: what the memorizer
        remembers. Built once per sampler."""
        from .candidates import sample_candidates

        if sampler not in self._train_lists:
            rows = self.dataset.split("train")
            lists = sample_candidates(self.dataset, rows, self.config.num_candidates, sampler, self.config.data_seed)
            self._train_lists[sampler] = (lists, [row.target for row in rows])
        return self._train_lists[sampler]


def _ranking_record(ranks: list[int], row_ids: list[str]) -> dict[str, Any]:
    from .metrics import ranking_metrics

    rows = {"ids": row_ids, "target_rank": list(ranks), "generation_hit": None, "generation_valid": None}
    return {"metrics": {"generation": None, "ranking": ranking_metrics(ranks)}, "rows": rows}


def _save_plain(model, tokenizer, folder: Path) -> None:
    """Save `model` without adapters (a merged copy under LoRA: training goes on with the adapter) and `tokenizer`."""
    from peft import PeftModel

    from .training import plain_model

    if isinstance(model, PeftModel):
        model = plain_model(copy.deepcopy(model))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _fresh_folder(folder: Path) -> None:
    """A trainer folder for a run that keeps no checkpoints: a killed earlier attempt's sittings are not this run's."""
    from .resumable import SITTINGS_FILE

    folder.mkdir(parents=True, exist_ok=True)
    (folder / SITTINGS_FILE).unlink(missing_ok=True)


def _sitting_seconds(sittings: list[dict[str, Any]]) -> float:
    return round(sum(s["seconds"] for s in sittings), 2)


def train_sft_checkpoint(
    runner: _Runner, seed: int, directory: Path, settings: dict[str, Any], until_rows: int | None = None
) -> dict[str, Any] | None:
    """
    Train the SFT stage of a seed from the base model and save it (merged) with its record, atomically; with
    `sft.curve_rows`, also each point of the learning curve on the way (`sft-rows<N>/` beside it). With
    `sft.save_steps` the stage keeps Trainer checkpoints in `trainer-sft/` and a later call resumes from the latest;
    then `until_rows` (a curve point) stops there, with a Trainer checkpoint, and returns `None` (not at the end yet).
    """
    from transformers import set_seed
    from trl import SFTConfig

    from ..machine import machine_info
    from .builders import build_sft_dataset
    from .resumable import CurveCallback, SittingCallback, prepare_folder, read_sittings
    from .training import train_sft

    config, stage = runner.config, runner.config.sft
    trainer_dir = directory.parent / "trainer-sft"
    resume = prepare_folder(trainer_dir, settings) if stage.save_steps else _fresh_folder(trainer_dir)
    logger.info(
        f"[experiment] SFT of seed {seed}: {stage_steps(stage)} steps, saved to {directory}"
        + (f", resuming from {resume}" if resume else "")
    )
    set_seed(seed)
    model, tokenizer = load_base_model(config)
    examples = runner.train_examples(stage.train_rows, seed)
    batch = stage.batch_size * stage.gradient_accumulation_steps

    sitting = SittingCallback(trainer_dir, machine_info(), str(resume) if resume else None)

    def record(state) -> dict[str, Any]:
        sitting.record(state)
        sittings = read_sittings(trainer_dir)
        return {
            "settings": settings,
            "rows_seen": state.global_step * batch,
            "log_history": _json_safe(state.log_history),
            "train_s": _sitting_seconds(sittings),
            "sittings": sittings,
        }

    stop_at = None
    if stage.save_steps and until_rows is not None and until_rows != _stage_rows(stage):
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
            _STAGE_MARKER,
            record,
            lambda m, folder: _save_plain(m, tokenizer, folder),
            stop_at=stop_at,
        ),
    ]
    args = training_args(SFTConfig, config, stage, seed, trainer_dir)
    model, metrics = train_sft(
        model,
        tokenizer,
        build_sft_dataset(examples),
        args,
        peft_config=_peft_config(config),
        resume_from_checkpoint=str(resume) if resume else None,
        callbacks=callbacks,
    )
    if stop_at is not None and metrics["global_step"] < (stage_steps(stage) or 0):
        return None  # stopped at a curve point; the end comes in a later call
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    _save_plain(model, tokenizer, tmp)
    sittings = read_sittings(trainer_dir)
    final = {
        "settings": settings,
        "rows_seen": (stage_steps(stage) or 0) * batch or len(examples),
        "log_history": _json_safe(metrics["log_history"]),
        "train_s": _sitting_seconds(sittings),
        "sittings": sittings,
    }
    (tmp / _STAGE_MARKER).write_text(json.dumps(final, indent=1) + "\n")
    if directory.exists():  # an incomplete folder of a killed sitting (no marker)
        import shutil

        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return final


def _rows_key(method: MethodConfig, seed: int) -> tuple:
    """What decides a method's preference rows: methods with the same key train on the very same rows."""
    s = method.settings
    return (seed, s.train_rows, s.num_negatives, s.negative_strategy, s.heldout_rows)


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(_json_safe(value), sort_keys=True).encode()).hexdigest()[:10]


def kept_model_dir(runner: _Runner, method: MethodConfig, seed: int) -> Path | None:
    """
    Where a resumable preference run (`save_steps` set) keeps its Trainer checkpoints and, at the end, its trained
    model: `checkpoints/seed<seed>/<kind>-<digest of what decides the result>`, so the same training under another
    method name (the chosen variant of a learning-rate sweep) or on the other split is trained once. `None` for runs
    without `save_steps` (trained again by every call).
    """
    if method.kind not in PREFERENCE_KINDS or method.settings.save_steps is None:
        return None
    return (
        runner.output_dir / "checkpoints" / f"seed{seed}" / f"{method.kind}-{_digest(kept_key(runner, method, seed))}"
    )


def kept_key(runner: _Runner, method: MethodConfig, seed: int) -> dict[str, Any]:
    """What decides a preference run's trained model: its settings without the method's name, the SFT model, seed."""
    key = run_settings(runner.config, method) | {"sft_model": runner.sft_model_id(seed), "seed": seed}
    key["method"].pop("name")
    return key


def preference_rows(runner: _Runner, method: MethodConfig, seed: int, model, tokenizer):
    """
    The preference examples and S-DPO rows of a method, and the held-out S-DPO rows drawn with them (disjoint, from
    the train split; `None` without `heldout_rows`); cached so that dpo and sdpo train on the same rows.
    """
    from .builders import build_preference_dataset

    s = method.settings
    key = _rows_key(method, seed)
    if key not in runner._preference_cache:
        drawn = None if s.train_rows is None else s.train_rows + s.heldout_rows
        examples = runner.train_examples(drawn, seed + PREFERENCE_SEED_OFFSET)
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
                dataset=runner.dataset,
                model=model if hard else None,
                tokenizer=tokenizer if hard else None,
            )

        runner._preference_cache[key] = (examples, build(examples), build(heldout) if heldout else None)
    return runner._preference_cache[key]


def reference_rows(runner: _Runner, method: MethodConfig, seed: int, model, tokenizer, rows, part: str = "train"):
    """
    The S-DPO rows tokenized, with the SFT model's reference log-probs of every completion as columns: computed once
    per seed and rows, before any method of the seed trains, and shared by sdpo and dpo (which reads the first
    negative's). Saves the reference forward of every training step, and the reference model's memory. A resumable
    run (`save_steps`) keeps them on disk beside its checkpoints, so a later sitting does not compute them again.
    """
    from datasets import load_from_disk

    from ..config import SDPOConfig
    from .training import precompute_reference

    s = method.settings
    key = (*_rows_key(method, seed), part)
    if key not in runner._reference_cache:
        seed_dir = runner.output_dir / "checkpoints" / f"seed{seed}"
        args = training_args(
            SDPOConfig, runner.config, s, seed, seed_dir / "trainer-reference", precompute_ref_log_probs=True
        )
        stored = None
        if s.save_steps is not None:
            what = {"rows": key, "sft": runner.sft_model_id(seed), "max_length": runner.config.max_length}
            what["precision"] = precision_name(runner.bf16)
            stored = seed_dir / f"reference-{part}-{_digest(what)}"
        if stored is not None and (stored / "dataset_info.json").is_file():
            runner._reference_cache[key] = load_from_disk(str(stored))
        else:
            prepared = precompute_reference(model, tokenizer, rows, args)
            if stored is not None:
                prepared.save_to_disk(str(stored.with_name(stored.name + ".tmp")))
                if stored.exists():
                    import shutil

                    shutil.rmtree(stored)
                os.replace(stored.with_name(stored.name + ".tmp"), stored)
            runner._reference_cache[key] = prepared
    return runner._reference_cache[key]


def train_preference(runner: _Runner, method: MethodConfig, seed: int, model, tokenizer, kept: Path | None = None):
    """
    Train sft-continued, dpo or sdpo from the SFT model; returns (plain model, log history, info for the JSON).

    With `heldout_rows`, the implicit rewards of the held-out rows are logged every `eval_steps` (in the training
    precision) and measured once more at the end in fp32 (`info["heldout"]`, with per-row values). With `kept` (a
    resumable run: `save_steps`), Trainer checkpoints go there, a killed sitting resumes from the latest, and the
    trained model is saved there at the end with its log, info and sittings.
    """
    from transformers import set_seed
    from trl import DPOConfig, SFTConfig

    from ..config import SDPOConfig
    from ..machine import machine_info
    from .builders import build_sft_dataset
    from .heldout import HeldoutRewardsCallback
    from .resumable import SittingCallback, prepare_folder, read_sittings
    from .training import plain_model, train_dpo, train_sdpo, train_sft

    config, s = runner.config, method.settings
    examples, rows, heldout = preference_rows(runner, method, seed, model, tokenizer)
    out = kept or runner.output_dir / "checkpoints" / f"seed{seed}" / f"trainer-{method.name}"
    resume = prepare_folder(out, kept_key(runner, method, seed)) if kept else None
    callbacks = [SittingCallback(out, machine_info(), str(resume) if resume else None)] if kept else []
    heldout_callback = None
    if heldout is not None:
        heldout_callback = HeldoutRewardsCallback(
            reference_rows(runner, method, seed, model, tokenizer, heldout, part="heldout"),
            beta=s.beta,
            pad_token_id=tokenizer.pad_token_id,
            max_length=config.max_length,
            batch_size=config.eval_batch_size,
            bf16=runner.bf16,
            every=s.eval_steps,
        )
        callbacks.append(heldout_callback)
    fit_kwargs = {"callbacks": callbacks, "resume_from_checkpoint": str(resume) if resume else None}
    peft = _peft_config(config)
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
        prepared = reference_rows(runner, method, seed, model, tokenizer, rows)
        # dpo: k=1 on the same rows, the first negative of each S-DPO row and its reference column. Equal to TRL's
        # DPOTrainer in loss and gradients (tests/test_dpo_compat.py) at the cost of an S-DPO k=1 step.
        k = 1 if method.kind == "dpo" else s.num_negatives
        if method.kind == "dpo":
            info["dpo_negative"] = f"first of the {s.num_negatives} {s.negative_strategy} negatives of each S-DPO row"
        info["trainer"] = f"trl_sdpo.SDPOTrainer (k={k}, shared prefix, reference precomputed once per seed)"
        args = training_args(
            SDPOConfig, config, s, seed, out, beta=s.beta, num_negatives=k, precompute_ref_log_probs=True
        )
        model, metrics = train_sdpo(model, tokenizer, prepared, args, peft_config=peft, **fit_kwargs)
    model = plain_model(model)
    if heldout_callback is not None:
        # The verdict's number: fp32, whatever the training precision (bf16 rounds summed log-probs by ~0.2 nats)
        heldout_callback.kwargs["bf16"] = False
        final = heldout_callback.evaluate(model, metrics["global_step"])
        info["heldout"] = {"precision": "fp32", "beta": s.beta, "rows_drawn_beside_training": s.heldout_rows, **final}
    log_history = _json_safe(metrics["log_history"])
    if kept is not None:
        info["sittings"] = read_sittings(out)
        tmp = kept / "model.tmp"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        _save_plain(model, tokenizer, tmp)
        record = {"log_history": log_history, "train_s": _sitting_seconds(info["sittings"]), "info": info}
        (tmp / _STAGE_MARKER).write_text(json.dumps(_json_safe(record), indent=1) + "\n")
        # The kept model replaces the Trainer checkpoints (1.6 GB each with the optimizer state)
        for stale in kept.glob("checkpoint-*"):
            import shutil

            shutil.rmtree(stale)
        # The marker last: a folder without it is not a finished model
        for item in sorted(tmp.iterdir(), key=lambda path: path.name == _STAGE_MARKER):
            os.replace(item, kept / item.name)
        tmp.rmdir()
    return model, log_history, info


def run_experiment(
    config: ExperimentConfig, split: str | None = None, show_progress: bool = True
) -> dict[str, list[tuple[str, int]]]:
    """
    Run every (method, seed) of `config` on `split` that has no JSON yet, writing one JSON per run.

    Args:
        config (`ExperimentConfig`): The validated study (see [`load_experiment_config`]).
        split (`str`, *optional*): `valid` or `test`; defaults to `config.eval_split`.
        show_progress (`bool`, *optional*, defaults to `True`): Progress bars over runs, training and evaluation.

    Returns:
        `dict` with `"written"`, `"skipped"` and `"unavailable"` lists of (method, seed).
    """
    from ..machine import machine_info, package_versions

    split = split or config.eval_split
    if split not in ("valid", "test"):
        raise ConfigError(f"`split` is {split!r}; expected valid or test.")
    runner = _Runner(config, split, show_progress)
    result: dict[str, list] = {"written": [], "skipped": [], "unavailable": []}
    todo = []
    for seed in config.seeds:
        for name, method in config.methods.items():
            path = run_path(config.output_dir, split, name, seed)
            if path.exists():
                _check_existing(path, run_settings(config, method, seed))
                logger.info(f"[experiment] {split} {name} seed {seed}: {path} exists, skipped")
                result["skipped"].append((name, seed))
            else:
                todo.append((name, method, seed, path))
    if not todo:
        return result
    runner.load_data()
    machine, versions = machine_info(), package_versions()
    with tqdm(total=len(todo), desc="Runs", disable=not show_progress) as bar:
        for name, method, seed, path in todo:
            bar.set_postfix_str(f"{name} seed {seed}")
            logger.info(f"[experiment] {split} {name} (kind {method.kind}) seed {seed}")
            outcome = runner.run_method(method, seed)
            if outcome is None:
                result["unavailable"].append((name, seed))
            else:
                data = {
                    "schema": SCHEMA,
                    "study": config.study,
                    "preset": config.preset,
                    "method": name,
                    "kind": method.kind,
                    "seed": seed,
                    "split": split,
                    "config": run_settings(config, method, seed),
                    # What ran (config `bf16: auto` resolves per machine); baselines use no LM
                    "precision": None if method.kind in BASELINE_KINDS else precision_name(runner.bf16),
                    **outcome,
                    "versions": versions,
                    "machine": machine,
                    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                }
                write_json_atomic(path, data)
                result["written"].append((name, seed))
            bar.update(1)
    return result
