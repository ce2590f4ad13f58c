"""Reference points on the same rows as the model evaluations: a random ranking and a most-popular ranking.

Both rank each row's candidates and return the keys of [`~trl_sdpo.rec.evaluate_ranking`] (`"hr@1"`, `"hr@5"`,
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
