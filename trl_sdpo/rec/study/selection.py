"""
Choosing settings on the validation split: a rule fixed in the study file before any run, applied to the run JSONs.

The MovieLens study runs each preference method (`sft-continued`, `dpo`, `sdpo`) at its default settings and as named
variants (e.g. `sdpo-lr1e-4`, `kind: sdpo`) on `valid`; each kind then keeps the variant with the best mean of one
metric, and only that setting is run on `test`. A tie keeps the default (the method named after its kind); among
variants alone (the `study` preset runs no default on valid), a tie keeps the lower learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .analysis import summary_table
from .config import PREFERENCE_KINDS


def select_variants(
    runs: Iterable[dict[str, Any]],
    split: str = "valid",
    metric: str = "ranking/ndcg@5",
    kinds: Sequence[str] = PREFERENCE_KINDS,
) -> dict[str, dict[str, Any]]:
    """
    For each kind, the method with the highest mean `metric` over seeds on `split`.

    Args:
        runs (`Iterable[dict]`): Runs from [`~trl_sdpo.rec.study.load_study`].
        split (`str`, *optional*, defaults to `"valid"`): Where settings are chosen.
        metric (`str`, *optional*, defaults to `"ranking/ndcg@5"`): A key of `SUMMARY_METRICS`.
        kinds (`Sequence[str]`, *optional*): The kinds to choose for.

    Returns:
        `dict` kind -> `{"method": chosen method, "value": its mean, "candidates": {method: mean}, "learning_rate":
        the chosen method's learning rate (from its run's config) or None}`; kinds without runs on `split` are left out.
    """
    runs = list(runs)
    table = summary_table(runs, split)
    rates = {run["method"]: learning_rate_of(run) for run in runs if run["split"] == split}
    chosen: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        entries = [entry for entry in table if entry["kind"] == kind]
        if not entries:
            continue
        # the highest mean; among equal means the default setting (the method named after its kind) wins, then the
        # lower learning rate (a variant without one counts as the highest)
        best = max(entries, key=lambda entry, kind=kind: _rank(entry, metric, kind, rates))
        chosen[kind] = {
            "method": best["method"],
            "value": best[metric][0],
            "candidates": {entry["method"]: entry[metric][0] for entry in entries},
            "learning_rate": rates.get(best["method"]),
        }
    return chosen


def _rank(entry: dict[str, Any], metric: str, kind: str, rates: dict[str, float | None]) -> tuple[float, bool, float]:
    rate = rates.get(entry["method"])
    return entry[metric][0], entry["method"] == kind, -rate if rate is not None else -math.inf


def learning_rate_of(run: dict[str, Any]) -> float | None:
    """The learning rate a run's method set (its `settings`), or None when it kept the stage's."""
    return ((run["config"].get("method") or {}).get("settings") or {}).get("learning_rate")
