"""
The SFT learning curve of a study and the rule that picks the SFT model the preference stage starts from.

A study with `sft.curve_rows` evaluates methods of kind `sft` with `sft_rows` (one per curve point) on `valid`. The
rule, fixed before the curve is looked at so that the pick cannot follow the outcome: walk the points in order; the
pick is the first point whose successor does not beat it on valid ranking NDCG@5 with a paired 95% interval above 0.
If every point beats the one before, the last point. `sft.start_rows: auto` applies it when the preference stage
runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .analysis import format_interval, paired_bootstrap

CURVE_METRIC = "ranking/ndcg@5"
RULE = (
    "the first curve point whose successor does not beat it on valid ranking NDCG@5 with a paired 95% interval "
    "above 0; the last point if each one does"
)


@dataclass
class CurvePick:
    """
    The outcome of the rule on a study's curve runs.

    Args:
        rows (`int` or `None`): The picked point (rows seen); `None` while undecided.
        method (`str` or `None`): The method that evaluated it.
        decided (`bool`): Whether the evaluated points decide the rule.
        next_rows (`int` or `None`): The next point to evaluate when undecided.
        steps (`list[dict]`): Per consecutive pair: `from`, `to` (rows), `diff`, `ci_low`, `ci_high`, `improves`.
        rule (`str`): The rule in words.
    """

    rows: int | None
    method: str | None
    decided: bool
    next_rows: int | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    rule: str = RULE

    def describe(self) -> str:
        lines = [
            f"{s['from']} -> {s['to']} rows: NDCG@5 {s['diff']:+.4f} {format_interval(s['ci_low'], s['ci_high'])}"
            + (" improves" if s["improves"] else " does not improve")
            for s in self.steps
        ]
        if self.decided:
            head = f"SFT point picked on valid: {self.rows} rows ({self.method}); rule: {self.rule}."
        else:
            head = f"Not decided yet: evaluate the point after {self.next_rows} rows next; rule: {self.rule}."
        return "\n".join([head, *lines])


def curve_points(runs: Iterable[dict[str, Any]], split: str = "valid") -> list[tuple[int, str]]:
    """The evaluated SFT curve points of `split`: `(rows, method)` sorted by rows, one method per point."""
    points = {}
    for run in runs:
        sft_rows = ((run.get("config") or {}).get("method") or {}).get("sft_rows")
        if run["split"] == split and run["kind"] == "sft" and sft_rows is not None:
            points.setdefault(int(sft_rows), run["method"])
    return sorted(points.items())


def pick_sft_point(
    runs: Iterable[dict[str, Any]],
    planned: Sequence[int] | None = None,
    split: str = "valid",
    metric: str = CURVE_METRIC,
    n_boot: int = 10000,
    seed: int = 0,
) -> CurvePick:
    """
    Apply the rule (module docstring) to the curve runs of `split`.

    Args:
        runs (`Iterable[dict]`): Runs from [`~trl_sdpo.rec.study.load_study`].
        planned (`Sequence[int]`, *optional*): The study's `sft.curve_rows`: the last point counts as the end only
            when it is the last planned one (otherwise a later point may still improve). Defaults to the points run.
        split (`str`, *optional*, defaults to `"valid"`), metric (`str`, *optional*): Where and on what.
        n_boot (`int`, *optional*, defaults to `10000`), seed (`int`, *optional*, defaults to `0`): Bootstrap.

    Returns:
        [`CurvePick`].
    """
    runs = list(runs)
    points = curve_points(runs, split)
    planned = list(planned) if planned is not None else [rows for rows, _ in points]
    evaluated = dict(points)
    steps = []
    for earlier, later in zip(planned, planned[1:]):
        if earlier not in evaluated:
            return CurvePick(None, None, False, earlier, steps)
        if later not in evaluated:
            return CurvePick(None, None, False, later, steps)
        c = paired_bootstrap(runs, split, evaluated[later], evaluated[earlier], metric, n_boot=n_boot, seed=seed)
        improves = c.ci_low > 0
        steps.append(
            {
                "from": earlier,
                "to": later,
                "diff": c.mean_diff,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "improves": improves,
            }
        )
        if not improves:
            return CurvePick(earlier, evaluated[earlier], True, None, steps)
    if not planned or planned[-1] not in evaluated:
        first = planned[0] if planned else None
        return CurvePick(None, None, False, first, steps)
    return CurvePick(planned[-1], evaluated[planned[-1]], True, None, steps)
