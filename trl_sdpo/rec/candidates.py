"""
Candidate lists: the target plus items the user has not interacted with, in which the model must find the target.

Two samplers:

- `"default"`: reproducible and non-leaking. The random generator of a row is seeded by the user's seed and the row's
  identity (split, index, user, history), never by the target, so the list carries no information about which
  candidate is the target: the negatives are a uniform sample of the items outside the history (the target skipped
  when drawn) and the target's position is uniform and drawn before anything depends on the target.
- `"sdpo-compat"`: the S-DPO reference pipeline, reproducing its files exactly. Python's generator is seeded with the
  target's id, so rows sharing a target get nearly the same list and the list alone gives the answer away (see
  `trl_sdpo.rec.leak`). Use it to compare with published numbers, not to measure a model.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Sequence

from .dataset import RecDataset, RecRow

SAMPLERS = ("default", "sdpo-compat")


def row_seed(seed: int, row: RecRow) -> int:
    """A 64-bit seed from the user's seed and the row's identity (split, index, user, history), not its target."""
    identity = f"{seed}\x1f{row.split}\x1f{row.index}\x1f{row.user}\x1f{','.join(map(str, row.history))}"
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "little")


def _sample_default(item_ids: Sequence[int], row: RecRow, num_candidates: int, seed: int) -> list[int]:
    rng = random.Random(row_seed(seed, row))
    uniform = rng.random  # `int(uniform() * n)` is uniform up to n / 2**53 and several times faster than randrange
    position = int(uniform() * num_candidates)  # drawn first: independent of the target by construction
    excluded = set(row.history)
    excluded.add(row.target)
    negatives: list[int] = []
    chosen: set[int] = set()
    n = len(item_ids)
    # Uniform draws over all items, rejecting the excluded and repeats: the same draws for any target, and a uniform
    # sample of the eligible items. Histories are short, so rejections are rare.
    while len(negatives) < num_candidates - 1:
        item = item_ids[int(uniform() * n)]
        if item not in excluded and item not in chosen:
            chosen.add(item)
            negatives.append(item)
    return negatives[:position] + [row.target] + negatives[position:]


class _ItemsExcept(Sequence):
    """The sorted item ids without a few excluded ones, as a lazy sequence: `random.sample` only needs `len` and
    indexing, and building the 4,600-item pool list for each of 50,000 rows would take most of the time."""

    def __init__(self, item_ids: Sequence[int], excluded: set[int]):
        self.item_ids = item_ids
        self.skipped = sorted(bisect_right(item_ids, i) - 1 for i in excluded)  # positions of excluded ids

    def __len__(self) -> int:
        return len(self.item_ids) - len(self.skipped)

    def __getitem__(self, j: int) -> int:
        if not 0 <= j < len(self):
            raise IndexError(j)
        position = j
        for skipped in self.skipped:  # ascending; each excluded position at or before ours shifts it by one
            if skipped <= position:
                position += 1
            else:
                break
        return self.item_ids[position]


def _sample_sdpo_compat(item_ids: Sequence[int], row: RecRow, num_candidates: int) -> list[int]:
    # The reference code calls `random.seed(next)`, `random.sample(pool, 19)`, appends the target, seeds again and
    # shuffles. A private `random.Random(next)` is the same generator without touching the global one.
    pool = _ItemsExcept(item_ids, set(row.history) | {row.target})
    candidates = random.Random(row.target).sample(pool, num_candidates - 1)
    candidates.append(row.target)
    random.Random(row.target).shuffle(candidates)
    return candidates


def sample_candidates(
    dataset: RecDataset,
    rows: Sequence[RecRow],
    num_candidates: int = 20,
    sampler: str = "default",
    seed: int = 0,
) -> list[list[int]]:
    """
    Candidate item ids for each row: the target and `num_candidates - 1` items outside the row's history.

    Args:
        dataset (`RecDataset`):
            Gives the item catalog (every item id of `dataset.items`, in ascending order, may be sampled).
        rows (`Sequence[RecRow]`):
            The rows. A row's list depends only on the row and the seed, not on the other rows or their order.
        num_candidates (`int`, *optional*, defaults to `20`):
            List length, target included.
        sampler (`str`, *optional*, defaults to `"default"`):
            `"default"` (seeded by `seed` and the row's identity; non-leaking) or `"sdpo-compat"` (the reference
            pipeline, seeded by the target id; `seed` is ignored; leaks the target).
        seed (`int`, *optional*, defaults to `0`):
            The user seed of the default sampler.

    Returns:
        `list[list[int]]`: one list of `num_candidates` distinct item ids per row, the target among them.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}.")
    if num_candidates < 2:
        raise ValueError(f"`num_candidates` must be at least 2 (the target and one negative), got {num_candidates}.")
    item_ids = sorted(dataset.items)
    result = []
    for row in rows:
        if row.target not in dataset.items:
            raise ValueError(f"{row.split} row {row.index}: target {row.target} is not an item of {dataset.name!r}.")
        eligible = len(item_ids) - len(set(row.history) | {row.target})
        if eligible < num_candidates - 1:
            raise ValueError(
                f"{row.split} row {row.index}: only {eligible} items are outside its history and target, fewer than "
                f"the {num_candidates - 1} negatives needed; lower `num_candidates`."
            )
        if sampler == "default":
            result.append(_sample_default(item_ids, row, num_candidates, seed))
        else:
            result.append(_sample_sdpo_compat(item_ids, row, num_candidates))
    return result
