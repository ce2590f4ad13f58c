"""
The claim the studies test, checked part by part on a study's runs, as data (`ClaimPart`) and in words (`describe_claims`).

The claim: S-DPO > DPO > SFT-continued on ranking HR@1 and NDCG@5 by more than 2 seed-sigma with paired intervals
above 0; generation ValidRatio >= 0.95 from SFT on; S-DPO above most-popular.

A comparison can only refute the claim if it could have shown it. Two rules, fixed before the study that
decides ran:
- The preference stage must have moved the model: for dpo and sdpo, held-out pairwise reward accuracy (rows pooled
  over seeds) with a 95% interval above 0.5 and a mean held-out margin of at least `heldout.MIN_MARGIN` nats
  (`movement` below). Runs without held-out rows are judged on their training log: a final margin under
  `MIN_MARGIN` on the very rows trained on means the stage did not move the model. Otherwise every ordering part is
  "not tested".
- An ordering part "does not hold" only when its paired interval excludes an advantage of `effect` (0.02: the size
  the study was powered for); an interval that includes 0 and reaches past `effect` is "not tested" (too wide).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analysis import (
    CLAIM_METRICS,
    format_interval,
    format_mean_std,
    mean_std,
    paired_bootstrap,
    runs_of,
    shared_seeds,
)
from .heldout import MIN_MARGIN, interval

# The smallest advantage the study is sized to see (paired 95% intervals of about +-0.02 on the test rows)
EFFECT = 0.02
MOVEMENT_METHODS = ("dpo", "sdpo")


@dataclass
class ClaimPart:
    """
    One part of the claim and whether the runs support it.

    Args:
        name (`str`): What is claimed, e.g. `"S-DPO > DPO on ranking/hr@1"`.
        holds (`bool` or `None`): `True` / `False`, or `None` when the runs could not decide it (see `untested`).
        rule (`str`): The rule applied.
        evidence (`str`): The numbers behind the verdict.
        untested (`str`, *optional*): Why the part is not decided: `"runs missing"`, `"the preference stage did not
            move the model"`, `"interval wider than the effect"`.
    """

    name: str
    holds: bool | None
    rule: str
    evidence: str
    untested: str | None = None

    @property
    def verdict(self) -> str:
        if self.name.endswith("(precondition)") and self.holds is not None:
            return "met" if self.holds else "not met"
        if self.holds is None:
            return f"not tested ({self.untested or 'runs missing'})"
        return "holds" if self.holds else "does not hold"


def _final_train_margin(run: dict[str, Any]) -> float | None:
    """The mean `rewards/margins` over the last quarter of a run's logged training steps (None if it logged none)."""
    margins = [entry["rewards/margins"] for entry in run.get("log_history", []) if "rewards/margins" in entry]
    if not margins:
        return None
    return float(np.mean(margins[-max(1, len(margins) // 4) :]))


def movement(runs: Iterable[dict[str, Any]], split: str, method: str) -> tuple[bool | None, str]:
    """
    Whether `method`'s preference stage moved the model (the rule in the module docstring), with the evidence.

    Returns:
        `(moved, evidence)`; `moved` is `None` when `method` has no runs on `split`.
    """
    group = runs_of(list(runs), split, method)
    if not group:
        return None, f"no runs of {method} on {split}"
    heldout = [run["heldout"] for run in group if run.get("heldout")]
    if len(heldout) == len(group):
        accuracy = np.concatenate([h["row_accuracy"] for h in heldout])
        margins = np.concatenate([h["row_margins"] for h in heldout])
        low, high = interval(accuracy)
        ok = low > 0.5 and margins.mean() >= MIN_MARGIN
        return ok, (
            f"{method}: held-out reward accuracy {accuracy.mean():.3f} [{low:.3f}, {high:.3f}], margin "
            f"{margins.mean():+.3f} nats ({len(accuracy)} rows, {len(group)} seeds)"
        )
    finals = [_final_train_margin(run) for run in group]
    if any(value is None for value in finals):
        return None, f"{method}: neither held-out rows nor a training log with rewards/margins"
    mean = float(np.mean(finals))
    text = f"{method}: no held-out rows; final training margin {mean:+.3f} nats on the rows trained on"
    return mean >= MIN_MARGIN, text + (f" (< {MIN_MARGIN})" if mean < MIN_MARGIN else " (held-out movement unknown)")


def stage_moved(runs: Iterable[dict[str, Any]], split: str) -> tuple[bool | None, str]:
    """Whether the preference stage moved the model: every method of `MOVEMENT_METHODS` that was run moved it."""
    runs = list(runs)
    verdicts = [movement(runs, split, method) for method in MOVEMENT_METHODS]
    known = [ok for ok, _ in verdicts if ok is not None]
    evidence = "; ".join(text for _, text in verdicts)
    if not known:
        return None, evidence
    return all(known), evidence


def _ordering_part(runs, split, a, b, metric, n_boot, seed, moved: bool | None, effect: float) -> ClaimPart:
    name = f"{a} > {b} on {metric}"
    rule = (
        "holds: seed-mean difference > 2 seed-sigma (>= 2 seeds) and the paired 95% interval above 0; does not "
        f"hold: the interval below +{effect}; otherwise not tested"
    )
    if not shared_seeds(runs, split, a, b):
        return ClaimPart(name, None, rule, f"no seed with runs of both {a} and {b} on {split}", "runs missing")
    c = paired_bootstrap(runs, split, a, b, metric, n_boot=n_boot, seed=seed)
    evidence = (
        f"difference {c.mean_diff:+.4f}, 95% CI {format_interval(c.ci_low, c.ci_high)} over {c.n_rows} rows; "
        f"per seed {format_mean_std((c.seed_mean, c.seed_sigma), signed=True)} (n={len(c.seeds)} seeds)"
    )
    if moved is False:
        return ClaimPart(name, None, rule, evidence, "the preference stage did not move the model")
    if c.beyond_2_sigma and c.ci_low > 0:
        return ClaimPart(name, True, rule, evidence)
    if c.ci_high < effect:
        return ClaimPart(name, False, rule, evidence)
    if c.ci_low > 0:  # above 0 on the rows, but not beyond the seed-to-seed spread
        return ClaimPart(name, None, rule, evidence, f"within 2 seed-sigma over {len(c.seeds)} seed(s)")
    return ClaimPart(name, None, rule, evidence, f"interval includes 0 and reaches past +{effect}")


def claim_check(
    runs: Iterable[dict[str, Any]],
    split: str = "test",
    min_valid_ratio: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    effect: float = EFFECT,
) -> list[ClaimPart]:
    """
    Check the claim on one split, part by part.

    The parts: S-DPO > DPO and DPO > SFT-continued on ranking HR@1 and NDCG@5, each by more than 2 seed-sigma and with
    a paired bootstrap interval above 0; generation ValidRatio (paper rule, mean over seeds) >= `min_valid_ratio` for
    every LM method from SFT on (sft, sft-continued, dpo, sdpo); S-DPO above most-popular on ranking HR@1 and NDCG@5
    (paired interval above 0).

    Args:
        runs (`Iterable[dict]`): Runs from [`load_study`].
        split (`str`, *optional*, defaults to `"test"`): The split.
        min_valid_ratio (`float`, *optional*, defaults to `0.95`): The ValidRatio threshold.
        n_boot (`int`, *optional*, defaults to `10000`), seed (`int`, *optional*, defaults to `0`): Bootstrap.
        effect (`float`, *optional*, defaults to `EFFECT`): The advantage an ordering part must be able to exclude
            to fail.

    Returns:
        `list[ClaimPart]`, the first being whether the preference stage moved the model (a precondition, not a part
        of the paper's claim); a part the runs cannot decide has `holds=None` and says why in `untested`.
    """
    runs = list(runs)
    moved, moved_evidence = stage_moved(runs, split)
    parts = [
        ClaimPart(
            "the preference stage moved the model (precondition)",
            moved,
            f"dpo and sdpo: held-out reward accuracy interval above 0.5 and margin >= {MIN_MARGIN} nats",
            moved_evidence,
            None if moved is not None else "runs missing",
        )
    ]
    parts += [
        _ordering_part(runs, split, a, b, metric, n_boot, seed, moved, effect)
        for a, b in (("sdpo", "dpo"), ("dpo", "sft-continued"))
        for metric in CLAIM_METRICS
    ]
    rule = f"mean generation ValidRatio over seeds >= {min_valid_ratio} (paper rule)"
    for method in ("sft", "sft-continued", "dpo", "sdpo"):
        group = runs_of(runs, split, method)
        ratios = [(r["metrics"].get("generation") or {}).get("valid_ratio") for r in group]
        name = f"ValidRatio of {method} >= {min_valid_ratio}"
        if not group or any(v is None for v in ratios):
            parts.append(
                ClaimPart(name, None, rule, f"no generation evaluation of {method} on {split}", "runs missing")
            )
            continue
        mean, std = mean_std(ratios)
        evidence = f"{format_mean_std((mean, std))} (min {min(ratios):.4f}, n={len(ratios)} seeds)"
        parts.append(ClaimPart(name, mean >= min_valid_ratio, rule, evidence))
    for metric in CLAIM_METRICS:
        name = f"sdpo > popular on {metric}"
        rule = "the paired 95% interval of sdpo - popular above 0"
        if not shared_seeds(runs, split, "sdpo", "popular"):
            parts.append(
                ClaimPart(name, None, rule, f"no seed with runs of both sdpo and popular on {split}", "runs missing")
            )
            continue
        c = paired_bootstrap(runs, split, "sdpo", "popular", metric, n_boot=n_boot, seed=seed)
        evidence = f"difference {c.mean_diff:+.4f}, 95% CI {format_interval(c.ci_low, c.ci_high)} (seeds {c.seeds})"
        parts.append(ClaimPart(name, c.ci_low > 0, rule, evidence))
    return parts


def describe_claims(parts: Sequence[ClaimPart]) -> str:
    """The claim check in plain words: a first line with the verdict ("holds", "does not hold" or "not tested"),
    then one line per part."""
    lines = [f"- {part.name}: {part.verdict}. {part.evidence}." for part in parts]
    precondition = [part for part in parts if part.name.endswith("(precondition)")]
    claim = [part for part in parts if part not in precondition]
    failed = sum(1 for part in claim if part.holds is False)
    untested = [part for part in claim if part.holds is None]
    if precondition and precondition[0].holds is False:
        overall = (
            "Not tested: the preference stage did not move the model, so this study cannot say whether the claim "
            f"holds ({precondition[0].evidence})."
        )
    elif failed:
        overall = f"The claim does not hold: {failed} of {len(claim)} parts fail"
        overall += f" ({len(untested)} not tested)." if untested else "."
    elif len(untested) == len(claim):
        overall = "Not tested: no part of the claim could be decided by these runs."
    elif untested:
        overall = f"Not fully tested: {len(untested)} of {len(claim)} parts undecided; the rest hold."
    else:
        overall = "The claim holds in every part."
    # The verdict first, so it is what a reader sees; then the evidence part by part.
    return "\n".join([overall, "", *lines])
