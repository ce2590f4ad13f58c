"""
One-setting sweeps of S-DPO (the number of negatives k, beta): the runs that differ from the study's `sdpo` method in
that one setting only, their metrics against the setting's value, and where the curve stops improving.

The reference is the method named `sdpo` (k 3, beta 1 in the shipped studies). A run belongs to the sweep over
`num_negatives` when its method's training settings equal the reference's in everything but `num_negatives`, so a
beta variant (k 3) is not counted twice, and the reference itself sits on both curves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .analysis import (
    SUMMARY_METRICS,
    PairedComparison,
    compare_methods,
    format_interval,
    group_runs,
    mean_std,
    paired_bootstrap,
)

SWEEP_PARAMETERS = {"num_negatives": "k", "beta": "beta"}
SWEEP_METRICS = ("ranking/hr@1", "ranking/ndcg@5")
REFERENCE = "sdpo"


def _settings(run: dict[str, Any]) -> dict[str, Any] | None:
    """The method's training settings recorded in a run JSON; `None` for a run without them."""
    settings = (run["config"].get("method") or {}).get("settings")
    return dict(settings) if settings else None


def sweep_methods(runs: Iterable[dict[str, Any]], split: str, parameter: str) -> list[tuple[float, str]]:
    """
    `(value, method)` of every S-DPO method on `split` that differs from `sdpo` in `parameter` only, by value.

    Args:
        runs (`Iterable[dict]`): Runs from [`~trl_sdpo.rec.study.load_study`].
        split (`str`): The split.
        parameter (`str`): `num_negatives` or `beta`.

    Returns:
        `list[tuple[float, str]]`, empty when the split has no `sdpo` runs.
    """
    if parameter not in SWEEP_PARAMETERS:
        raise ValueError(f"Unknown sweep parameter {parameter!r}; expected one of {', '.join(SWEEP_PARAMETERS)}.")
    groups = {method: group for (s, method), group in group_runs(runs).items() if s == split}
    if REFERENCE not in groups:
        return []
    reference = _settings(groups[REFERENCE][0])
    if reference is None:
        return []
    found = []
    for method, group in groups.items():
        settings = _settings(group[0])
        if group[0]["kind"] != "sdpo" or settings is None:
            continue
        others = {k: v for k, v in settings.items() if k != parameter}
        if others == {k: v for k, v in reference.items() if k != parameter}:
            found.append((settings[parameter], method))
    values = [value for value, _ in found]
    if len(values) != len(set(values)):
        raise ValueError(f"Two methods on {split} share a value of {parameter}: {sorted(found)}.")
    return sorted(found)


def sweep_table(
    runs: Iterable[dict[str, Any]], split: str, parameter: str, metrics: Sequence[str] = SWEEP_METRICS
) -> list[dict[str, Any]]:
    """
    Mean ± sample std over seeds of `metrics` (and training seconds) per value of `parameter`.

    Returns:
        `list[dict]` by value: `"value"`, `"method"`, `"seeds"`, each metric as `(mean, std)`, `"time/train"`.
    """
    runs = list(runs)
    groups = {method: group for (s, method), group in group_runs(runs).items() if s == split}
    sections = {key: (section, name) for key, section, name in SUMMARY_METRICS}
    table = []
    for value, method in sweep_methods(runs, split, parameter):
        group = groups[method]
        entry: dict[str, Any] = {"value": value, "method": method, "seeds": [r["seed"] for r in group]}
        for metric in metrics:
            section, name = sections[metric]
            entry[metric] = mean_std([(r["metrics"].get(section) or {}).get(name) for r in group])
        entry["time/train"] = mean_std([r["timings_s"].get("train") for r in group])
        table.append(entry)
    return table


def sweep_comparisons(
    runs: Iterable[dict[str, Any]],
    split: str,
    parameter: str,
    metrics: Sequence[str] = SWEEP_METRICS,
    n_boot: int = 10000,
    seed: int = 0,
) -> list[PairedComparison]:
    """Each value of the sweep minus the one below it, paired by eval row and seed (see `paired_bootstrap`)."""
    runs = list(runs)
    methods = [method for _, method in sweep_methods(runs, split, parameter)]
    pairs = list(zip(methods[1:], methods))
    return compare_methods(runs, split, pairs=pairs, metrics=metrics, n_boot=n_boot, seed=seed)


def describe_sweep(
    runs: Iterable[dict[str, Any]],
    split: str,
    parameter: str,
    metric: str = "ranking/hr@1",
    n_boot: int = 10000,
    seed: int = 0,
) -> str:
    """
    Where the curve of `metric` over `parameter` stops improving, in words, from paired comparisons with the best
    value: the smallest value whose paired interval against the best (highest mean) includes 0, and whether any value
    is better than the smallest one by an interval that excludes 0.
    """
    runs = list(runs)
    table = sweep_table(runs, split, parameter, metrics=(metric,))
    name = SWEEP_PARAMETERS[parameter]
    if len(table) < 2:
        return f"The {name} sweep on {split} has {len(table)} value(s): nothing to compare."
    best = max(table, key=lambda e: e[metric][0])
    lowest = table[0]
    lines = [
        f"{metric} on {split}: best mean at {name} = {best['value']:g} ({best[metric][0]:.4f}, "
        f"{len(best['seeds'])} seed{'s' if len(best['seeds']) != 1 else ''})."
    ]
    plateau = None
    for entry in table:
        if entry is best:
            plateau = plateau or entry
            break
        c = paired_bootstrap(runs, split, best["method"], entry["method"], metric, n_boot=n_boot, seed=seed)
        if not c.excludes_zero and plateau is None:
            plateau = entry
    assert plateau is not None
    lines.append(
        f"Smallest {name} not worse than the best by a paired 95% interval: {name} = {plateau['value']:g}"
        + (" (the curve is flat from there on, within this study's resolution)." if plateau is not best else ".")
    )
    if best is not lowest:
        c = paired_bootstrap(runs, split, best["method"], lowest["method"], metric, n_boot=n_boot, seed=seed)
        verdict = "excludes 0" if c.excludes_zero else "includes 0: no value is shown better than the smallest"
        lines.append(
            f"Best minus {name} = {lowest['value']:g}: {c.mean_diff:+.4f}, 95% CI {format_interval(c.ci_low, c.ci_high)}"
            f" ({verdict}); per seed "
            + (
                f"{c.seed_mean:+.4f} (one seed)."
                if math.isnan(c.seed_sigma)
                else f"{c.seed_mean:+.4f} ± {c.seed_sigma:.4f}."
            )
        )
    else:
        lines.append(f"The smallest {name} has the best mean: more is not shown to help here.")
    return "\n".join(lines)
