"""The YAML of a recommendation study (`trl-sdpo experiment --config FILE.yaml`): dataclasses, presets, validation.

A study file holds top-level settings, an `sft:` section (the SFT stage every trained method starts from), a
`preference:` section (the defaults of the stage after SFT: sft-continued, dpo, sdpo), `methods:` (name -> kind and
overrides) and `presets:` (name -> values deep-merged over the top level). Everything is checked before any model is
loaded: an unknown key anywhere is an error naming the key and the allowed ones.

Relative paths in the file (`output_dir`, `sft_checkpoints_dir`, `data_dir`, a `model` folder starting with `.`) are
resolved against the file's own folder, so a study runs the same from any working directory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The preference kinds, in table order: SFT continued on the chosen answers (the compute-matched control), DPO on the
# first negative of each row (k=1), DPO on all k pairs of each row (`ranking_loss: pairwise`, the same rows and
# negatives as S-DPO) and S-DPO (k negatives, softmax).
PREFERENCE_KINDS = ("sft-continued", "dpo", "dpo-pairs", "sdpo")
LM_KINDS = ("base", "sft", *PREFERENCE_KINDS)
BASELINE_KINDS = ("random", "popular", "sasrec", "memorizer")
METHOD_KINDS = (*LM_KINDS, *BASELINE_KINDS)
# The ranking loss each kind trained with SDPOTrainer uses (SDPOConfig.ranking_loss)
RANKING_LOSS_OF_KIND = {"dpo": "softmax", "dpo-pairs": "pairwise", "sdpo": "softmax"}
SPLITS = ("valid", "test")
DATASETS = ("movielens", "lastfm", "goodreads")
NEGATIVE_STRATEGIES = ("random", "popular", "model")
TINY_RANDOM = "tiny-random"
"""`model: tiny-random`: a 2-layer random-weight Llama with the default model's tokenizer, built in-process. Smoke
tests of the machinery only: its numbers mean nothing."""


class ConfigError(ValueError):
    """A problem in a study file, naming the key."""


@dataclass
class StageSettings:
    """
    Training settings of one stage (the shared SFT stage, or a method of the preference stage).

    Parameters:
        train_rows (`int` or `None`): Train rows, a seeded sample of the train split drawn by the training seed;
            `None` = the whole split.
        steps (`int` or `None`): Optimizer steps; `None` trains `epochs` epochs instead.
        epochs (`float` or `None`): Epochs over the rows when `steps` is `None`.
        learning_rate (`float`): Peak learning rate.
        batch_size (`int`): Rows per device batch.
        gradient_accumulation_steps (`int`): Batches per optimizer step (effective batch = batch_size x this).
        lr_scheduler_type (`str`): TRL/transformers scheduler name.
        warmup_ratio (`float`): Fraction of steps warming up.
        beta (`float`): DPO/S-DPO beta (preference stage only).
        num_negatives (`int`): k, rejected titles per row; `dpo` uses the first of them (k=1 on the same rows),
            `dpo-pairs` and `sdpo` all k.
        negative_strategy (`str`): `random`, `popular` or `model` (scored by the SFT model: hard negatives).
        curve_rows (`list[int]` or `None`): SFT stage only: the rows seen (optimizer steps x effective batch) at
            which the model is also saved, a learning curve in one run; methods of kind `sft` pick a point with
            `sft_rows`. Each must be a multiple of the effective batch, in increasing order.
        start_rows (`int`, `"auto"` or `None`): SFT stage only: the curve point (rows seen) that the `sft` method and
            the preference stage start from; `None` = the end of the stage; `auto` = the point the rule of
            `trl_sdpo.rec.study.curve` picks from the curve's valid runs (which must exist: run them first). Not part
            of the SFT model's own settings.
        heldout_rows (`int`): Preference stage only: preference rows drawn beside the training rows (disjoint, from
            the train split) and given to the trainer as `eval_dataset`, so the log shows whether and when the
            implicit rewards moved on rows the model did not train on; 0 = none.
        eval_steps (`int` or `None`): Preference stage only: evaluate the held-out rows every this many optimizer
            steps (and at the end); `None` = at the end only.
        save_steps (`int` or `None`): Save a Trainer checkpoint (model, optimizer, scheduler, RNG) every this many
            optimizer steps, so that a killed sitting resumes from it in the next `trl-sdpo experiment` call;
            `None` = no checkpoints (a run killed midway starts over).
    """

    train_rows: int | None = 64
    steps: int | None = 16
    epochs: float | None = None
    learning_rate: float = 5e-5
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    beta: float = 1.0
    num_negatives: int = 3
    negative_strategy: str = "random"
    curve_rows: list[int] | None = None
    start_rows: int | str | None = None
    heldout_rows: int = 0
    eval_steps: int | None = None
    save_steps: int | None = None


@dataclass
class LoraSettings:
    """LoRA adapter of every trained stage (`lora: null` = full fine-tuning). The paper: r 8, alpha 32, dropout 0.1."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class MethodConfig:
    """One method of the study: its `kind`, its resolved stage settings (trained kinds) and extra `options`."""

    name: str
    kind: str
    settings: StageSettings | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # kind dpo only: `trl` trains with TRL's own DPOTrainer (pairs, a reference forward every step), the cross-check;
    # None (default) with SDPOTrainer at k=1 through the shared prefix and the precomputed reference (equal loss).
    trainer: str | None = None
    # kind sft only: the point of the SFT learning curve (`sft.curve_rows`) this method evaluates; None = the model
    # the preference stage starts from (`sft.start_rows`, or the end of the stage)
    sft_rows: int | None = None


@dataclass
class ExperimentConfig:
    """
    A study: what data, which model, which methods and seeds, and how each is trained and evaluated.

    Parameters:
        study (`str`): Name, written into every run JSON.
        preset (`str` or `None`): The preset merged in, if any.
        description (`str`): Free text.
        output_dir (`str`): Where `<split>/<method>/seed<seed>.json` and `checkpoints/` go.
        sft_checkpoints_dir (`str` or `None`): Where the SFT model of each seed is read from or saved to
            (`seed<seed>/sft/`); `None` = `<output_dir>/checkpoints`. Pointing it at another study's `checkpoints/`
            shares its SFT models (their recorded settings must equal this study's `sft:` section and model/data).
        dataset, data_dir, min_history, sampler, num_candidates, conversational, paraphrase: The rows (see
            `trl-sdpo data`).
        model (`str` or `None`): Hub id or folder; `None` = the embedded SmolLM2-135M-Instruct; `tiny-random` =
            a random 2-layer model for smoke tests only.
        model_cache_dir (`str` or `None`): Cache of the converted default model.
        dtype (`str`): Weights dtype while training and evaluating (`float32`, `bfloat16`).
        bf16 (`bool` or `"auto"`): bf16 mixed precision (autocast, fp32 master weights, fp32 log-softmax) in
            training and evaluation. `auto` (the default) uses it where it is native (a bf16 GPU, or a CPU with
            AVX512_BF16 or AMX, ~2x faster there) and fp32 elsewhere; each run JSON records what ran (`precision`).
        lora (`LoraSettings` or `None`): Adapters instead of full fine-tuning.
        activation_checkpointing (`bool`): Trade compute for memory in training.
        max_length (`int`): Longest tokenized training row.
        eval_split (`str`): `valid` (choosing settings) or `test` (final numbers); the command's `--split` wins.
        eval_rows (`int` or `None`): A seeded sample (by `data_seed`) of the split; `None` = all of it.
        test_eval_rows (`int` or `None`): Eval rows on `test` when it needs more than `valid` (the number the paired
            intervals of the valid runs call for), drawn by `data_seed` like them; `None` = `eval_rows`.
        data_seed (`int`): Seeds the eval rows and their candidates: identical for every method and seed.
        seeds (`list[int]`): Training seeds (train rows, negatives, initialization, data order).
        sft_seed (`int` or `None`): The seed of the one SFT model every training seed's preference stage starts from
            (an SFT stage many times longer than the preference stage is then trained once); `None` = each seed its
            own SFT model.
        generation (`bool`): Also run the paper's generation evaluation (HR@1, ValidRatio); off = `null` metrics.
        generation_rows (`int` or `None`): Generate for the first this many eval rows only (generation costs about as
            much as ranking per row and needs fewer rows for its question); `None` = every eval row.
        extra_eval_samplers (`list[str]`): Also evaluate every method on the same eval rows with the candidate lists
            of these samplers (e.g. `["sdpo-compat"]`: the paper's leaking lists), ranking only, into the run JSON's
            `other_lists`; the same trained model, so the difference is the lists' alone.
        extra_eval_methods (`list[str]` or `None`): The methods (by name) that `extra_eval_samplers` applies to;
            `None` = every method. Each list costs an LM method one more ranking pass (~50 s per 100 rows on CPU).
        max_new_tokens (`int`): Generation length (the paper: 20).
        eval_batch_size (`int`): Prompts per forward pass in evaluation.
        sft (`StageSettings`): The SFT stage.
        preference (`StageSettings`): Defaults of the sft-continued, dpo and sdpo methods.
        methods (`dict[str, MethodConfig]`): The methods, by name.
    """

    study: str = "study"
    preset: str | None = None
    description: str = ""
    output_dir: str = "results"
    sft_checkpoints_dir: str | None = None
    dataset: str = "movielens"
    data_dir: str | None = None
    min_history: int = 3
    sampler: str = "default"
    num_candidates: int = 20
    conversational: bool = True
    paraphrase: bool = False
    model: str | None = None
    model_cache_dir: str | None = None
    dtype: str = "float32"
    bf16: bool | str = "auto"
    lora: LoraSettings | None = None
    activation_checkpointing: bool = False
    max_length: int = 512
    eval_split: str = "valid"
    eval_rows: int | None = 100
    test_eval_rows: int | None = None
    data_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    sft_seed: int | None = None
    generation: bool = True
    generation_rows: int | None = None
    extra_eval_samplers: list[str] = field(default_factory=list)
    extra_eval_methods: list[str] | None = None
    max_new_tokens: int = 20
    eval_batch_size: int = 8
    sft: StageSettings = field(default_factory=StageSettings)
    preference: StageSettings = field(default_factory=StageSettings)
    methods: dict[str, MethodConfig] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the run JSONs' `config`)."""
        return dataclasses.asdict(self)


_TOP_KEYS = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"preset"} | {"presets"}
_STAGE_KEYS = {f.name for f in dataclasses.fields(StageSettings)}
_SFT_ONLY_KEYS = {"curve_rows", "start_rows"}
_PREFERENCE_ONLY_KEYS = {"heldout_rows", "eval_steps"}
_LORA_KEYS = {f.name for f in dataclasses.fields(LoraSettings)}


def _unknown(key: str, allowed: set[str]) -> ConfigError:
    return ConfigError(f"Unknown config key `{key}`; allowed keys here: {', '.join(sorted(allowed))}.")


def _keys(section: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"`{where}` must be a mapping, got {type(section).__name__}: {section!r}.")
    for key in section:
        if key not in allowed:
            raise _unknown(f"{where}.{key}" if where else str(key), allowed)
    return section


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override`'s values on top; nested mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# YAML 1.1 (what PyYAML reads) takes `1e-4` for text; an override is a number when it is written like one.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """
    `KEY=VALUE` assignments (`trl-sdpo experiment --set`) as a nested mapping to merge over a study and its preset.

    A dot in KEY walks into a section (`sft.start_rows=4096`, `methods.sdpo.learning_rate=1e-4`); VALUE is read as
    YAML (`null`, `[0, 1]`, `{steps: 2}`), and a number with an exponent (`1e-4`) is a float.

    Args:
        assignments (`Sequence[str]`): The `KEY=VALUE` strings, applied in order.

    Returns:
        `dict`: e.g. `{"sft": {"start_rows": 4096}}` for `["sft.start_rows=4096"]`.

    Raises:
        ConfigError: naming the assignment at fault.
    """
    import yaml

    out: dict[str, Any] = {}
    for text in assignments:
        key, sep, raw = text.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if not sep or not all(parts):
            raise ConfigError(f"--set takes KEY=VALUE with a dotted KEY (e.g. sft.start_rows=4096), got {text!r}.")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: {raw!r} is not valid YAML ({error}).") from None
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: `{'.'.join(parts[: depth + 1])}` was set to a value before.")
        node[parts[-1]] = value
    return out


def _check_type(value: Any, expected: tuple[type, ...], key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"`{key}` must be {' or '.join(t.__name__ for t in expected)}, got {value!r}.")
    if not isinstance(value, expected):
        raise ConfigError(f"`{key}` must be {' or '.join(t.__name__ for t in expected)}, got {value!r}.")


def _stage(values: dict[str, Any], where: str, base: StageSettings | None = None) -> StageSettings:
    # The curve is the SFT stage's, the held-out preference rows the preference stage's
    _keys(values, _STAGE_KEYS - (_PREFERENCE_ONLY_KEYS if where == "sft" else _SFT_ONLY_KEYS), where)
    merged = {**dataclasses.asdict(base or StageSettings()), **values}
    for key in ("heldout_rows",):
        _check_type(merged[key], (int,), f"{where}.{key}")
        if merged[key] < 0:
            raise ConfigError(f"`{where}.{key}` must be 0 or more, got {merged[key]}.")
    for key in ("eval_steps", "save_steps", *(("start_rows",) if merged["start_rows"] != "auto" else ())):
        _check_type(merged[key], (int,), f"{where}.{key}", allow_none=True)
        if merged[key] is not None and merged[key] < 1:
            raise ConfigError(f"`{where}.{key}` must be at least 1 (or null), got {merged[key]}.")
    if merged["curve_rows"] is not None:
        _curve(merged, where)
    elif merged["start_rows"] is not None:
        raise ConfigError(f"`{where}.start_rows` names a point of `{where}.curve_rows`, which is not set.")
    for key in ("train_rows", "batch_size", "gradient_accumulation_steps", "num_negatives"):
        _check_type(merged[key], (int,), f"{where}.{key}", allow_none=key == "train_rows")
        if merged[key] is not None and merged[key] < 1:
            raise ConfigError(f"`{where}.{key}` must be at least 1, got {merged[key]}.")
    _check_type(merged["steps"], (int,), f"{where}.steps", allow_none=True)
    _check_type(merged["epochs"], (int, float), f"{where}.epochs", allow_none=True)
    if merged["steps"] is None and merged["epochs"] is None:
        raise ConfigError(f"`{where}`: give `steps` or `epochs`.")
    if merged["steps"] is not None and merged["steps"] < 1:
        raise ConfigError(f"`{where}.steps` must be at least 1, got {merged['steps']}.")
    for key in ("learning_rate", "beta", "warmup_ratio"):
        _check_type(merged[key], (int, float), f"{where}.{key}")
    if merged["learning_rate"] <= 0 or merged["beta"] <= 0:
        raise ConfigError(f"`{where}.learning_rate` and `{where}.beta` must be positive.")
    if merged["negative_strategy"] not in NEGATIVE_STRATEGIES:
        raise ConfigError(
            f"`{where}.negative_strategy` is {merged['negative_strategy']!r}; expected one of "
            f"{', '.join(NEGATIVE_STRATEGIES)}."
        )
    return StageSettings(**merged)


def _curve(merged: dict[str, Any], where: str) -> None:
    """Check `curve_rows` (increasing multiples of the effective batch, within the stage) and `start_rows` (one of them)."""
    curve = merged["curve_rows"]
    if not isinstance(curve, list) or not curve:
        raise ConfigError(f"`{where}.curve_rows` must be a non-empty list of row counts, got {curve!r}.")
    batch = merged["batch_size"] * merged["gradient_accumulation_steps"]
    for rows in curve:
        _check_type(rows, (int,), f"{where}.curve_rows")
        if rows < 1 or rows % batch:
            raise ConfigError(
                f"`{where}.curve_rows` holds {rows}: each point must be a positive multiple of the effective batch "
                f"({merged['batch_size']} x {merged['gradient_accumulation_steps']} = {batch}), a whole optimizer step."
            )
    if curve != sorted(set(curve)):
        raise ConfigError(f"`{where}.curve_rows` must increase strictly, got {curve}.")
    steps = stage_steps(StageSettings(**merged))
    if steps is not None and curve[-1] > steps * batch:
        raise ConfigError(
            f"`{where}.curve_rows` ends at {curve[-1]} rows, past the stage's {steps} steps x {batch} = "
            f"{steps * batch} rows."
        )
    if merged["start_rows"] not in (None, "auto", *curve):
        raise ConfigError(
            f"`{where}.start_rows` is {merged['start_rows']}, not a point of `curve_rows` {curve} (or auto: the rule "
            "of `trl_sdpo.rec.study.curve` on the valid curve runs)."
        )


def stage_steps(stage: StageSettings) -> int | None:
    """Optimizer steps of a stage: `steps`, or the steps of `epochs` epochs over `train_rows` (None: whole split)."""
    if stage.steps is not None:
        return stage.steps
    if stage.train_rows is None:
        return None
    per_epoch = math.ceil(stage.train_rows / (stage.batch_size * stage.gradient_accumulation_steps))
    return math.ceil(per_epoch * stage.epochs)


def _method(name: str, values: Any, preference: StageSettings, sft: StageSettings) -> MethodConfig:
    where = f"methods.{name}"
    values = dict(_keys(values, (_STAGE_KEYS - _SFT_ONLY_KEYS) | {"kind", "options", "trainer", "sft_rows"}, where))
    kind = values.pop("kind", name)
    if kind not in METHOD_KINDS:
        raise ConfigError(
            f"`{where}.kind` is {kind!r}"
            + ("" if "kind" in (values or {}) else " (taken from the name)")
            + f"; expected one of {', '.join(METHOD_KINDS)}."
        )
    options = values.pop("options", None) or {}
    if options and kind != "sasrec":
        raise ConfigError(f"`{where}.options` is only for kind sasrec (passed to `sasrec_ranks`), not {kind!r}.")
    trainer = values.pop("trainer", None)
    if trainer is not None and (kind != "dpo" or trainer not in ("sdpo", "trl")):
        raise ConfigError(
            f"`{where}.trainer` is {trainer!r} for kind {kind!r}; only kind dpo takes it: `trl` (TRL's DPOTrainer, the "
            "cross-check) or `sdpo` (SDPOTrainer at k=1, the default)."
        )
    sft_rows = values.pop("sft_rows", None)
    if sft_rows is not None:
        if kind != "sft":
            raise ConfigError(f"`{where}.sft_rows` is only for kind sft (a point of the SFT curve), not {kind!r}.")
        if sft_rows not in (sft.curve_rows or []):
            raise ConfigError(
                f"`{where}.sft_rows` is {sft_rows!r}, not a point of `sft.curve_rows` ({sft.curve_rows})."
            )
    if kind in PREFERENCE_KINDS:
        return MethodConfig(
            name, kind, _stage(values, where, preference), options, None if trainer == "sdpo" else trainer
        )
    if values:
        raise ConfigError(
            f"`{where}.{next(iter(values))}`: a method of kind {kind!r} takes no training settings (only kinds "
            f"{', '.join(PREFERENCE_KINDS)} do; the shared SFT stage is set in `sft:`)."
        )
    return MethodConfig(name, kind, None, options, sft_rows=sft_rows)


def _resolve_path(value: str | None, folder: Path | None) -> str | None:
    if value is None or folder is None:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def config_from_dict(
    raw: dict[str, Any],
    preset: str | None = None,
    folder: str | Path | None = None,
    check_paths: bool = True,
    overrides: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """
    Build and validate a study from the parsed YAML mapping.

    Args:
        raw (`dict`): The YAML's mapping.
        preset (`str`, *optional*): Name of a preset in `raw["presets"]` to deep-merge over the top level.
        folder (`str` or `Path`, *optional*): Folder that relative paths are resolved against (the YAML's).
        check_paths (`bool`, *optional*, defaults to `True`): Check that `data_dir` exists.
        overrides (`dict`, *optional*): Values merged over the top level and the preset (see [`parse_overrides`]).

    Returns:
        `ExperimentConfig`.

    Raises:
        ConfigError: naming the key at fault.
    """
    _keys(raw, _TOP_KEYS, "")
    presets = _keys(raw.get("presets"), set(raw.get("presets") or {}), "presets")
    values = {k: v for k, v in raw.items() if k != "presets"}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(
                f"Unknown preset {preset!r}; the file defines: {', '.join(presets) or 'no presets'} (key `presets`)."
            )
        override = _keys(presets[preset], _TOP_KEYS - {"presets"}, f"presets.{preset}")
        values = deep_merge(values, override)
    if overrides:  # the command line's --set, over the preset: each key is checked below like the file's own
        values = deep_merge(values, _keys(overrides, _TOP_KEYS - {"presets"}, ""))
    folder = Path(folder) if folder is not None else None

    defaults = ExperimentConfig()
    simple = {k: v for k, v in values.items() if k not in ("sft", "preference", "methods", "lora")}
    config = dataclasses.replace(defaults, **simple, preset=preset)
    config.sft = _stage(values.get("sft") or {}, "sft")
    config.preference = _stage(values.get("preference") or {}, "preference")
    lora = values.get("lora")
    config.lora = None if lora is None else LoraSettings(**_keys(lora, _LORA_KEYS, "lora"))
    methods = values.get("methods")
    if not methods:
        raise ConfigError("`methods` is empty: name at least one method (e.g. `sdpo: {}`).")
    _keys(methods, set(methods), "methods")
    config.methods = {
        str(name): _method(str(name), spec, config.preference, config.sft) for name, spec in methods.items()
    }

    _validate(config)
    config.output_dir = _resolve_path(config.output_dir, folder)
    config.sft_checkpoints_dir = _resolve_path(config.sft_checkpoints_dir, folder)
    config.data_dir = _resolve_path(config.data_dir, folder)
    if config.model not in (None, TINY_RANDOM) and str(config.model).startswith((".", "~", "/")):
        config.model = _resolve_path(config.model, folder)
    if check_paths and config.data_dir is not None and not Path(config.data_dir).is_dir():
        raise ConfigError(f"`data_dir`: {config.data_dir} is not a folder (dataset {config.dataset!r}).")
    return config


def _validate(config: ExperimentConfig) -> None:
    _check_type(config.study, (str,), "study")
    if config.dataset not in DATASETS:
        raise ConfigError(f"`dataset` is {config.dataset!r}; expected one of {', '.join(DATASETS)}.")
    if config.dataset != "movielens" and config.data_dir is None:
        raise ConfigError(f"`data_dir` is required for dataset {config.dataset!r} (a folder with items.tsv ...).")
    if config.eval_split not in SPLITS:
        raise ConfigError(f"`eval_split` is {config.eval_split!r}; expected one of {', '.join(SPLITS)}.")
    for key in ("num_candidates", "data_seed", "max_length", "max_new_tokens", "eval_batch_size", "min_history"):
        _check_type(getattr(config, key), (int,), key)
    if config.num_candidates < 2:
        raise ConfigError(f"`num_candidates` must be at least 2, got {config.num_candidates}.")
    _check_type(config.eval_rows, (int,), "eval_rows", allow_none=True)
    _check_type(config.generation_rows, (int,), "generation_rows", allow_none=True)
    _check_type(config.test_eval_rows, (int,), "test_eval_rows", allow_none=True)
    if config.test_eval_rows is not None and config.test_eval_rows < 1:
        raise ConfigError(f"`test_eval_rows` must be at least 1 (or null), got {config.test_eval_rows}.")
    if config.generation_rows is not None and config.generation_rows < 1:
        raise ConfigError(f"`generation_rows` must be at least 1 (or null), got {config.generation_rows}.")
    if config.eval_rows is not None and config.eval_rows < 1:
        raise ConfigError(f"`eval_rows` must be at least 1 (or null for the whole split), got {config.eval_rows}.")
    if not isinstance(config.seeds, list) or not config.seeds:
        raise ConfigError(f"`seeds` must be a non-empty list of integers, got {config.seeds!r}.")
    for seed in config.seeds:
        _check_type(seed, (int,), "seeds")
    _check_type(config.sft_seed, (int,), "sft_seed", allow_none=True)
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"`seeds` repeats a seed: {config.seeds}.")
    for key in ("generation", "conversational", "paraphrase", "activation_checkpointing"):
        _check_type(getattr(config, key), (bool,), key)
    if config.bf16 not in (True, False, "auto"):
        raise ConfigError(f"`bf16` is {config.bf16!r}; expected true, false or auto.")
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"`dtype` is {config.dtype!r}; expected float32, bfloat16 or float16.")
    if config.sampler not in ("default", "sdpo-compat"):
        raise ConfigError(f"`sampler` is {config.sampler!r}; expected default or sdpo-compat.")
    if not isinstance(config.extra_eval_samplers, list):
        raise ConfigError(f"`extra_eval_samplers` must be a list, got {config.extra_eval_samplers!r}.")
    for sampler in config.extra_eval_samplers:
        if sampler not in ("default", "sdpo-compat") or sampler == config.sampler:
            raise ConfigError(
                f"`extra_eval_samplers` holds {sampler!r}; expected default or sdpo-compat, other than `sampler` "
                f"({config.sampler!r})."
            )
    if config.extra_eval_methods is not None:
        if not isinstance(config.extra_eval_methods, list):
            raise ConfigError(
                f"`extra_eval_methods` must be a list of method names, got {config.extra_eval_methods!r}."
            )
        unknown = [name for name in config.extra_eval_methods if name not in config.methods]
        if unknown:
            raise ConfigError(
                f"`extra_eval_methods` names {', '.join(map(repr, unknown))}, not among `methods` "
                f"({', '.join(config.methods)})."
            )
    for method in config.methods.values():
        if method.settings is not None and method.settings.num_negatives > config.num_candidates - 1:
            raise ConfigError(
                f"`methods.{method.name}.num_negatives` (k) is {method.settings.num_negatives}, larger than "
                f"num_candidates - 1 = {config.num_candidates - 1} wrong candidates per row."
            )


def load_experiment_config(
    path: str | Path, preset: str | None = None, check_paths: bool = True, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """
    Read a study YAML file, merge `preset` and validate (see [`config_from_dict`]).

    Args:
        path (`str` or `Path`): The YAML file.
        preset (`str`, *optional*): A preset name of its `presets:` section.
        check_paths (`bool`, *optional*, defaults to `True`): Check that `data_dir` exists.
        overrides (`dict`, *optional*): Values merged over the file and the preset (see [`parse_overrides`]).

    Returns:
        `ExperimentConfig`.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}.")
    try:
        raw = _extended(raw, path, seen=(path.resolve(),))
        return config_from_dict(raw, preset=preset, folder=path.parent, check_paths=check_paths, overrides=overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}{f' (preset {preset})' if preset else ''}: {error}") from None


# Keys of an extended file that stay with it: its own name, presets and methods describe that study, not this one.
_NOT_INHERITED = ("study", "description", "presets", "methods", "extends")
_PATH_KEYS = ("output_dir", "sft_checkpoints_dir", "data_dir")


def _extended(raw: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """
    `raw` over the top level of the file named by its `extends:` key (relative to `path`'s folder), if any.

    A study that varies another one (the k and beta sweeps of the MovieLens study) extends it, so that the data, model,
    evaluation rows and `sft:`/`preference:` sections are written once. The extended file's paths are made absolute
    against its own folder first; its `study`, `description`, `presets` and `methods` are not inherited.
    """
    if "extends" not in raw:
        return raw
    import yaml

    base_path = (path.parent / str(raw["extends"])).resolve()
    if base_path in seen:
        raise ConfigError(f"`extends`: {base_path} extends itself (through {' -> '.join(map(str, seen))}).")
    if not base_path.is_file():
        raise ConfigError(f"`extends`: {base_path} does not exist.")
    base = yaml.safe_load(base_path.read_text())
    if not isinstance(base, dict):
        raise ConfigError(f"`extends`: {base_path} does not hold a mapping at the top level.")
    base = _extended(base, base_path, (*seen, base_path))
    inherited = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
    for key in _PATH_KEYS:
        inherited[key] = _resolve_path(inherited.get(key), base_path.parent)
    if isinstance(inherited.get("model"), str) and inherited["model"].startswith((".", "~")):
        inherited["model"] = _resolve_path(inherited["model"], base_path.parent)
    return deep_merge(inherited, {k: v for k, v in raw.items() if k != "extends"})


def for_split(config: ExperimentConfig, split: str) -> ExperimentConfig:
    """`config` as it runs on `split`: `test_eval_rows` becomes `eval_rows` on test and is dropped (recorded once)."""
    if config.test_eval_rows is None:
        return config
    config = copy.deepcopy(config)
    if split == "test":
        config.eval_rows = config.test_eval_rows
    config.test_eval_rows = None
    return config


def select(config: ExperimentConfig, methods: list[str] | None = None, seeds: list[int] | None = None):
    """`config` restricted to some of its methods and seeds (the command's `--methods`, `--seeds`)."""
    config = copy.deepcopy(config)
    if methods:
        for name in methods:
            if name not in config.methods:
                raise ConfigError(f"`--methods`: unknown method {name!r}; the study has {', '.join(config.methods)}.")
        config.methods = {name: config.methods[name] for name in methods}
    if seeds:
        config.seeds = list(seeds)
        _validate(config)
    return config
