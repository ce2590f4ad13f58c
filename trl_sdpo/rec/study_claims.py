"""
Issue 7's claim checked part by part on a study's runs, as data (`ClaimPart`) and in words (`describe_claims`).

The claim: S-DPO > DPO > SFT-continued on ranking HR@1 and NDCG@5 by more than 2 seed-sigma with paired intervals
above 0; generation ValidRatio >= 0.95 from SFT on; S-DPO above most-popular.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .study import CLAIM_METRICS, mean_std, paired_bootstrap, runs_of


@dataclass
class ClaimPart:
    """
    One part of issue 7's claim and whether the runs support it.

    Args:
        name (`str`): What is claimed, e.g. `"S-DPO > DPO on ranking/hr@1"`.
        holds (`bool` or `None`): `True` / `False`, or `None` when the runs needed to check it do not exist.
        rule (`str`): The rule applied.
        evidence (`str`): The numbers behind the verdict.
    """

    name: str
    holds: bool | None
    rule: str
    evidence: str

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not checked (runs missing)"}[self.holds]


def _ordering_part(runs, split, a, b, metric, n_boot, seed) -> ClaimPart:
    name = f"{a} > {b} on {metric}"
    rule = "seed-mean difference > 2 seed-sigma (>= 2 seeds) and the paired 95% interval above 0"
    present = {r["method"] for r in runs if r["split"] == split}
    if a not in present or b not in present:
        missing = [m for m in (a, b) if m not in present]
        return ClaimPart(name, None, rule, f"no runs of {missing} on {split}")
    c = paired_bootstrap(runs, split, a, b, metric, n_boot=n_boot, seed=seed)
    holds = c.beyond_2_sigma and c.ci_low > 0
    evidence = (
        f"difference {c.mean_diff:+.4f}, 95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}] over {c.n_rows} rows; "
        f"per seed {c.seed_mean:+.4f} ± {c.seed_sigma:.4f} (n={len(c.seeds)} seeds)"
    )
    return ClaimPart(name, holds, rule, evidence)


def claim_check(
    runs: Iterable[dict[str, Any]],
    split: str = "test",
    min_valid_ratio: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> list[ClaimPart]:
    """
    Check issue 7's claim on one split, part by part.

    The parts: S-DPO > DPO and DPO > SFT-continued on ranking HR@1 and NDCG@5, each by more than 2 seed-sigma and with
    a paired bootstrap interval above 0; generation ValidRatio (paper rule, mean over seeds) >= `min_valid_ratio` for
    every LM method from SFT on (sft, sft-continued, dpo, sdpo); S-DPO above most-popular on ranking HR@1 and NDCG@5
    (paired interval above 0).

    Args:
        runs (`Iterable[dict]`): Runs from [`load_study`].
        split (`str`, *optional*, defaults to `"test"`): The split.
        min_valid_ratio (`float`, *optional*, defaults to `0.95`): The ValidRatio threshold.
        n_boot (`int`, *optional*, defaults to `10000`), seed (`int`, *optional*, defaults to `0`): Bootstrap.

    Returns:
        `list[ClaimPart]`; a part whose methods were not run has `holds=None`.
    """
    runs = list(runs)
    parts = [
        _ordering_part(runs, split, a, b, metric, n_boot, seed)
        for a, b in (("sdpo", "dpo"), ("dpo", "sft-continued"))
        for metric in CLAIM_METRICS
    ]
    rule = f"mean generation ValidRatio over seeds >= {min_valid_ratio} (paper rule)"
    for method in ("sft", "sft-continued", "dpo", "sdpo"):
        group = runs_of(runs, split, method)
        ratios = [(r["metrics"].get("generation") or {}).get("valid_ratio") for r in group]
        name = f"ValidRatio of {method} >= {min_valid_ratio}"
        if not group or any(v is None for v in ratios):
            parts.append(ClaimPart(name, None, rule, f"no generation evaluation of {method} on {split}"))
            continue
        mean, std = mean_std(ratios)
        evidence = f"{mean:.4f} ± {std:.4f} (min {min(ratios):.4f}, n={len(ratios)} seeds)"
        parts.append(ClaimPart(name, mean >= min_valid_ratio, rule, evidence))
    for metric in CLAIM_METRICS:
        name = f"sdpo > popular on {metric}"
        rule = "the paired 95% interval of sdpo - popular above 0"
        present = {r["method"] for r in runs if r["split"] == split}
        if not {"sdpo", "popular"} <= present:
            parts.append(ClaimPart(name, None, rule, f"no runs of sdpo or popular on {split}"))
            continue
        c = paired_bootstrap(runs, split, "sdpo", "popular", metric, n_boot=n_boot, seed=seed)
        evidence = f"difference {c.mean_diff:+.4f}, 95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}] (seeds {c.seeds})"
        parts.append(ClaimPart(name, c.ci_low > 0, rule, evidence))
    return parts


def describe_claims(parts: Sequence[ClaimPart]) -> str:
    """The claim check in plain words: a first line saying whether the whole claim holds, then one line per part."""
    lines = [f"- {part.name}: {part.verdict}. {part.evidence}." for part in parts]
    failed = sum(1 for part in parts if part.holds is False)
    unchecked = sum(1 for part in parts if part.holds is None)
    if failed:
        overall = f"The claim does not hold: {failed} of {len(parts)} parts fail"
        overall += f" ({unchecked} not checked)." if unchecked else "."
    elif unchecked == len(parts):
        overall = "The claim cannot be checked: none of the methods it needs were run."
    elif unchecked:
        overall = f"The claim cannot be fully checked: {unchecked} of {len(parts)} parts lack runs; the rest hold."
    else:
        overall = "The claim holds in every part."
    # The verdict first, so it is what a reader sees; then the evidence part by part.
    return "\n".join([overall, "", *lines])
