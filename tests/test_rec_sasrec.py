"""The SASRec baseline (`trl_sdpo.rec.sasrec`): sequences from rows, the missing-extra error, and learning a
deterministic next-item rule (the last test needs the optional `baselines` extra, replay-rec)."""

import importlib.util
import sys

import pytest

from trl_sdpo.rec.builders import RecExample, build_examples
from trl_sdpo.rec.dataset import MAX_HISTORY, RecDataset, RecRow
from trl_sdpo.rec.sasrec import sasrec_baseline, sasrec_ranks, train_sequences

NUM_ITEMS = 40


def _rows(user: str, sequence: list[int], split: str, first_index: int) -> list[RecRow]:
    """One row per item after the first, history = the previous items (at most MAX_HISTORY), as the loaders do."""
    return [
        RecRow(
            user=user, history=tuple(sequence[max(0, t - MAX_HISTORY) : t]), target=sequence[t], split=split, index=i
        )
        for i, t in enumerate(range(1, len(sequence)), start=first_index)
    ]


def _next(item: int) -> int:
    return item % NUM_ITEMS + 1


def _run(start: int, length: int) -> list[int]:
    sequence = [start]
    while len(sequence) < length:
        sequence.append(_next(sequence[-1]))
    return sequence


def _successor_dataset() -> RecDataset:
    """Items 1..40 where item i is always followed by i + 1 (40 by 1); train users cover every transition."""
    rows = []
    for user in range(30):
        rows += _rows(f"u{user}", _run(1 + (user * 7) % NUM_ITEMS, 15), "train", len(rows))
    valid = []
    for user in range(20):
        valid += _rows(f"v{user}", _run(1 + (user * 11) % NUM_ITEMS, 6), "valid", len(valid))[-1:]
    items = {i: f"Item {i}" for i in range(1, NUM_ITEMS + 1)}
    return RecDataset(name="successor", items=items, rows=rows + valid)


def test_train_sequences_rejoins_chained_windows():
    long = list(range(1, 26))  # longer than MAX_HISTORY, so the windows are truncated
    rows = _rows("a", long, "train", 0) + _rows("", [7, 8, 9], "train", 100)
    # a user whose rows do not chain (a row missing in between) gets two sequences, nothing dropped
    broken = _rows("b", [30, 31, 32, 33, 34], "train", 200)
    rows += broken[:2] + broken[3:]
    sequences = train_sequences(rows)
    assert sequences == [long, [7, 8], [7, 8, 9], [30, 31, 32], [30, 31, 32, 33, 34]]


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "replay", None)  # makes `import replay...` raise ImportError
    dataset = _successor_dataset()
    examples = build_examples(dataset, "valid", num_candidates=10, seed=0)
    with pytest.raises(ImportError, match=r'pip install "trl-sdpo\[baselines\]"'):
        sasrec_ranks(dataset, examples, epochs=1, progress=False)


def test_bad_options_and_rows_are_refused_before_training():
    dataset = _successor_dataset()
    examples = build_examples(dataset, "valid", num_candidates=10, seed=0)
    with pytest.raises(ValueError, match="hidden_size"):
        sasrec_ranks(dataset, examples, hidden_size=10, num_heads=3)
    bad = RecExample(prompt="", candidates=["Item 1"], target="Item 2", row=examples[0].row, candidate_ids=[1])
    with pytest.raises(ValueError, match="Row 0: the target item"):
        sasrec_ranks(dataset, [bad])


@pytest.mark.skipif(
    importlib.util.find_spec("replay") is None,
    reason='replay-rec is not installed (optional extra: pip install "trl-sdpo[baselines]")',
)
def test_sasrec_learns_a_deterministic_successor():
    dataset = _successor_dataset()
    examples = build_examples(dataset, "valid", num_candidates=10, seed=0)
    # Independent check of the fixture: each target is the successor of the last history item.
    assert all(ex.row.target == _next(ex.row.history[-1]) for ex in examples)
    empty = RecExample(
        prompt="", candidates=["Item 1", "Item 2", "Item 3"], target="Item 2", row=RecRow("w", (), 2, "valid", 99),
        candidate_ids=[1, 2, 3],
    )  # fmt: skip
    options = dict(epochs=30, hidden_size=32, batch_size=16, dropout=0.1, learning_rate=5e-3, progress=False)
    ranks = sasrec_ranks(dataset, [*examples, empty], seed=0, **options)
    assert all(1 <= rank <= len(ex.candidate_ids) for rank, ex in zip(ranks, [*examples, empty]))
    assert ranks[-1] == 3  # no history: all candidates tie, and ties count against the target
    hr1 = sum(rank == 1 for rank in ranks[:-1]) / len(examples)
    assert hr1 >= 0.9  # chance is 1/10 with 10 candidates; the fixture is fully learnable (1.0 seen)
    assert sasrec_baseline(dataset, examples, seed=0, **options)["hr@1"] == hr1  # same seed, same training
