"""
What a study writes and reads back: run JSON paths and settings, checkpoint folders, atomic writes.

Layout under `output_dir`: `<split>/<method>/seed<seed>.json` (schema 1, written atomically: a `.json.tmp` file then
`os.replace`, so a crash or a kill leaves no partial JSON; an existing JSON is a finished run and is skipped) and
`checkpoints/seed<seed>/` (the SFT model of the seed `sft/`, the points of its learning curve `sft-rows<N>/`, resumable
preference runs and their kept models, reference log-probs kept on disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from .config import (
    BASELINE_KINDS,
    PREFERENCE_KINDS,
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    StageSettings,
    stage_steps,
)

SCHEMA = 1


STAGE_MARKER = "trl_sdpo_stage.json"  # written last into a checkpoint folder: without it the folder is incomplete


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
    if rows is None or rows == stage_rows(config.sft):
        return root / f"seed{seed}" / "sft"
    return root / f"seed{seed}" / f"sft-rows{rows}"


def stage_rows(stage: StageSettings) -> int | None:
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


# ------------------------------------------------------------------------------------------------ small helpers
def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def timed(timings: dict[str, float | None], name: str):
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
    for key in ("generation_rows", "test_eval_rows"):  # None: absent from runs written before the keys existed
        if shared[key] is None:
            shared.pop(key)
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
    return json_safe(shared)


def row_ids_of(examples) -> list[str]:
    return [f"{e.row.split}:{e.row.index}" for e in examples]


def check_existing(path: Path, settings: dict[str, Any]) -> None:
    try:
        existing = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error}); delete it to run it again.") from None
    if existing.get("config") != settings:
        raise ConfigError(
            f"{path} was written with other settings than this study's (preset {existing.get('preset')!r}); "
            "choose another --output_dir, or delete the file to run it again."
        )


def run_json_paths(output_dir: str | Path) -> list[Path]:
    """The run JSONs of a study folder (`<split>/<method>/seed<seed>.json`), in path order; `checkpoints/` holds the
    models, not runs."""
    directory = Path(output_dir)
    return sorted(p for p in directory.glob("*/*/seed*.json") if p.relative_to(directory).parts[0] != "checkpoints")


def _run_jsons(output_dir: str | Path):
    """(path, run) of every run JSON of a study folder; one that is not valid JSON is left out here (`check_existing`
    reports it when its run comes up)."""
    for path in run_json_paths(output_dir):
        try:
            yield path, json.loads(path.read_text())
        except ValueError:
            continue


def check_precision(output_dir: str | Path, precision: str) -> None:
    """
    Refuse to add LM runs in `precision` to a study folder whose LM runs were trained in another one (each run JSON
    records what `bf16: auto` resolved to on its machine). A study continued on a machine without native bf16 would
    otherwise train its remaining seeds in fp32 beside seeds trained in bf16, and the table would confound precision
    with seed. Runs that predate the `precision` field, and baselines (no LM), are not compared.
    """
    others: dict[str, Path] = {}
    for path, run in _run_jsons(output_dir):
        recorded = run.get("precision")
        if recorded is not None and recorded != precision:
            others.setdefault(recorded, path)
    if others:
        found = ", ".join(f"{name} (e.g. {path})" for name, path in others.items())
        raise ConfigError(
            f"{output_dir} holds LM runs trained in {found}, and this call would train in {precision} (`bf16: "
            "auto` resolves per machine: bf16 where it is native, a bf16 GPU or a CPU with AVX512_BF16 or AMX, fp32 "
            "elsewhere). Mixing them confounds precision with seed: run the rest where the same precision is "
            "native, set `bf16` explicitly to match (`--set bf16=true`; emulated bf16 on a CPU without it is several times slower than "
            "fp32), or use another --output_dir."
        )


def compare_with_recorded_sft(
    output_dir: str | Path, directory: Path, record: dict[str, Any]
) -> dict[str, Any] | None:
    """
    How an SFT model trained again (its folder was lost, the study's run JSONs were not) compares with the one the
    study's runs used, as far as the run JSONs tell: the training losses step by step, against those recorded by the
    first `sft` run of the folder that was evaluated from the same point (`directory`, e.g. `seed0/sft-rows4096`,
    trained with the same settings). Equal losses at every step are strong evidence of the same model; a difference
    says how far the new one drifted (another CPU's rounding, say). `None` when no run recorded that point.
    """
    point = directory.parent.name, directory.name
    settings = {k: v for k, v in record["settings"].items() if k != "seed"}
    for path, run in _run_jsons(output_dir):
        recorded = Path(run.get("sft_checkpoint") or "")
        if run.get("kind") != "sft" or (recorded.parent.name, recorded.name) != point:
            continue
        used = {k: run["config"].get(k) for k in settings} | {
            "sft": {k: v for k, v in run["config"]["sft"].items() if k != "start_rows"}
        }
        if used != settings:
            continue
        then = {e["step"]: e["loss"] for e in run["log_history"] if "loss" in e}
        now = {e["step"]: e["loss"] for e in record["log_history"] if "loss" in e}
        steps = then.keys() & now.keys()
        return {
            "compared_with": path.relative_to(output_dir).as_posix(),
            "steps": len(steps),
            "steps_recorded": len(then),
            "max_abs_loss_diff": max((abs(now[s] - then[s]) for s in steps), default=None),
        }
    return None


def ranking_record(ranks: list[int], row_ids: list[str]) -> dict[str, Any]:
    from ..metrics import ranking_metrics

    rows = {"ids": row_ids, "target_rank": list(ranks), "generation_hit": None, "generation_valid": None}
    return {"metrics": {"generation": None, "ranking": ranking_metrics(ranks)}, "rows": rows}


def sitting_seconds(sittings: list[dict[str, Any]]) -> float:
    return round(sum(s["seconds"] for s in sittings), 2)


def digest(value: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(json_safe(value), sort_keys=True).encode()).hexdigest()[:10]
