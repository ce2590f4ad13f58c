"""
Convert the LLaRA release of LastFM (or a dataset in the same shape) into the plain layout `trl_sdpo` reads.

LLaRA (github.com/ljy0ustc/LLaRA, `data/ref/lastfm/`) ships pickled pandas DataFrames `train_data.df`,
`Val_data.df` and `Test_data.df` (columns `seq`: the last 10 item ids padded with a padding id, `len_seq`: how many of
them are real, `next`: the target) and `id2name.txt` (`id::name` a line). The S-DPO repository builds its files from
the same ones. Unpickling runs code from the file, so it only happens here, on an explicit `trust_pickles=True`
(`--trust_pickles`), once; everything else in `trl_sdpo` reads the converted `items.tsv` and `*.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LLARA_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}
ITEMS_FILE = "id2name.txt"


def read_id2name(path: str | Path) -> dict[int, str]:
    """`id::name` lines (LLaRA's item table) as {id: name}, names stripped; errors name the line."""
    items: dict[int, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, name = line.partition("::")
        if not sep or not key.strip().lstrip("-").isdigit():
            raise ValueError(f"{path}, line {number}: expected `id::name`, got {line!r}.")
        if "\t" in name:  # items.tsv is tab-separated: a tab in a name would shift its columns
            raise ValueError(f"{path}, line {number}: the name {name!r} holds a tab.")
        if int(key) in items:
            raise ValueError(f"{path}, line {number}: item id {int(key)} appears twice.")
        items[int(key)] = name.strip()
    if not items:
        raise ValueError(f"{path} holds no items.")
    return items


def _rows(frame: Any, split_file: Path, items: dict[int, str], padding_id: int) -> list[dict[str, Any]]:
    missing = [c for c in ("seq", "len_seq", "next") if c not in frame.columns]
    if missing:
        raise ValueError(f"{split_file}: no column(s) {missing}; found {list(frame.columns)}.")
    rows = []
    for number, (seq, length, target) in enumerate(zip(frame["seq"], frame["len_seq"], frame["next"])):
        history = [int(i) for i in seq if int(i) != padding_id]
        if len(history) != int(length):
            raise ValueError(
                f"{split_file}, row {number}: `len_seq` is {int(length)} but `seq` holds {len(history)} items other "
                f"than the padding id {padding_id}; pass the right `padding_id`."
            )
        unknown = [i for i in (*history, int(target)) if i not in items]
        if unknown:
            raise ValueError(f"{split_file}, row {number}: item id {unknown[0]} is not in {ITEMS_FILE}.")
        rows.append({"history": history, "next": int(target)})
    return rows


def convert_llara(
    source_dir: str | Path, output_dir: str | Path, trust_pickles: bool = False, padding_id: int | None = None
) -> dict[str, int]:
    """
    Write `items.tsv` and `train/valid/test.jsonl` into `output_dir` from LLaRA's files in `source_dir`.

    Args:
        source_dir (`str` or `Path`): Folder with `id2name.txt`, `train_data.df`, `Val_data.df`, `Test_data.df`.
        output_dir (`str` or `Path`): Where the converted files go (created).
        trust_pickles (`bool`, *optional*, defaults to `False`): Must be `True`: the `.df` files are pickles, and
            reading a pickle runs code from it. Convert only files from a source you trust.
        padding_id (`int`, *optional*): The id that pads `seq`; defaults to the number of items (LLaRA's 4606 for
            LastFM).

    Returns:
        `dict[str, int]`: rows written per split, and `items`.
    """
    if not trust_pickles:
        raise PermissionError(
            "The LLaRA files are pickled DataFrames and reading a pickle can run arbitrary code. Pass "
            "trust_pickles=True (`--trust_pickles`) to convert files from a source you trust, once."
        )
    import pandas as pd

    source, output = Path(source_dir), Path(output_dir)
    needed = [source / ITEMS_FILE, *(source / name for name in LLARA_FILES.values())]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{source} lacks {', '.join(absent)} (LLaRA's data/ref/<dataset>/ layout).")
    items = read_id2name(source / ITEMS_FILE)
    padding_id = len(items) if padding_id is None else padding_id
    converted = {
        split: _rows(pd.read_pickle(source / name), source / name, items, padding_id)
        for split, name in LLARA_FILES.items()
    }
    output.mkdir(parents=True, exist_ok=True)
    lines = ["item_id\ttitle"] + [f"{i}\t{name}" for i, name in sorted(items.items())]
    (output / "items.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, rows in converted.items():
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (output / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return {"items": len(items), **{split: len(rows) for split, rows in converted.items()}}
