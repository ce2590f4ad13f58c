"""The in-memory form every recommendation dataset is loaded into: items (id -> title) and next-item rows."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MAX_HISTORY = 10
"""Histories hold the user's most recent items, at most this many (the paper's window)."""


@dataclass(frozen=True)
class RecRow:
    """
    One next-item prediction: a user's recent items and the item that came next.

    Args:
        user (`str`):
            User id as a string, `""` when the source does not say.
        history (`tuple[int, ...]`):
            Item ids, oldest first, at most `MAX_HISTORY`.
        target (`int`):
            The next item id.
        split (`str`):
            `"train"`, `"valid"` or `"test"`.
        index (`int`):
            Position of the row in its split's source file or order, counted before short rows are dropped, so a row
            keeps its identity (and its sampled candidates) whatever `min_history` is.
        timestamp (`float` or `None`, *optional*):
            When the target interaction happened, where the source says (MovieLens); `None` otherwise.
    """

    user: str
    history: tuple[int, ...]
    target: int
    split: str
    index: int
    timestamp: float | None = None


@dataclass
class RecDataset:
    """
    Items and rows of one recommendation dataset.

    Args:
        name (`str`):
            Dataset name (`"movielens"`, `"lastfm"`, ...).
        items (`dict[int, str]`):
            Item id -> title. Every id used by a row is a key.
        rows (`list[RecRow]`):
            All rows of all splits.
        stats (`dict[str, Any]`, *optional*):
            What loading did (rows dropped and why, items merged, ...), for reports.
    """

    name: str
    items: dict[int, str]
    rows: list[RecRow]
    stats: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[RecRow]:
        """The rows of one split, in source order."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; expected one of {', '.join(SPLITS)}.")
        return [row for row in self.rows if row.split == name]

    def title(self, item_id: int) -> str:
        """The title of an item id."""
        try:
            return self.items[item_id]
        except KeyError:
            raise ValueError(f"Dataset {self.name!r} has no item with id {item_id!r}.") from None

    def target_counts(self, split: str = "train") -> Counter[int]:
        """How often each item is the target of a row of `split` (the popularity used by baselines and negatives)."""
        return Counter(row.target for row in self.split(split))

    def summary(self) -> dict[str, Any]:
        """Counts for reports: items, rows per split, and the loading stats."""
        per_split = Counter(row.split for row in self.rows)
        return {
            "name": self.name,
            "num_items": len(self.items),
            "rows": {split: per_split.get(split, 0) for split in SPLITS},
            **self.stats,
        }


def drop_short_rows(rows: Iterable[RecRow], min_history: int, source: str) -> tuple[list[RecRow], dict[str, int]]:
    """
    Drop rows whose history holds fewer than `min_history` items (the paper keeps rows with at least 3).

    Args:
        rows (`Iterable[RecRow]`): Rows of any splits.
        min_history (`int`): Minimum history length kept; 0 keeps every row.
        source (`str`): Named in the log line (a file or dataset name).

    Returns:
        `tuple[list[RecRow], dict[str, int]]`: the kept rows, and the number dropped per split.
    """
    if min_history < 0:
        raise ValueError(f"`min_history` must be >= 0, got {min_history}.")
    kept, dropped = [], Counter()
    for row in rows:
        if len(row.history) >= min_history:
            kept.append(row)
        else:
            dropped[row.split] += 1
    if dropped:
        logger.info(
            "%s: dropped %s rows with fewer than %d history items (min_history).",
            source,
            ", ".join(f"{n} {split}" for split, n in sorted(dropped.items(), key=lambda kv: SPLITS.index(kv[0]))),
            min_history,
        )
    return kept, dict(dropped)
