"""
Analysis of an experiment study: load the run JSONs, aggregate over seeds, paired bootstrap, and the claim check.

A study folder holds one JSON per (split, method, seed) at `<dir>/<split>/<method>/seed<seed>.json` (schema 1, written
by `trl_sdpo.rec.study.runner`). Every method of a split is evaluated on the same rows, so methods are compared row by
row: per-row values come from `rows.target_rank` and `rows.generation_hit`, never from the aggregate metrics alone.
Pure Python and numpy; the plots (`trl_sdpo.rec.study.plots`) import matplotlib on use.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import BASELINE_KINDS, LM_KINDS
from .records import run_json_paths

SCHEMA = 1
# Table order: the LM stages in training order, then variants (sorted), then the baselines without an LM.
LM_METHODS = LM_KINDS
BASELINE_METHODS = BASELINE_KINDS
KINDS = LM_METHODS + BASELINE_METHODS
# (key in the tables, section of "metrics", key in that section)
SUMMARY_METRICS = (
    ("generation/hr@1", "generation", "hr@1"),
    ("generation/valid_ratio", "generation", "valid_ratio"),
    ("ranking/hr@1", "ranking", "hr@1"),
    ("ranking/hr@5", "ranking", "hr@5"),
    ("ranking/ndcg@5", "ranking", "ndcg@5"),
    ("ranking/mrr", "ranking", "mrr"),
)
ROW_METRICS = tuple(key for key, _, _ in SUMMARY_METRICS)
# The comparisons the claim names (`trl_sdpo.rec.study.claims`): (a, b) read as "a minus b".
COMPARISONS = (("sdpo", "dpo"), ("sdpo", "sft-continued"), ("dpo", "sft-continued"))
CLAIM_METRICS = ("ranking/hr@1", "ranking/ndcg@5")
_REQUIRED = ("schema", "study", "preset", "method", "kind", "seed", "split", "config", "metrics", "rows", "timings_s")


# ------------------------------------------------------------------------------------------------------------ loading
def _check_run(run: dict[str, Any], path: Path) -> None:
    """Raise `ValueError` naming the file and the field when `run` does not follow schema 1 or contradicts itself."""
    missing = [key for key in _REQUIRED if key not in run]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (run JSON schema {SCHEMA}).")
    if run["schema"] != SCHEMA:
        raise ValueError(f"{path}: 'schema' is {run['schema']!r}; this version reads schema {SCHEMA}.")
    if run["kind"] not in KINDS:
        raise ValueError(f"{path}: 'kind' is {run['kind']!r}; expected one of {list(KINDS)}.")
    split, method, name = path.parts[-3:]
    if (run["split"], run["method"], f"seed{run['seed']}.json") != (split, method, name):
        raise ValueError(
            f"{path}: the file says split={run['split']!r}, method={run['method']!r}, seed={run['seed']!r}, "
            f"which does not match its place <dir>/{split}/{method}/{name}."
        )
    for key in ("config", "metrics", "rows", "timings_s"):
        if not isinstance(run[key], dict):
            raise ValueError(f"{path}: '{key}' must be a JSON object, got {type(run[key]).__name__}.")
    rows = run["rows"]
    for key in ("ids", "target_rank"):
        if not isinstance(rows.get(key), list):
            raise ValueError(f"{path}: 'rows.{key}' must be a list.")
    n = len(rows["ids"])
    if len(set(rows["ids"])) != n:
        raise ValueError(f"{path}: 'rows.ids' has duplicates.")
    for key in ("target_rank", "generation_hit", "generation_valid"):
        values = rows.get(key)
        # Generation may cover the first rows only (a study's `generation_rows`)
        if values is not None and (len(values) > n if key.startswith("generation") else len(values) != n):
            raise ValueError(f"{path}: 'rows.{key}' has {len(values)} entries for {n} row ids.")
    if any(not isinstance(r, int) or r < 1 for r in rows["target_rank"]):
        raise ValueError(f"{path}: 'rows.target_rank' must hold 1-based integer ranks.")
    for key in ("generation_hit", "generation_valid"):
        if rows.get(key) is not None and any(v not in (0, 1) for v in rows[key]):
            raise ValueError(f"{path}: 'rows.{key}' must hold 0/1 values.")
    # The aggregate metrics must be what the per-row data says: the paired tests use the rows, the tables the metrics.
    for metric, section, key in SUMMARY_METRICS:
        reported = (run["metrics"].get(section) or {}).get(key)
        if reported is None:
            continue
        values = row_values(run, metric)
        if values is None:
            raise ValueError(f"{path}: 'metrics.{section}.{key}' is reported but the per-row data for it is null.")
        if abs(float(np.mean(values)) - reported) > 1e-9:
            raise ValueError(
                f"{path}: 'metrics.{section}.{key}' = {reported} but the per-row data gives {float(np.mean(values))}."
            )


def load_run(path: str | Path) -> dict[str, Any]:
    """
    Read and check one run JSON.

    Args:
        path (`str` or `Path`): `<dir>/<split>/<method>/seed<seed>.json`.

    Returns:
        `dict[str, Any]`: the run, with `"path"` (a `str`) added.
    """
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(run, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level.")
    _check_run(run, path)
    run["path"] = str(path)
    return run


def load_study(directory: str | Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """
    Load and check every run JSON of a study folder (`<directory>/<split>/<method>/seed<seed>.json`).

    Args:
        directory (`str` or `Path`): The study's output folder.
        missing_ok (`bool`, *optional*, defaults to `False`): Return `[]` for a missing folder or one without runs
            (a study that has not started) instead of raising.

    Returns:
        `list[dict]`: the runs sorted by split, method and seed. Raises `FileNotFoundError` when the folder does not
        exist or holds no run JSON, and `ValueError` when two runs of one (split, method) come from different
        presets (averaging them would mix two experiments).
    """
    directory = Path(directory)
    paths = run_json_paths(directory)
    if not paths:
        if missing_ok:
            return []
        if not directory.is_dir():
            raise FileNotFoundError(f"Study folder {directory} does not exist.")
        raise FileNotFoundError(f"No run JSON (<split>/<method>/seed<seed>.json) under {directory}.")
    runs = [load_run(p) for p in paths]
    for (split, method), group in group_runs(runs).items():
        presets = {run["preset"] for run in group}
        if len(presets) > 1:
            raise ValueError(f"{directory}/{split}/{method}: runs from several presets {sorted(presets)}.")
    return sorted(runs, key=lambda r: (r["split"], method_order(r["method"], r["kind"]), r["seed"]))


def method_order(method: str, kind: str | None = None) -> tuple[int, str]:
    """Sort key: the LM stages in training order, then their variants, then the baselines."""
    if method in LM_METHODS:
        return (LM_METHODS.index(method), method)
    if method in BASELINE_METHODS:
        return (100 + BASELINE_METHODS.index(method), method)
    return (50 if kind not in BASELINE_METHODS else 150, method)


def group_runs(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The runs grouped by `(split, method)`, each group sorted by seed, groups in table order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["split"], run["method"]), []).append(run)
    kinds = {key: group[0]["kind"] for key, group in groups.items()}
    ordered = sorted(groups, key=lambda key: (key[0], method_order(key[1], kinds[key])))
    return {key: sorted(groups[key], key=lambda r: r["seed"]) for key in ordered}


def splits(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The splits present, `valid` before `test`."""
    order = {"train": 0, "valid": 1, "test": 2}
    return sorted({run["split"] for run in runs}, key=lambda s: (order.get(s, 3), s))


def runs_of(runs: Iterable[dict[str, Any]], split: str, method: str) -> list[dict[str, Any]]:
    """The runs of one method on one split, sorted by seed."""
    return sorted((r for r in runs if r["split"] == split and r["method"] == method), key=lambda r: r["seed"])


def missing_runs(runs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """
    The (method, seed) runs a study's table still lacks. A study still running over several sittings is not the
    experiment's result yet: every method needs every seed, except a model evaluated once for all of them: the base
    model (`"seed_independent"`) and an SFT model every seed's preference stage starts from (its seed is the
    `sft_seed` the preference runs of other seeds record).

    Args:
        runs (`list[dict]`):
            Run JSONs of one split, as [`load_study`] reads them.

    Returns:
        `list[tuple[str, int]]`: The missing (method, seed) pairs, by method then seed; empty when the table is whole.
    """
    seeds = sorted({run["seed"] for run in runs})
    done = {(run["method"], run["seed"]) for run in runs}
    shared_sft = {run["config"].get("sft_seed") for run in runs} - {None}
    once = {
        run["method"]
        for run in runs
        if run.get("seed_independent") or (run["kind"] == "sft" and run["seed"] in shared_sft)
    }
    return [
        (method, seed)
        for method in sorted({m for m, _ in done} - once)
        for seed in seeds
        if (method, seed) not in done
    ]


# ------------------------------------------------------------------------------------------------ per-row and summary
def row_values(run: dict[str, Any], metric: str) -> np.ndarray | None:
    """
    The per-row value of `metric` in one run (float64), or `None` when the run has no data for it.

    Args:
        run (`dict`): A run JSON.
        metric (`str`): `ranking/hr@1` (rank == 1), `ranking/hr@5` (rank <= 5), `ranking/ndcg@5` (1 / log2(rank + 1)
            for rank <= 5, else 0), `ranking/mrr` (1 / rank), `generation/hr@1` (`rows.generation_hit`) or
            `generation/valid_ratio` (`rows.generation_valid`).
    """
    rows = run["rows"]
    if metric.startswith("generation/"):
        key = {"generation/hr@1": "generation_hit", "generation/valid_ratio": "generation_valid"}.get(metric)
        if key is None:
            raise ValueError(f"Unknown metric {metric!r}; expected one of {list(ROW_METRICS)}.")
        return None if rows.get(key) is None else np.asarray(rows[key], dtype=np.float64)
    ranks = np.asarray(rows["target_rank"], dtype=np.float64)
    if metric == "ranking/hr@1":
        return (ranks == 1).astype(np.float64)
    if metric == "ranking/hr@5":
        return (ranks <= 5).astype(np.float64)
    if metric == "ranking/ndcg@5":
        return np.where(ranks <= 5, 1.0 / np.log2(ranks + 1.0), 0.0)
    if metric == "ranking/mrr":
        return 1.0 / ranks
    raise ValueError(f"Unknown metric {metric!r}; expected one of {list(ROW_METRICS)}.")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2 values) of `values`."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan


def format_mean_std(pair: tuple[float, float], digits: int = 4, signed: bool = False) -> str:
    """`"0.1234 ± 0.0100"` (`"+0.1234 ± 0.0100"` if `signed`: a difference); `"—"` for a metric the method does not
    have; no `±` part for a single seed (its standard deviation is NaN)."""
    mean, std = pair
    if math.isnan(mean):
        return "—"
    text = f"{mean:{'+' if signed else ''}.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def format_interval(low: float, high: float) -> str:
    """`"[-0.0123, +0.0456]"`, or `"—"` for an interval that cannot be computed (NaN: a seed-level interval over one
    seed), so that a partial table does not print `[+nan, +nan]`."""
    if math.isnan(low) or math.isnan(high):
        return "—"
    return f"[{low:+.4f}, {high:+.4f}]"


STAGES = ("train", "eval_generation", "eval_ranking", "eval_other_lists")


def stage_seconds(run: dict[str, Any]) -> float | None:
    """
    Wall seconds of a run's own stages: its training over every sitting, whichever call ran it, and its evaluations.

    Not the call's `timings_s["total"]`, which holds what that one call did: only the last sitting of a resumed run,
    none of the training of a model trained in an earlier call (on the other split), and for a seed's first run the
    reference log-probs its methods share. A baseline's scoring is not timed as a stage of its own: a run without a
    timed evaluation (the baselines, never resumed) counts its `total`.

    Returns:
        `float` or `None` where nothing was timed.
    """
    timings = run["timings_s"]
    if all(timings.get(stage) is None for stage in STAGES[1:]):
        return timings.get("total")
    return round(sum(timings.get(stage) or 0.0 for stage in STAGES), 2)


# How long after its call's last timed second a run JSON can be written: a sitting that starts within this margin
# before a call's recorded span is taken to be that call's own.
_CALL_MARGIN_S = 120.0


def machine_seconds(runs: Iterable[dict[str, Any]]) -> dict[str, float]:
    """
    What the machine spent on `runs`, from their JSONs alone: the wall time of every call that wrote a run
    (`timings_s["total"]`; a seed-independent result once per split), plus every training sitting (SFT or preference)
    of their models that ran outside all of those calls (in a call cut short and resumed later, or in the call of a
    run not among `runs` whose model they reuse), each sitting counted once however many runs record it. A sitting
    inside a call is already in that call's time: an SFT model trained by the call of the first method that needed it,
    or a valid-trained model that a `test` run only evaluates.

    Not in it: what a cut call spent before its trainer's sitting began (loading the model and data).

    Returns:
        `dict` with `"calls"`, `"other_sittings"` and `"total"`, in seconds.
    """
    spans, sittings, seen = [], {}, set()
    calls = 0.0
    for run in runs:
        if run.get("seed_independent"):
            if (run["split"], run["method"]) in seen:
                continue
            seen.add((run["split"], run["method"]))
        total = run["timings_s"].get("total") or 0.0
        end = datetime.datetime.fromisoformat(run["created"])
        spans.append((end - datetime.timedelta(seconds=total + _CALL_MARGIN_S), end))
        calls += total
        for sitting in (run.get("sittings") or []) + (run.get("sft_sittings") or []):
            sittings[(sitting["started"], sitting.get("resumed_from"))] = sitting
    cut = sum(
        sitting["seconds"]
        for sitting in sittings.values()
        if not any(start <= datetime.datetime.fromisoformat(sitting["started"]) <= end for start, end in spans)
    )
    return {"calls": round(calls, 1), "other_sittings": round(cut, 1), "total": round(calls + cut, 1)}


def summary_table(runs: Iterable[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """
    Mean and sample standard deviation over seeds of each method's metrics on one split.

    Args:
        runs (`Iterable[dict]`): Runs from [`load_study`].
        split (`str`): `valid` or `test`.

    Returns:
        `list[dict]`, one per method in table order, with `"method"`, `"kind"`, `"preset"`, `"seeds"` (list),
        `"n_seeds"` (1 for a seed-independent method, whose one result every seed's JSON repeats),
        `"seed_independent"`, and for each metric of `SUMMARY_METRICS` and `"time/total"` (wall seconds of the run's own
        stages, [`stage_seconds`]) a `(mean, std)` pair; `(nan, nan)` where the method has no such metric (baselines
        do not generate).
    """
    table = []
    for (run_split, method), group in group_runs(runs).items():
        if run_split != split:
            continue
        # A seed-independent method (base) is evaluated once and its result copied to every seed: one value, no std.
        independent = all(run.get("seed_independent") for run in group)
        counted = group[:1] if independent else group
        entry: dict[str, Any] = {
            "method": method,
            "kind": group[0]["kind"],
            "preset": group[0]["preset"],
            "seeds": [run["seed"] for run in group],
            "n_seeds": len(counted),
            "seed_independent": independent,
        }
        for metric, section, key in SUMMARY_METRICS:
            entry[metric] = mean_std([(run["metrics"].get(section) or {}).get(key) for run in counted])
        entry["time/total"] = mean_std([stage_seconds(run) for run in counted])
        table.append(entry)
    return table


# ---------------------------------------------------------------------------------------------------- paired tests
@dataclass
class PairedComparison:
    """
    `a` minus `b` on one metric and split, paired by eval row and seed.

    Args:
        a, b (`str`): Methods compared (`a - b`).
        metric (`str`): One of `ROW_METRICS`.
        split (`str`): The split.
        seeds (`list[int]`): Seeds present for both methods.
        n_rows (`int`): Eval rows.
        mean_diff (`float`): Mean over rows of the per-row difference averaged over `seeds`.
        ci_low, ci_high (`float`): 95% percentile bootstrap interval of `mean_diff` (rows resampled).
        per_seed_diff (`dict[int, float]`): Mean difference on each seed.
        seed_mean, seed_sigma (`float`): Mean and sample std (ddof=1) of `per_seed_diff`; NaN sigma for one seed.
    """

    a: str
    b: str
    metric: str
    split: str
    seeds: list[int]
    n_rows: int
    mean_diff: float
    ci_low: float
    ci_high: float
    per_seed_diff: dict[int, float] = field(default_factory=dict)
    seed_mean: float = math.nan
    seed_sigma: float = math.nan

    @property
    def excludes_zero(self) -> bool:
        """Whether the 95% interval lies entirely on one side of 0."""
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def beyond_2_sigma(self) -> bool:
        """Whether the seed-mean difference is above 2 seed-sigma (False with fewer than 2 seeds)."""
        return not math.isnan(self.seed_sigma) and self.seed_mean > 2 * self.seed_sigma


def check_same_rows(*runs: dict[str, Any]) -> None:
    """Raise `ValueError` unless every run was evaluated on the first one's rows, in the same order."""
    ids = runs[0]["rows"]["ids"]
    for run in runs[1:]:
        other = run["rows"]["ids"]
        if other != ids:
            where = next((i for i, (x, y) in enumerate(zip(ids, other)) if x != y), min(len(ids), len(other)))
            raise ValueError(
                f"Row ids differ between {runs[0]['path']} and {run['path']} (first at position {where}; "
                f"{len(ids)} vs {len(other)} rows): a paired comparison needs the same eval rows in the same order."
            )


def _paired_matrix(runs: list[dict[str, Any]], split: str, a: str, b: str, metric: str):
    runs_a = {r["seed"]: r for r in runs_of(runs, split, a)}
    runs_b = {r["seed"]: r for r in runs_of(runs, split, b)}
    for method, found in ((a, runs_a), (b, runs_b)):
        if not found:
            raise ValueError(f"No runs of method {method!r} on split {split!r}.")
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        raise ValueError(
            f"{a!r} (seeds {sorted(runs_a)}) and {b!r} (seeds {sorted(runs_b)}) share no seed on {split}."
        )
    check_same_rows(*(run for seed in seeds for run in (runs_a[seed], runs_b[seed])))
    values_a, values_b = [], []
    for seed in seeds:
        va, vb = row_values(runs_a[seed], metric), row_values(runs_b[seed], metric)
        if va is None or vb is None:
            missing = runs_a[seed] if va is None else runs_b[seed]
            raise ValueError(f"{missing['path']} has no per-row data for {metric!r}.")
        values_a.append(va)
        values_b.append(vb)
    return seeds, np.stack(values_a), np.stack(values_b)


def bootstrap_interval(per_row: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """
    95% percentile interval of the mean of `per_row`, the rows resampled with replacement `n_boot` times.

    Args:
        per_row (`np.ndarray`): One value per eval row (for a paired comparison, the per-row difference).
        n_boot (`int`, *optional*, defaults to `10000`): Bootstrap resamples.
        seed (`int`, *optional*, defaults to `0`): Seed of the resampling.

    Returns:
        `(low, high)`: the 2.5th and 97.5th percentiles of the resampled means.
    """
    n = per_row.size
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(n, 1))  # bounded memory: chunk x n indices at a time
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        boot[start:stop] = per_row[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap(
    runs: Iterable[dict[str, Any]],
    split: str,
    a: str,
    b: str,
    metric: str,
    n_boot: int = 10000,
    seed: int = 0,
) -> PairedComparison:
    """
    Paired bootstrap of `a - b` on `metric` over the eval rows of `split`.

    Per row, the metric is averaged over the seeds that both methods ran (paired by row id and seed); the rows are
    resampled with replacement `n_boot` times and the 2.5th and 97.5th percentiles of the resampled mean difference
    form the interval. The per-seed differences give the seed-to-seed spread (seed-sigma) beside it.

    Args:
        runs (`Iterable[dict]`): Runs from [`load_study`].
        split (`str`): The split.
        a, b (`str`): The methods (`a - b`).
        metric (`str`): One of `ROW_METRICS`.
        n_boot (`int`, *optional*, defaults to `10000`): Bootstrap resamples.
        seed (`int`, *optional*, defaults to `0`): Seed of the resampling.

    Returns:
        [`PairedComparison`]. Raises `ValueError` when a method has no runs, the two share no seed, or the row ids
        of any two runs differ.
    """
    runs = list(runs)
    seeds, values_a, values_b = _paired_matrix(runs, split, a, b, metric)
    per_row = (values_a - values_b).mean(axis=0)
    n = per_row.size
    low, high = bootstrap_interval(per_row, n_boot=n_boot, seed=seed)
    per_seed = {s: float(d) for s, d in zip(seeds, (values_a - values_b).mean(axis=1))}
    seed_mean, seed_sigma = mean_std(list(per_seed.values()))
    return PairedComparison(
        a=a,
        b=b,
        metric=metric,
        split=split,
        seeds=seeds,
        n_rows=n,
        mean_diff=float(per_row.mean()),
        ci_low=float(low),
        ci_high=float(high),
        per_seed_diff=per_seed,
        seed_mean=seed_mean,
        seed_sigma=seed_sigma,
    )


def run_difference(
    a: dict[str, Any], b: dict[str, Any], metric: str, n_boot: int = 10000, seed: int = 0
) -> dict[str, Any] | None:
    """
    `a - b` on `metric` for two single runs (any methods, seeds or folders), paired by eval row: what
    [`paired_bootstrap`] gives for one seed, for runs it cannot pair by method and seed (two seeds of one method, two
    precisions of one run).

    Returns:
        `{"a", "b", "diff", "ci95", "rows"}` (the means, their difference and its 95% bootstrap interval), or `None`
        when either run has no per-row data for `metric`. Raises `ValueError` when the row ids differ.
    """
    check_same_rows(a, b)
    va, vb = row_values(a, metric), row_values(b, metric)
    if va is None or vb is None:
        return None
    low, high = bootstrap_interval(va - vb, n_boot=n_boot, seed=seed)
    return {"a": float(va.mean()), "b": float(vb.mean()), "diff": float((va - vb).mean()), "ci95": [low, high],
            "rows": int(va.size)}  # fmt: skip


def rank_agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """
    How alike two runs rank each row's target among its candidates (rank 1 = first), paired by eval row: the share
    of rows at the same rank, within one place, the mean absolute difference of the ranks and their correlation.
    Raises `ValueError` when the row ids differ.
    """
    check_same_rows(a, b)
    ra, rb = (np.asarray(run["rows"]["target_rank"], dtype=np.float64) for run in (a, b))
    gap = np.abs(ra - rb)
    return {
        "rows": int(gap.size),
        "same_rank": float((gap == 0).mean()),
        "within_one": float((gap <= 1).mean()),
        "mean_abs_rank_diff": float(gap.mean()),
        "rank_correlation": float(np.corrcoef(ra, rb)[0, 1]),
    }


def compare_methods(
    runs: Iterable[dict[str, Any]],
    split: str,
    pairs: Sequence[tuple[str, str]] = COMPARISONS,
    metrics: Sequence[str] = CLAIM_METRICS,
    n_boot: int = 10000,
    seed: int = 0,
) -> list[PairedComparison]:
    """
    Paired comparisons `a - b` of `pairs` on each metric; by default the ones the claim names (S-DPO - DPO,
    S-DPO - SFT-continued, DPO - SFT-continued). The sweeps and the other-lists comparisons pass their own pairs.

    Pairs whose methods have no runs on `split` are left out (the claim check reports them as not run).

    Returns:
        `list[PairedComparison]` in the order of `pairs`, then `metrics`.
    """
    runs = list(runs)
    return [
        paired_bootstrap(runs, split, a, b, metric, n_boot=n_boot, seed=seed)
        for a, b in pairs
        if shared_seeds(runs, split, a, b)
        for metric in metrics
    ]


def shared_seeds(runs: Iterable[dict[str, Any]], split: str, a: str, b: str) -> list[int]:
    """The seeds at which both `a` and `b` have a run on `split`: what [`paired_bootstrap`] can pair. Empty when either
    is missing, or when a study part-way holds them at different seeds only."""
    seeds: dict[str, set[int]] = {a: set(), b: set()}
    for r in runs:
        if r["split"] == split and r["method"] in seeds:
            seeds[r["method"]].add(r["seed"])
    return sorted(seeds[a] & seeds[b])


# ------------------------------------------------------------------------------------------ other candidate lists
def other_list_samplers(runs: Iterable[dict[str, Any]]) -> list[str]:
    """The samplers whose lists some run was also evaluated on (`other_lists`, from `extra_eval_samplers`)."""
    return sorted({sampler for run in runs for sampler in (run.get("other_lists") or {})})


def runs_on_other_lists(runs: Iterable[dict[str, Any]], sampler: str) -> list[dict[str, Any]]:
    """
    The runs as evaluated on `sampler`'s candidate lists (same model, same eval rows), renamed `<method>@<sampler>`
    so that they sit beside the originals in one list of runs: `summary_table` gives their table and
    `paired_bootstrap(runs + these, split, "sdpo@sdpo-compat", "sdpo", metric)` what the lists change, row by row.
    """
    out = []
    for run in runs:
        other = (run.get("other_lists") or {}).get(sampler)
        if other is None:
            continue
        method = f"{run['method']}@{sampler}"
        out.append({**run, "method": method, "metrics": other["metrics"], "rows": other["rows"], "other_lists": {}})
    return out


def compare_lists(
    runs: Iterable[dict[str, Any]],
    split: str,
    sampler: str,
    metrics: Sequence[str] = CLAIM_METRICS,
    n_boot: int = 10000,
    seed: int = 0,
) -> list[PairedComparison]:
    """Per method evaluated on both: `<method>@<sampler>` minus `<method>` (the other lists minus the study's own)."""
    runs = list(runs)
    others = runs_on_other_lists(runs, sampler)
    pairs = [(m, m.rsplit("@", 1)[0]) for (s, m) in group_runs(others) if s == split]
    return compare_methods(runs + others, split, pairs=pairs, metrics=metrics, n_boot=n_boot, seed=seed)
