"""
Loaders for the recommendation datasets: MovieLens-100K from the `recbole` wheel, any dataset in the LastFM layout
(`items.tsv` + `train/valid/test.jsonl`, also used for Goodreads), and the S-DPO reference JSON format.

Everything is read as plain text; nothing is unpickled here (the original LLaRA files are pickled DataFrames: convert
them once with `trl-sdpo data --convert_llara DIR --trust_pickles`, `trl_sdpo.rec.convert`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dataset import MAX_HISTORY, SPLITS, RecDataset, RecRow, drop_short_rows
from .movielens import load_movielens  # noqa: F401  (re-exported: part of this module's interface)

logger = logging.getLogger(__name__)

DATASET_NAMES = ("movielens", "lastfm", "goodreads")
LAYOUT_FILES = ("items.tsv", "train.jsonl", "valid.jsonl", "test.jsonl")


# ---------------------------------------------------------------------------------------------------------------------
# The LastFM layout: items.tsv + train/valid/test.jsonl
# ---------------------------------------------------------------------------------------------------------------------


def read_items_tsv(path: str | Path) -> dict[int, str]:
    """
    Read `item_id<TAB>title` lines (an optional header line first). Titles are stripped of surrounding white space,
    as the S-DPO pipeline does.

    Raises:
        ValueError: naming the file and line, for an empty file, a non-integer or repeated id, or a missing title.
    """
    path = Path(path)
    items: dict[int, str] = {}
    first = True
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            raw_id, _, title = line.partition("\t")
            try:
                item_id = int(raw_id)
            except ValueError:
                if first:  # header line such as "item_id<TAB>title"
                    first = False
                    continue
                raise ValueError(f"{path}:{lineno}: item id {raw_id!r} is not an integer.") from None
            first = False
            if not title.strip():
                raise ValueError(f"{path}:{lineno}: item {item_id} has no title (expected `item_id<TAB>title`).")
            if item_id in items:
                raise ValueError(f"{path}:{lineno}: item id {item_id} appears twice.")
            items[item_id] = title.strip()
    if not items:
        raise ValueError(f"{path}: empty file; expected `item_id<TAB>title` lines.")
    _warn_duplicate_titles(items, path)
    return items


def _warn_duplicate_titles(items: dict[int, str], source: Any) -> None:
    counts = Counter(items.values())
    duplicates = [title for title, n in counts.items() if n > 1]
    if duplicates:
        logger.warning(
            "%s: %d titles are shared by several items (e.g. %r); a generated title cannot tell them apart. Make "
            "titles unique (append a year or author) for a clean evaluation.",
            source,
            len(duplicates),
            duplicates[:3],
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_rows_jsonl(path: str | Path, split: str, items: dict[int, str]) -> tuple[list[RecRow], int]:
    """
    Read `{"history": [item ids, oldest first], "next": item id}` lines (an optional `"user"` field is kept).
    Histories longer than `MAX_HISTORY` keep their most recent items.

    Returns:
        `tuple[list[RecRow], int]`: the rows (`index` = position among the file's rows) and how many histories were
        cut to `MAX_HISTORY`.

    Raises:
        ValueError: naming the file and line, for bad JSON, missing fields, wrong types, unknown item ids or an
        empty file.
    """
    path = Path(path)
    rows, truncated = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}.")
            history, target = record.get("history"), record.get("next")
            if not isinstance(history, list) or not all(_is_int(i) for i in history):
                raise ValueError(
                    f"{path}:{lineno}: field `history` must be a list of integer item ids, got {history!r:.80}."
                )
            if not _is_int(target):
                raise ValueError(f"{path}:{lineno}: field `next` must be an integer item id, got {target!r:.80}.")
            for item_id in (*history, target):
                if item_id not in items:
                    raise ValueError(f"{path}:{lineno}: item id {item_id} is not in items.tsv.")
            user = record.get("user", "")
            if not isinstance(user, (str, int)) or isinstance(user, bool):
                raise ValueError(f"{path}:{lineno}: field `user` must be a string or an integer, got {user!r:.80}.")
            truncated += len(history) > MAX_HISTORY
            rows.append(RecRow(str(user), tuple(history[-MAX_HISTORY:]), target, split, len(rows)))
    if not rows:
        raise ValueError(f"{path}: empty file; expected one JSON object a line.")
    return rows, truncated


def load_lastfm(data_dir: str | Path, min_history: int = 3, name: str = "lastfm") -> RecDataset:
    """
    Load a dataset in the LastFM layout: `items.tsv` and `train.jsonl`, `valid.jsonl`, `test.jsonl`.

    The layout is documented in `docs/datasets.md`; Goodreads and any other dataset converted to it load the same way.

    Args:
        data_dir (`str` or `Path`):
            Folder holding the four files.
        min_history (`int`, *optional*, defaults to `3`):
            Rows with a shorter history are dropped (the paper's rule).
        name (`str`, *optional*, defaults to `"lastfm"`):
            Name given to the dataset.

    Returns:
        `RecDataset`.
    """
    folder = Path(data_dir)
    missing = [f for f in LAYOUT_FILES if not (folder / f).is_file()]
    if missing:
        pickled = (
            sorted(p.name for p in folder.glob("*") if p.suffix in (".df", ".pkl", ".pickle"))
            if folder.is_dir()
            else []
        )
        hint = (
            f" Found pickled files {pickled}: they are never unpickled here; convert them once to this layout with "
            "`trl-sdpo data --dataset NAME --data_dir OUT --convert_llara THIS_FOLDER --trust_pickles` "
            "(docs/datasets.md)."
            if pickled
            else ""
        )
        raise FileNotFoundError(
            f"{name}: {folder} lacks {', '.join(missing)}. Expected items.tsv (`item_id<TAB>title`) and "
            f'train/valid/test.jsonl (`{{"history": [ids], "next": id}}` a line); see docs/datasets.md.{hint}'
        )
    items = read_items_tsv(folder / "items.tsv")
    rows, truncated = [], 0
    for split in SPLITS:
        split_rows, split_truncated = read_rows_jsonl(folder / f"{split}.jsonl", split, items)
        rows += split_rows
        truncated += split_truncated
    if truncated:
        logger.info(
            "%s: %d histories longer than %d items were cut to their most recent items.", name, truncated, MAX_HISTORY
        )
    rows, dropped = drop_short_rows(rows, min_history, name)
    stats = {"rows_dropped_short_history": dropped, "histories_truncated": truncated, "min_history": min_history}
    return RecDataset(name=name, items=items, rows=rows, stats=stats)


def default_data_dir(name: str) -> Path | None:
    """`$TRL_SDPO_DATA_DIR/<name>` or `$TRL_SDPO_SHARED/data/<name>` when set and present, else `None`."""
    for variable, parts in (("TRL_SDPO_DATA_DIR", (name,)), ("TRL_SDPO_SHARED", ("data", name))):
        if os.environ.get(variable):
            folder = Path(os.environ[variable], *parts)
            if folder.is_dir():
                return folder
    return None


def load_dataset_by_name(name: str, data_dir: str | Path | None = None, min_history: int = 3) -> RecDataset:
    """
    Load `"movielens"`, `"lastfm"` or `"goodreads"`.

    MovieLens comes from the `recbole` wheel unless `data_dir` is given. LastFM and Goodreads are not shipped: pass
    `data_dir` (a folder in the LastFM layout, see `docs/datasets.md`) or set `TRL_SDPO_DATA_DIR` (holding a
    `<name>/` folder). Any other name loads `data_dir` in the LastFM layout under that name.
    """
    key = name.lower()
    if key in ("movielens", "ml-100k", "ml100k"):
        return load_movielens(data_dir, min_history=min_history)
    folder = Path(data_dir) if data_dir is not None else default_data_dir(key)
    if folder is None:
        known = key in DATASET_NAMES
        raise FileNotFoundError(
            f"Dataset {name!r} is not shipped with trl-sdpo"
            + ("" if known else f" (built-in names: {', '.join(DATASET_NAMES)})")
            + ": pass its folder (`data_dir` / `--data-dir`) holding items.tsv and train/valid/test.jsonl, or set "
            f"TRL_SDPO_DATA_DIR to a folder holding `{key}/`. docs/datasets.md describes the files."
        )
    return load_lastfm(folder, min_history=min_history, name=key)


# ---------------------------------------------------------------------------------------------------------------------
# The S-DPO reference JSON format
# ---------------------------------------------------------------------------------------------------------------------

SDPO_FIELDS = ("historyList", "itemList", "trueSelection")


def _check_sdpo_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    for key in SDPO_FIELDS:
        if key not in record:
            raise ValueError(f"{where}: missing field `{key}`.")
    history, candidates, target = (record[k] for k in SDPO_FIELDS)
    if not isinstance(history, str):
        raise ValueError(
            f"{where}: field `historyList` must be a string of titles joined by '::', got {history!r:.80}."
        )
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) and c for c in candidates):
        raise ValueError(f"{where}: field `itemList` must be a non-empty list of titles, got {candidates!r:.80}.")
    if not isinstance(target, str) or not target:
        raise ValueError(f"{where}: field `trueSelection` must be a non-empty title, got {target!r:.80}.")
    if target not in candidates:
        raise ValueError(f"{where}: `trueSelection` {target!r} is not in `itemList`.")
    return record


def load_sdpo_json(path: str | Path) -> list[dict[str, Any]]:
    """
    Read and validate a file in the S-DPO reference format: a JSON list (or JSON lines) of
    `{"historyList": "a::b::c", "itemList": [titles], "trueSelection": title}`.

    Returns:
        `list[dict]`: the records as read.

    Raises:
        ValueError: naming the file and the row (JSON list) or line (JSON lines) of the first malformed record.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: empty file; expected a JSON list of S-DPO records.")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
        checked = [_check_sdpo_record(r, f"{path}: row {i}") for i, r in enumerate(records)]
    else:
        checked = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
                checked.append(_check_sdpo_record(record, f"{path}:{lineno}"))
    if not checked:
        raise ValueError(f"{path}: no records.")
    return checked


def sdpo_records(dataset: RecDataset, rows: Sequence[RecRow], candidates: Sequence[Sequence[int]]) -> list[dict]:
    """Rows and their candidate ids in the S-DPO reference format (titles; history joined with `"::"`)."""
    if len(rows) != len(candidates):
        raise ValueError(f"Got {len(rows)} rows but {len(candidates)} candidate lists.")
    return [
        {
            "historyList": "::".join(dataset.title(i) for i in row.history),
            "itemList": [dataset.title(i) for i in ids],
            "trueSelection": dataset.title(row.target),
        }
        for row, ids in zip(rows, candidates)
    ]


def write_sdpo_json(path: str | Path, records: Sequence[dict]) -> None:
    """Write records as the reference repository does (`json.dump(..., indent=4)`), so files compare byte for byte."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(list(records), f, indent=4)
