"""
Leak check: can the candidate list alone, without the user's history, tell which candidate is the target?

The predictor is fitted on the training rows' candidate lists and targets and looks for one thing: a sampler whose
random generator is seeded by the target (as in the S-DPO reference pipeline) makes the same random draws for every
row with that target, so those rows get nearly the same list. The draws pick positions in the item catalog and the
history only removes a few catalog positions, so two such lists agree position by position up to a shift of at most
`MAX_HISTORY + 1` catalog ranks, and share most of their items. For an evaluation list and each candidate `c`, the
predictor compares the list with (up to `max_rows_per_target`) training lists whose target was `c`:

- aligned matches: positions where the two lists hold items at most `tolerance` catalog ranks apart;
- shared items: items (other than `c`) present in both lists.

A candidate is flagged when either count reaches a threshold that two independent uniform lists reach with
probability below `alpha` per evaluation row (binomial and hypergeometric tails, all comparisons of a row counted).
The prediction is the flagged candidate with the strongest evidence; a row without any flagged candidate is a uniform
guess. Item popularity is deliberately not used: it is a legitimate signal, not a leak, and a popularity-driven
predictor would beat chance on any sampler.

HR@1 is reported in expectation over the uniform guesses (ties included), so it is deterministic. It sits near
`1 / num_candidates` for a non-leaking sampler; on LastFM validation it is 1.000 for `"sdpo-compat"` (a simpler lookup
scores 0.99 on the test file, per the project notes).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .candidates import sample_candidates
from .dataset import MAX_HISTORY, RecDataset


def _binomial_tail(n: int, p: float, s: int) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(s, n + 1))


def _hypergeometric_tail(population: int, draws: int, s: int) -> float:
    """P(two independent uniform `draws`-subsets of `population` items share at least `s` items)."""
    total = math.comb(population, draws)
    return sum(math.comb(draws, j) * math.comb(population - draws, draws - j) for j in range(s, draws + 1)) / total


def _threshold(tail, limit: int, budget: float) -> int | None:
    """Smallest count whose null tail probability is within `budget`, or `None` when no count up to `limit` is."""
    for s in range(1, limit + 1):
        if tail(s) <= budget:
            return s
    return None


def leak_check_lists(
    train_candidates: Sequence[Sequence[Hashable]],
    train_targets: Sequence[Hashable],
    eval_candidates: Sequence[Sequence[Hashable]],
    eval_targets: Sequence[Hashable],
    catalog: Sequence[Hashable] | None = None,
    tolerance: int = MAX_HISTORY + 1,
    max_rows_per_target: int = 64,
    alpha: float = 0.01,
) -> dict[str, Any]:
    """
    Fit the candidate-list-only predictor on training lists and score it on evaluation lists.

    Args:
        train_candidates, train_targets:
            Training rows' candidate lists and targets (item ids or titles).
        eval_candidates, eval_targets:
            The rows to score. All lists must have the same length.
        catalog (`Sequence`, *optional*):
            Every item, in the order the sampler draws from (ascending item id for both samplers here). `None` uses
            the items seen in the lists, sorted: shared items still count, aligned matches lose their meaning (the
            thresholds stay valid, only weaker).
        tolerance (`int`, *optional*, defaults to `MAX_HISTORY + 1`):
            Catalog ranks two aligned items may be apart and still match (a history removes at most that many).
        max_rows_per_target (`int`, *optional*, defaults to `64`):
            Training lists kept per target (the first ones). One is enough to reveal a seeded list; the cap bounds
            the time and the number of comparisons the null thresholds account for.
        alpha (`float`, *optional*, defaults to `0.01`):
            Probability that a row of independent uniform lists gets any candidate flagged.

    Returns:
        `dict`: `hr@1` (expected, uniform tie-breaking), `chance`, `n`, `flagged` (fraction of rows with a flagged
        candidate), the thresholds, and `verdict`.
    """
    if len(train_candidates) != len(train_targets) or len(eval_candidates) != len(eval_targets):
        raise ValueError("Candidate lists and targets must have the same number of rows.")
    if not eval_candidates:
        raise ValueError("No evaluation rows to check.")
    k = len(eval_candidates[0])
    if any(len(c) != k for c in (*train_candidates, *eval_candidates)):
        raise ValueError(f"All candidate lists must have the same length ({k}) for the aligned comparison.")
    if catalog is None:
        catalog = sorted({item for lists in (train_candidates, eval_candidates) for c in lists for item in c})
    rank = {item: r for r, item in enumerate(catalog)}
    num_items = len(rank)

    # Training lists as catalog ranks, grouped by target: rows [start, end) of `train` belong to one target.
    grouped: dict[Hashable, list[list[int]]] = {}
    for candidates, target in zip(train_candidates, train_targets):
        lists = grouped.setdefault(target, [])
        if len(lists) < max_rows_per_target:
            lists.append(_ranks(rank, candidates))
    spans, blocks, start = {}, [], 0
    for target, lists in grouped.items():
        spans[target] = (start, start + len(lists))
        blocks.extend(lists)
        start += len(lists)
    train = np.asarray(blocks, dtype=np.int64).reshape(-1, k)

    comparisons = k * max_rows_per_target
    budget = alpha / comparisons
    p_aligned = min(1.0, (2 * tolerance + 1) / num_items)
    aligned_needed = _threshold(lambda s: _binomial_tail(k, p_aligned, s), k, budget)
    shared_needed = _threshold(lambda s: _hypergeometric_tail(num_items - 1, k - 1, s), k - 1, budget)
    # A count that cannot reach its threshold never flags; with both disabled the check cannot see anything.
    aligned_needed_or_never = aligned_needed if aligned_needed is not None else k + 1
    shared_needed_or_never = shared_needed if shared_needed is not None else k + 1

    hits, flagged_rows = 0.0, 0
    for candidates, target in zip(eval_candidates, eval_targets):
        ranks = np.asarray(_ranks(rank, candidates), dtype=np.int64)
        evidence = np.full(k, -1.0)
        present = [(j, spans[item]) for j, item in enumerate(candidates) if item in spans]
        if present:
            index = np.concatenate([np.arange(a, b) for _, (a, b) in present])
            lists = train[index]
            aligned = (np.abs(lists - ranks) <= tolerance).sum(axis=1)
            shared = np.isin(lists, ranks).sum(axis=1) - 1  # the candidate itself is in both lists
            # Evidence in units of "how far past the threshold", so the two counts compare.
            strength = np.maximum(aligned - aligned_needed_or_never, shared - shared_needed_or_never)
            offsets = np.cumsum([0] + [b - a for _, (a, b) in present[:-1]])
            best = np.maximum.reduceat(strength, offsets)
            for (j, _), value in zip(present, best):
                evidence[j] = value
        top = evidence.max()
        if top >= 0:
            flagged_rows += 1
            winners = [candidates[j] for j in np.flatnonzero(evidence == top)]
            hits += winners.count(target) / len(winners)
        else:
            hits += 1 / k
    n = len(eval_candidates)
    hr = hits / n
    chance = 1 / k
    return {
        "hr@1": hr,
        "chance": chance,
        "n": n,
        "flagged": flagged_rows / n,
        "aligned_threshold": aligned_needed,
        "shared_threshold": shared_needed,
        "verdict": _verdict(hr, chance, n, aligned_needed is None and shared_needed is None),
    }


def _ranks(rank: dict[Hashable, int], items: Sequence[Hashable]) -> list[int]:
    try:
        return [rank[item] for item in items]
    except KeyError as e:
        raise ValueError(f"Candidate {e.args[0]!r} is not in the catalog.") from None


def _verdict(hr: float, chance: float, n: int, blind: bool) -> str:
    if blind:
        return (
            "INCONCLUSIVE: the catalog is too small for lists to be told apart from chance overlaps; the check "
            "cannot see a leak here."
        )
    # Four standard errors of a chance-level hit rate, and at least two points: beyond that is not noise.
    margin = max(4 * math.sqrt(chance * (1 - chance) / n), 0.02)
    if hr > chance + margin:
        return (
            f"LEAK: the candidate list alone, without the history, picks the target in {hr:.1%} of {n} rows "
            f"(chance {chance:.1%}). Scores on these lists do not measure recommendation quality."
        )
    return f"no leak detected: a candidate-list-only predictor scores {hr:.1%} on {n} rows, chance is {chance:.1%}."


def leak_check(
    dataset: RecDataset,
    split: str = "valid",
    sampler: str = "default",
    num_candidates: int = 20,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """
    Run the leak check on a dataset: fit on the train split's lists from `sampler`, evaluate on `split`'s.

    Args:
        dataset (`RecDataset`): The dataset.
        split (`str`, *optional*, defaults to `"valid"`): The split evaluated.
        sampler (`str`, *optional*, defaults to `"default"`): `"default"` or `"sdpo-compat"`.
        num_candidates (`int`, *optional*, defaults to `20`): List length.
        seed (`int`, *optional*, defaults to `0`): The default sampler's seed.
        kwargs: Passed to `leak_check_lists`.

    Returns:
        `dict`: as `leak_check_lists`, plus `dataset`, `split`, `sampler`.
    """
    train_rows, eval_rows = dataset.split("train"), dataset.split(split)
    result = leak_check_lists(
        sample_candidates(dataset, train_rows, num_candidates, sampler, seed),
        [row.target for row in train_rows],
        sample_candidates(dataset, eval_rows, num_candidates, sampler, seed),
        [row.target for row in eval_rows],
        catalog=sorted(dataset.items),
        **kwargs,
    )
    return {"dataset": dataset.name, "split": split, "sampler": sampler, **result}


def leak_check_records(
    train_records: Sequence[dict], eval_records: Sequence[dict], catalog: Sequence[str] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """
    Run the leak check on files in the S-DPO reference format (see `trl_sdpo.rec.loaders.load_sdpo_json`).

    Args:
        train_records, eval_records (`Sequence[dict]`): Records with `itemList` and `trueSelection`.
        catalog (`Sequence[str]`, *optional*):
            All titles in catalog (item id) order, e.g. `[dataset.items[i] for i in sorted(dataset.items)]`; enables
            the aligned comparison. Without it only shared titles count.
        kwargs: Passed to `leak_check_lists`.
    """
    return leak_check_lists(
        [r["itemList"] for r in train_records],
        [r["trueSelection"] for r in train_records],
        [r["itemList"] for r in eval_records],
        [r["trueSelection"] for r in eval_records],
        catalog=catalog,
        **kwargs,
    )
