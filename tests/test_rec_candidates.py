"""Candidate samplers and the leak check: reproducible, uniform and non-leaking by default; exact reference copy in
sdpo-compat mode, which the leak check catches."""

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from trl_sdpo.rec import (
    RecDataset,
    RecRow,
    leak_check,
    leak_check_lists,
    leak_check_records,
    load_lastfm,
    load_sdpo_json,
    sample_candidates,
    sdpo_records,
    write_sdpo_json,
)

SHARED = Path(os.environ.get("TRL_SDPO_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
LASTFM = SHARED / "data" / "lastfm"
needs_lastfm = pytest.mark.skipif(not (LASTFM / "items.tsv").is_file(), reason=f"shared LastFM data absent ({LASTFM})")

CHI2_19_DF_P001 = 43.82  # chi-square critical value, 19 degrees of freedom, p = 0.001


def synthetic(num_items=1000, rows_per_split=(3000, 600, 0), seed=0) -> RecDataset:
    """Users with random histories; targets drawn from a skewed distribution so that targets repeat across rows."""
    rng = random.Random(seed)
    items = {i * 3 + 7: f"item {i}" for i in range(num_items)}  # non-contiguous ids: the pool order must be by id
    ids = sorted(items)
    weights = [1 / (r + 1) for r in range(num_items)]
    rows = []
    for split, n in zip(("train", "valid", "test"), rows_per_split):
        for index in range(n):
            target = rng.choices(ids, weights)[0]
            history = tuple(rng.sample([i for i in ids if i != target][:300], rng.randint(3, 10)))
            rows.append(RecRow(str(index % 50), history, target, split, index))
    return RecDataset("synthetic", items, rows)


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def lastfm():
    return load_lastfm(LASTFM)


def reference_sdpo_candidates(items, history, target, k=20):
    """The reference pipeline, literally as its README states it (global `random`, pool list in item-id order)."""
    state = random.getstate()
    try:
        pool = [i for i in sorted(items) if i not in history and i != target]
        random.seed(target)
        candidates = random.sample(pool, k - 1)
        candidates.append(target)
        random.seed(target)
        random.shuffle(candidates)
        return candidates
    finally:
        random.setstate(state)


# --- default sampler -----------------------------------------------------------------------------------------------


def test_default_lists_hold_target_and_distinct_non_history_items(data):
    rows = data.split("train")[:500]
    for row, candidates in zip(rows, sample_candidates(data, rows)):
        assert len(candidates) == len(set(candidates)) == 20
        assert candidates.count(row.target) == 1
        assert not set(candidates) & set(row.history)
        assert set(candidates) <= set(data.items)


def test_default_is_reproducible_and_independent_of_the_other_rows(data):
    rows = data.split("train")[:200]
    first = sample_candidates(data, rows, seed=3)
    assert sample_candidates(data, rows, seed=3) == first
    assert sample_candidates(data, rows[::-1], seed=3) == first[::-1]
    assert sample_candidates(data, rows, seed=4) != first


def test_default_does_not_depend_on_the_target(data):
    """Same row identity, another target: the same negatives in the same places (the target's slot aside)."""
    for row in data.split("train")[:100]:
        (before,) = sample_candidates(data, [row], num_candidates=10)
        other = next(i for i in sorted(data.items) if i not in before and i not in row.history)
        moved = RecRow(row.user, row.history, other, row.split, row.index)
        (after,) = sample_candidates(data, [moved], num_candidates=10)
        assert after.index(other) == before.index(row.target)
        assert [c for c in after if c != other] == [c for c in before if c != row.target]


def test_default_target_position_is_uniform(data):
    rows = data.split("train")
    positions = Counter(c.index(r.target) for r, c in zip(rows, sample_candidates(data, rows)))
    expected = len(rows) / 20
    chi2 = sum((positions[p] - expected) ** 2 / expected for p in range(20))
    assert chi2 < CHI2_19_DF_P001, positions


def test_default_negatives_are_uniform_over_the_catalog():
    # every item equally eligible: no histories to exclude, targets outside a small catalog
    items = {i: str(i) for i in range(40)}
    rows = [RecRow("", (), 40 + (i % 3), "train", i) for i in range(2000)]
    dataset = RecDataset("u", {**items, 40: "a", 41: "b", 42: "c"}, rows)
    counts = Counter(c for cs in sample_candidates(dataset, rows, num_candidates=6) for c in cs if c < 40)
    expected = 2000 * 5 / 40
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(40))
    assert chi2 < 72.05, counts  # 39 degrees of freedom, p = 0.001


def test_sampler_arguments_are_checked(data):
    rows = data.split("train")[:1]
    with pytest.raises(ValueError, match="Unknown sampler 'compat'"):
        sample_candidates(data, rows, sampler="compat")
    with pytest.raises(ValueError, match="at least 2"):
        sample_candidates(data, rows, num_candidates=1)
    tiny = RecDataset("t", {i: str(i) for i in range(6)}, [RecRow("", (0, 1, 2), 3, "train", 0)])
    with pytest.raises(ValueError, match="train row 0: only 2 items .* 4 negatives"):
        sample_candidates(tiny, tiny.rows, num_candidates=5)


# --- sdpo-compat -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [35, 1000])  # below and above random.sample's set-based selection size
def test_compat_matches_the_reference_procedure(num_items):
    dataset = synthetic(num_items=num_items, rows_per_split=(300, 0, 0))
    rows = dataset.split("train")
    for row, candidates in zip(rows, sample_candidates(dataset, rows, sampler="sdpo-compat")):
        assert candidates == reference_sdpo_candidates(dataset.items, row.history, row.target)


@needs_lastfm
def test_compat_reproduces_the_reference_validation_file_row_for_row(lastfm, tmp_path):
    rows = lastfm.split("valid")
    assert len(rows) == 2767
    records = sdpo_records(lastfm, rows, sample_candidates(lastfm, rows, sampler="sdpo-compat"))
    reference = load_sdpo_json(LASTFM / "sdpo_format" / "lastfm-val.json")
    for i, (ours, theirs) in enumerate(zip(records, reference)):
        assert ours == theirs, i
    path = tmp_path / "val.json"
    write_sdpo_json(path, records)
    assert path.read_bytes() == (LASTFM / "sdpo_format" / "lastfm-val.json").read_bytes()


# --- leak check ------------------------------------------------------------------------------------------------------


def test_leak_check_is_at_chance_with_the_default_sampler(data):
    result = leak_check(data, "valid", "default")
    assert result["n"] == 600 and result["chance"] == 0.05
    assert abs(result["hr@1"] - 0.05) < 0.02
    assert result["verdict"].startswith("no leak")


def test_leak_check_catches_target_seeded_lists(data):
    result = leak_check(data, "valid", "sdpo-compat")
    assert result["hr@1"] > 0.9
    assert result["verdict"].startswith("LEAK")


def test_leak_check_ignores_popularity():
    """Targets are popular items, negatives uniform: a popularity guess beats chance, the leak check must not."""
    dataset = synthetic(num_items=1000, rows_per_split=(3000, 600, 0), seed=1)
    valid = dataset.split("valid")
    popular = dataset.target_counts("train")
    lists = sample_candidates(dataset, valid)
    by_popularity = sum(max(c, key=lambda i: popular[i]) == r.target for r, c in zip(valid, lists)) / len(valid)
    assert by_popularity > 0.15  # the signal exists...
    assert leak_check(dataset, "valid", "default")["hr@1"] < 0.08  # ...and is not what the check measures


def test_leak_check_says_when_the_catalog_is_too_small():
    lists = [random.Random(i).sample(range(25), 20) for i in range(40)]
    result = leak_check_lists(lists, [c[0] for c in lists], lists, [c[1] for c in lists], catalog=range(25))
    assert result["verdict"].startswith("INCONCLUSIVE")


@needs_lastfm
def test_leak_check_on_lastfm_default_vs_compat(lastfm):
    default = leak_check(lastfm, "valid", "default")
    assert 0.04 < default["hr@1"] < 0.06 and default["verdict"].startswith("no leak")
    compat = leak_check(lastfm, "valid", "sdpo-compat")
    assert compat["hr@1"] > 0.95 and compat["verdict"].startswith("LEAK")


@needs_lastfm
def test_leak_check_on_the_reference_file(lastfm):
    train = lastfm.split("train")
    train_records = sdpo_records(lastfm, train, sample_candidates(lastfm, train, sampler="sdpo-compat"))
    reference = json.loads((LASTFM / "sdpo_format" / "lastfm-val.json").read_text())
    catalog = [lastfm.items[i] for i in sorted(lastfm.items)]
    assert leak_check_records(train_records, reference, catalog=catalog)["hr@1"] > 0.95
