"""Reference points on the same rows as the model evaluations: a random ranking, a most-popular ranking, and a
candidate-list memorizer that shows what a leaking sampler gives away.

Each ranks each row's candidates and return the keys of [`~trl_sdpo.rec.evaluate_ranking`] (`"hr@1"`, `"hr@5"`,
`"ndcg@5"`, `"mrr"`, `"n"`); their HR@1 is also comparable to the generation HR@1 (a baseline always answers with
exactly one candidate, so its ValidRatio would be 1).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .metrics import ranking_metrics


def _target_index(example: Any, position: int) -> int:
    ids = list(example.candidate_ids)
    if example.row.target not in ids:
        raise ValueError(f"Row {position}: the target item {example.row.target} is not among its `candidate_ids`.")
    return ids.index(example.row.target)


def random_ranks(examples: Sequence[Any], seed: int = 0) -> list[int]:
    """
    The target's 1-based rank in a uniformly random ordering of each row's candidates (see [`random_baseline`]).

    Args:
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`).
        seed (`int`, *optional*, defaults to `0`): The seed.

    Returns:
        `list[int]`: one rank per row, 1 = first.
    """
    ranks = []
    for position, example in enumerate(examples):
        target = _target_index(example, position)
        order = list(range(len(example.candidate_ids)))
        random.Random(f"random-baseline:{seed}:{example.row.split}:{example.row.index}").shuffle(order)
        ranks.append(order.index(target) + 1)
    return ranks


def random_baseline(examples: Sequence[Any], seed: int = 0) -> dict[str, Any]:
    """
    Ranking metrics of a uniformly random ordering of each row's candidates.

    Each row's ordering is drawn from a generator seeded by `seed` and the row's identity (split and index), so a row
    gets the same ordering whichever other rows are evaluated with it. Expected HR@1 is 1 / number of candidates.

    Args:
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`).
        seed (`int`, *optional*, defaults to `0`): The seed.

    Returns:
        `dict` with `"hr@1"`, `"hr@5"`, `"ndcg@5"`, `"mrr"` and `"n"`.
    """
    return ranking_metrics(random_ranks(examples, seed))


def popularity_ranks(dataset: Any, examples: Sequence[Any], split: str = "train") -> list[int]:
    """
    The target's 1-based rank when each row's candidates are ordered by popularity (see [`popularity_baseline`]).

    Args:
        dataset (`RecDataset`): The dataset the examples come from.
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`).
        split (`str`, *optional*, defaults to `"train"`): Where popularity is counted.

    Returns:
        `list[int]`: one rank per row, 1 = first.
    """
    counts = dataset.target_counts(split)
    ranks = []
    for position, example in enumerate(examples):
        target = _target_index(example, position)
        keys = [(-counts.get(item, 0), item) for item in example.candidate_ids]
        ranks.append(1 + sum(1 for j, key in enumerate(keys) if j != target and key < keys[target]))
    return ranks


def popularity_baseline(dataset: Any, examples: Sequence[Any], split: str = "train") -> dict[str, Any]:
    """
    Ranking metrics of ordering each row's candidates by popularity in the training rows, most popular first.

    An item's popularity is the number of `split` rows whose target it is (`RecDataset.target_counts`): each
    interaction counts once, whereas counting history occurrences would count it up to 10 times through the sliding
    windows. Candidates equally popular (often: never seen in training) are ordered by item id, smaller first.

    Args:
        dataset (`RecDataset`): The dataset the examples come from.
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`).
        split (`str`, *optional*, defaults to `"train"`): Where popularity is counted.

    Returns:
        `dict` with `"hr@1"`, `"hr@5"`, `"ndcg@5"`, `"mrr"` and `"n"`.
    """
    return ranking_metrics(popularity_ranks(dataset, examples, split))


def memorizer_ranks(
    train_lists: Sequence[Sequence[int]],
    train_targets: Sequence[int],
    examples: Sequence[Any],
    seed: int = 0,
    max_rows_per_target: int = 64,
) -> list[int]:
    """
    The target's 1-based rank under a predictor that never looks at the history: it only remembers which candidate
    lists the training rows had and what their targets were.

    Each candidate `c` of a row scores the largest number of items the row's list shares with a training list whose
    target was `c` (`c` itself not counted; `-1` when no training row had target `c`); candidates are ranked by score,
    ties in a seeded random order (per row, as in [`random_ranks`]). On candidate lists that carry no information about
    the target it ranks at chance (HR@1 about 1 / number of candidates, slightly above where a popular target has more
    training lists to overlap with); on lists seeded by the target (the S-DPO reference files) it finds the answer.
    See `trl_sdpo.rec.leak` for the statistical version with a null threshold.

    Args:
        train_lists, train_targets: The training rows' candidate lists (item ids) and targets.
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`).
        seed (`int`, *optional*, defaults to `0`): Seed of the tie-breaking.
        max_rows_per_target (`int`, *optional*, defaults to `64`): Training lists kept per target (the first ones).

    Returns:
        `list[int]`: one rank per row, 1 = first.
    """
    if len(train_lists) != len(train_targets):
        raise ValueError(f"{len(train_lists)} training lists but {len(train_targets)} targets.")
    by_target: dict[int, list[frozenset[int]]] = {}
    for candidates, target in zip(train_lists, train_targets):
        kept = by_target.setdefault(target, [])
        if len(kept) < max_rows_per_target:
            kept.append(frozenset(candidates))
    ranks = []
    for position, example in enumerate(examples):
        target = _target_index(example, position)
        items = set(example.candidate_ids)
        scores = [
            max((len(items & listed) - 1 for listed in by_target.get(c, ())), default=-1)
            for c in example.candidate_ids
        ]
        order = list(range(len(scores)))
        random.Random(f"memorizer:{seed}:{example.row.split}:{example.row.index}").shuffle(order)
        tie_position = {j: i for i, j in enumerate(order)}
        key = [(-s, tie_position[j]) for j, s in enumerate(scores)]
        ranks.append(1 + sum(1 for j in range(len(key)) if key[j] < key[target]))
    return ranks
