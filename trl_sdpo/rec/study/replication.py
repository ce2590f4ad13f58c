"""
Orderings judged with whole training runs as the replicates: a seed-level analysis beside the row-level one.

A study whose seeds are pipeline seeds (each seed trains its own SFT model and the preference stage of that seed
starts from it) can say whether a difference between two methods replicates across training runs, not only across
eval rows. For each ordering `a > b` on a metric, over the seeds both methods ran:

- row level: the paired bootstrap over eval rows of the per-row difference averaged over the seeds
  ([`~trl_sdpo.rec.study.analysis.paired_bootstrap`]); rows are the replicates.
- seed level: the per-seed paired differences `d_s` (mean over the rows of seed `s`), their Student t-interval on
  `n - 1` degrees of freedom, and a two-level bootstrap (seeds resampled, then rows within each drawn seed); training
  runs are the replicates.

Every seed is evaluated on the same rows, so the t-interval measures how much the difference moves from one
training run to the next *on these rows*: the noise of the row sample is common to all seeds and left out of it,
while the row-level interval holds the models fixed. An ordering therefore holds only when both exclude 0. The
two-level bootstrap, which draws both, is reported beside them (with 3 seeds its resampling sees only 3 values of
the seed-to-seed spread, so it does not decide).

The verdict of an ordering (the rule is fixed before the runs it judges):

| verdict | when |
|---|---|
| not tested (the preference stage did not move the model) | a preference method of the ordering failed the held-out movement rule of `trl_sdpo.rec.study.claims.movement` |
| not tested (runs missing) | fewer than `min_seeds` seeds have both methods |
| holds | the seed-level t-interval and the row-level interval both lie above 0 |
| does not hold | both lie below `+effect`: the runs exclude an advantage as large as the one the study is sized to see (this includes the reverse ordering holding) |
| row-level only | the row-level interval lies above 0 and the seed-level t-interval does not: the difference is seen when rows are the replicates, and does not replicate across training runs at this number of seeds |
| not tested (intervals wider than the effect) | otherwise |

Beside each ordering, the paired ValidRatio difference (generation rows) says whether a ranking gain costs answer
format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import _paired_matrix, format_interval, format_mean_std, load_study, mean_std, paired_bootstrap, runs_of
from .claims import EFFECT, movement
from .config import PREFERENCE_KINDS, RANKING_LOSS_OF_KIND

# Two-sided 95% quantiles of Student's t, t_{0.975}(df), from standard tables (df 1-30); above 30 the normal 1.96 is
# within 4% of the t quantile.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

# The orderings a replicated study judges: the softmax against DPO on the same k pairs (the question a user with k
# negatives per row asks first), then against DPO on one negative, the two DPO arms, every preference method against
# SFT continued on the same rows (the compute-matched control), and S-DPO against the most-popular baseline.
ORDERINGS = (
    ("sdpo", "dpo-pairs"),
    ("sdpo", "dpo"),
    ("dpo-pairs", "dpo"),
    ("sdpo", "sft-continued"),
    ("dpo-pairs", "sft-continued"),
    ("dpo", "sft-continued"),
    ("sdpo", "popular"),
)
METRICS = ("ranking/ndcg@5", "ranking/hr@1")
VALID_RATIO = "generation/valid_ratio"


def t_quantile_975(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"A t-interval needs at least 1 degree of freedom (2 values), got df={df}.")
    return _T_975[df - 1] if df <= len(_T_975) else 1.96


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% Student t-interval of the mean of `values` (n - 1 degrees of freedom)."""
    values = np.asarray(values, dtype=np.float64)
    half = t_quantile_975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def two_level_bootstrap(differences: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """
    95% percentile interval of the mean of a (seeds, rows) matrix of paired differences, resampling seeds with
    replacement and then, within each drawn seed, its rows with replacement.

    Args:
        differences (`np.ndarray`): (S, R) per-row differences `a - b`, one row of the matrix per seed.
        n_boot (`int`, *optional*, defaults to `10000`): Resamples.
        seed (`int`, *optional*, defaults to `0`): Seed of the resampling.
    """
    differences = np.asarray(differences, dtype=np.float64)
    n_seeds, n_rows = differences.shape
    rng = np.random.default_rng(seed)
    means = []
    # In chunks of resamples: all at once, 10,000 x 3 seeds x 1,000 rows of indices would take 240 MB
    for start in range(0, n_boot, 500):
        size = min(500, n_boot - start)
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        rows = rng.integers(0, n_rows, size=(size, n_seeds, n_rows))
        means.append(differences[seeds[..., None], rows].mean(axis=(1, 2)))
    means = np.concatenate(means)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@dataclass
class SeedLevelComparison:
    """
    `a - b` on one metric, with the seeds (whole training runs) as the replicates beside the rows.

    Args:
        a, b (`str`): Methods compared (`a - b`).
        metric (`str`): A per-row metric (`ranking/ndcg@5`, ...).
        split (`str`): The split.
        seeds (`list[int]`): Seeds both methods ran.
        n_rows (`int`): Eval rows per seed.
        mean_diff (`float`): Mean of the per-seed differences (equal to the mean over rows and seeds).
        per_seed_diff (`dict[int, float]`): Each seed's mean difference over its rows.
        t_low, t_high (`float`): 95% t-interval over the per-seed differences (NaN with one seed).
        boot_low, boot_high (`float`): 95% two-level bootstrap interval (seeds, then rows).
        row_low, row_high (`float`): 95% row-level paired bootstrap interval (rows the replicates).
    """

    a: str
    b: str
    metric: str
    split: str
    seeds: list[int]
    n_rows: int
    mean_diff: float
    per_seed_diff: dict[int, float] = field(default_factory=dict)
    t_low: float = math.nan
    t_high: float = math.nan
    boot_low: float = math.nan
    boot_high: float = math.nan
    row_low: float = math.nan
    row_high: float = math.nan

    def describe(self) -> str:
        per_seed = ", ".join(f"{d:+.4f}" for d in self.per_seed_diff.values())
        return (
            f"{self.mean_diff:+.4f}; seeds {self.seeds} ({per_seed}): t-interval "
            f"{format_interval(self.t_low, self.t_high)}, two-level bootstrap "
            f"{format_interval(self.boot_low, self.boot_high)}; rows {format_interval(self.row_low, self.row_high)} "
            f"({self.n_rows} rows)"
        )


def seed_level_comparison(
    runs: Iterable[dict[str, Any]], split: str, a: str, b: str, metric: str, n_boot: int = 10000, seed: int = 0
) -> SeedLevelComparison:
    """
    `a - b` on `metric` over the seeds both ran, paired by seed and eval row: the per-seed differences, their
    t-interval, the two-level bootstrap and the row-level bootstrap.

    Raises:
        ValueError: as [`~trl_sdpo.rec.study.analysis.paired_bootstrap`] (no runs, no shared seed, other rows).
    """
    runs = list(runs)
    seeds, values_a, values_b = _paired_matrix(runs, split, a, b, metric)
    differences = values_a - values_b
    per_seed = differences.mean(axis=1)
    rows = paired_bootstrap(runs, split, a, b, metric, n_boot=n_boot, seed=seed)
    comparison = SeedLevelComparison(
        a=a,
        b=b,
        metric=metric,
        split=split,
        seeds=seeds,
        n_rows=differences.shape[1],
        mean_diff=float(per_seed.mean()),
        per_seed_diff={s: float(d) for s, d in zip(seeds, per_seed)},
        row_low=rows.ci_low,
        row_high=rows.ci_high,
    )
    if len(seeds) >= 2:
        comparison.t_low, comparison.t_high = t_interval(per_seed)
        comparison.boot_low, comparison.boot_high = two_level_bootstrap(differences, n_boot=n_boot, seed=seed)
    return comparison


@dataclass
class OrderingVerdict:
    """
    One ordering `a > b` on one metric, judged by the module's rule.

    Args:
        name (`str`): e.g. `"sdpo > dpo-pairs on ranking/ndcg@5"`.
        verdict (`str`): `holds`, `does not hold`, `row-level only` or `not tested (<why>)`.
        comparison ([`SeedLevelComparison`] or `None`): The numbers (None when runs are missing).
        valid_ratio ([`SeedLevelComparison`] or `None`): `a - b` on the generation ValidRatio, on the generation rows.
        evidence (`str`): The numbers in words.
    """

    name: str
    verdict: str
    comparison: SeedLevelComparison | None
    valid_ratio: SeedLevelComparison | None
    evidence: str


def judge_ordering(
    runs: Iterable[dict[str, Any]],
    split: str,
    a: str,
    b: str,
    metric: str,
    effect: float = EFFECT,
    min_seeds: int = 3,
    n_boot: int = 10000,
    seed: int = 0,
) -> OrderingVerdict:
    """
    The verdict of `a > b` on `metric` by the module's rule, with its evidence.

    Args:
        runs (`Iterable[dict]`): Runs of a study whose seeds are pipeline seeds (see the module docstring).
        split (`str`): The split judged.
        a, b (`str`): The methods, read as "a beats b".
        metric (`str`): A per-row metric.
        effect (`float`, *optional*): The smallest advantage the study is sized to see.
        min_seeds (`int`, *optional*, defaults to `3`): Seeds both methods need before the ordering is judged.
        n_boot, seed (`int`, *optional*): Bootstrap resamples and their seed.
    """
    runs = list(runs)
    name = f"{a} > {b} on {metric}"
    present = {r["method"] for r in runs if r["split"] == split}
    if a not in present or b not in present:
        missing = [m for m in (a, b) if m not in present]
        return OrderingVerdict(name, "not tested (runs missing)", None, None, f"no runs of {missing} on {split}")
    comparison = seed_level_comparison(runs, split, a, b, metric, n_boot=n_boot, seed=seed)
    valid_ratio = None
    if all(r["metrics"].get("generation") for m in (a, b) for r in runs_of(runs, split, m)):
        valid_ratio = seed_level_comparison(runs, split, a, b, VALID_RATIO, n_boot=n_boot, seed=seed)
    evidence = comparison.describe()
    if valid_ratio is not None:
        evidence += (
            f"; ValidRatio {valid_ratio.mean_diff:+.4f} {format_interval(valid_ratio.row_low, valid_ratio.row_high)}"
        )
    for method in (a, b):
        if (
            runs_of(runs, split, method)[0]["kind"] in RANKING_LOSS_OF_KIND
        ):  # trained on preferences: dpo, dpo-pairs, sdpo
            moved, text = movement(runs, split, method)
            if moved is False:
                return OrderingVerdict(
                    name, "not tested (the preference stage did not move the model)", comparison, valid_ratio, text
                )
    if len(comparison.seeds) < min_seeds:
        verdict = f"not tested (runs missing: {len(comparison.seeds)} of {min_seeds} seeds)"
    elif comparison.t_low > 0 and comparison.row_low > 0:
        verdict = "holds"
    elif comparison.t_high < effect and comparison.row_high < effect:
        verdict = "does not hold"
    elif comparison.row_low > 0:
        verdict = "row-level only"
    else:
        verdict = "not tested (intervals wider than the effect)"
    return OrderingVerdict(name, verdict, comparison, valid_ratio, evidence)


def replicated_verdicts(
    runs: Iterable[dict[str, Any]],
    split: str = "test",
    orderings: Sequence[tuple[str, str]] = ORDERINGS,
    metrics: Sequence[str] = METRICS,
    **kwargs: Any,
) -> list[OrderingVerdict]:
    """Every ordering of `orderings` on every metric of `metrics`, judged by [`judge_ordering`]."""
    runs = list(runs)
    return [judge_ordering(runs, split, a, b, metric, **kwargs) for a, b in orderings for metric in metrics]


def valid_ratio_floor(
    runs: Iterable[dict[str, Any]], split: str = "test", floor: float = 0.95, methods: Sequence[str] | None = None
) -> list[tuple[str, bool | None, str]]:
    """
    Per LM method of `methods` (default: sft and the preference kinds), whether its mean generation ValidRatio over
    seeds is at least `floor` (the paper's answer-format rule): `(method, ok, evidence)`, `ok` None without runs.
    """
    runs = list(runs)
    out = []
    for method in methods or ("sft", *PREFERENCE_KINDS):
        ratios = [(r["metrics"].get("generation") or {}).get("valid_ratio") for r in runs_of(runs, split, method)]
        if not ratios or any(v is None for v in ratios):
            out.append((method, None, f"no generation evaluation of {method} on {split}"))
            continue
        mean, std = mean_std(ratios)
        out.append((method, mean >= floor, f"{format_mean_std((mean, std))} (min {min(ratios):.4f}, n={len(ratios)})"))
    return out


def borrow_runs(
    runs: Iterable[dict[str, Any]], other: Iterable[dict[str, Any]], seeds: Sequence[int] = (0,)
) -> list[dict[str, Any]]:
    """
    `runs`, plus the runs of `other` (another study folder) for the (split, method, seed) that `runs` lacks among
    `seeds`, where those are the same training: the same recorded settings as `runs`' own run of the method at
    another seed, `bf16` aside (both folders' `precision` must agree). A pipeline seed whose models another study
    already trained (the same SFT model, rows and settings) is then not trained twice. Borrowed runs get
    `"borrowed_from"` (the other run's path).

    Raises:
        ValueError: naming both files when a borrowed run's settings or precision differ from the study's own.
    """
    runs = list(runs)
    have = {(r["split"], r["method"], r["seed"]) for r in runs}
    own = {(r["split"], r["method"]): r for r in runs}
    out = list(runs)
    for run in other:
        key = (run["split"], run["method"], run["seed"])
        if run["seed"] not in seeds or key in have:
            continue
        mine = own.get(key[:2])
        if mine is None:
            continue  # a method this study does not run
        same = {k: v for k, v in run["config"].items() if k != "bf16"} == {
            k: v for k, v in mine["config"].items() if k != "bf16"
        }
        if not same or run.get("precision") != mine.get("precision"):
            raise ValueError(
                f"{run['path']} cannot stand for {key} of {mine['path']}'s study: other settings or precision."
            )
        out.append({**run, "borrowed_from": run["path"]})
    return out


def load_pipeline_runs(
    directory: str | Path, seed0_directory: str | Path | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """
    A replicated study's runs: those of `directory`, plus the seed-0 runs it lacks from `seed0_directory` where they
    are the same training ([`borrow_runs`]), as the replicated MovieLens study reads its seed 0 from the fp32 study.

    Args:
        directory (`str` or `Path`): The study folder (`[]` when it is missing or holds no run JSON).
        seed0_directory (`str` or `Path`, *optional*): The folder to borrow seed-0 runs from; `None` borrows nothing.
        split (`str`, *optional*): Keep only this split's runs.
    """
    runs = load_study(directory, missing_ok=True)
    if runs and seed0_directory is not None:
        runs = borrow_runs(runs, load_study(seed0_directory), seeds=(0,))
    return [run for run in runs if split is None or run["split"] == split]


def verdicts_markdown(verdicts: Sequence[OrderingVerdict]) -> str:
    """A Markdown table of judged orderings: the difference, per-seed values, the three intervals, the paired
    ValidRatio difference and the verdict."""
    lines = [
        "| ordering | metric | difference | per seed | seed level: t-interval | two-level bootstrap | row level | "
        "ValidRatio difference | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        a_b, metric = v.name.split(" on ")
        c = v.comparison
        if c is None:
            lines.append(f"| {a_b} | {metric} | — | — | — | — | — | — | {v.verdict} |")
            continue
        per_seed = ", ".join(f"{d:+.4f}" for d in c.per_seed_diff.values())
        ratio = "—"
        if v.valid_ratio is not None:
            r = v.valid_ratio
            ratio = f"{r.mean_diff:+.4f} {format_interval(r.row_low, r.row_high)}"
        lines.append(
            f"| {a_b} | {metric} | {c.mean_diff:+.4f} | {per_seed} | {format_interval(c.t_low, c.t_high)} | "
            f"{format_interval(c.boot_low, c.boot_high)} | {format_interval(c.row_low, c.row_high)} | {ratio} | "
            f"{v.verdict} |"
        )
    return "\n".join(lines)
