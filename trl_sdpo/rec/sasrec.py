"""A sequential recommender baseline: SASRec from the `replay-rec` library, scored on the same candidate lists.

SASRec (Kang & McAuley, 2018, https://arxiv.org/abs/1808.09781) is a causal self-attention model over a user's item
sequence. The model and its loss come from `replay-rec` (`replay.nn.sequential.SasRec`, full cross-entropy over the
item catalogue); this module only turns a [`RecDataset`]'s train rows into sequences, trains the model and ranks each
example's `candidate_ids` by the model's logits. `replay-rec` is an optional extra: `pip install "trl-sdpo[baselines]"`.

Training data: the train rows of a user chain (a row's history is the previous row's history plus its target, cut to
the window), so they are joined back into one sequence per user; rows that do not chain (no user id, or rows missing
between them) start a sequence of their own, so every train row's target is trained on exactly once. Each sequence is
cut from its end into chunks of `max_seq_len + 1` items overlapping by one, and the model predicts every next item of
a chunk. At evaluation the model reads the example's own history (at most `MAX_HISTORY` items, what the LM methods
see), so `max_seq_len` defaults to `MAX_HISTORY`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from .dataset import MAX_HISTORY, RecDataset, RecRow
from .metrics import ranking_metrics, target_rank

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "trl-sdpo[baselines]"'
ITEM_FEATURE = "item_id"


def require_replay() -> Any:
    """Import `replay-rec`'s SASRec pieces lazily: the extra is optional and heavy (lightning, polars, pyarrow)."""
    try:
        from replay.data import FeatureHint, FeatureSource, FeatureType
        from replay.data.nn import TensorFeatureInfo, TensorFeatureSource, TensorSchema
        from replay.nn.sequential import SasRec
    except ImportError as error:
        raise ImportError(
            f"The SASRec baseline needs the `replay-rec` library (with its torch extra), which could not be imported "
            f"({error}). Install the optional baselines extra: {INSTALL_HINT}"
        ) from error

    return SimpleNamespace(
        FeatureHint=FeatureHint,
        FeatureSource=FeatureSource,
        FeatureType=FeatureType,
        TensorFeatureInfo=TensorFeatureInfo,
        TensorFeatureSource=TensorFeatureSource,
        TensorSchema=TensorSchema,
        SasRec=SasRec,
    )


def train_sequences(rows: Sequence[RecRow]) -> list[list[int]]:
    """
    Join next-item rows (in time order) back into item sequences, one per user where the rows chain.

    A row continues its user's current sequence when its history is the last `len(history)` items of that sequence;
    otherwise (no user id, rows missing in between, a dataset whose windows do not chain) it starts a new sequence
    `history + [target]`. Every row's target therefore ends exactly one sequence position.

    Args:
        rows (`Sequence[RecRow]`): Rows of one split, oldest first within each user.

    Returns:
        `list[list[int]]`: item id sequences, oldest first, each of length >= 1 (a row with an empty history gives
        a sequence of one item, which has nothing to predict from).
    """
    sequences: list[list[int]] = []
    current: dict[str, list[int]] = {}
    for row in rows:
        sequence = current.get(row.user) if row.user else None
        history = list(row.history)
        if sequence is not None and history and sequence[-len(history) :] == history:
            sequence.append(row.target)
            continue
        sequence = [*history, row.target]
        sequences.append(sequence)
        if row.user:
            current[row.user] = sequence
    return sequences


def _chunks(sequences: Sequence[list[int]], max_seq_len: int) -> list[list[int]]:
    """Cut each sequence from its end into windows of `max_seq_len + 1` items overlapping by one (every transition
    is predicted once; the most recent items keep the longest context)."""
    chunks = []
    for sequence in sequences:
        end = len(sequence)
        while end >= 2:
            start = max(0, end - max_seq_len - 1)
            chunks.append(sequence[start:end])
            end = start + 1
    return chunks


def _left_pad(sequences: Sequence[Sequence[int]], length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to `length` (SASRec reads the last position and aligns positional embeddings on the right)."""
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        if sequence:
            ids[i, length - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
    return ids, ids != pad


def sasrec_ranks(
    dataset: RecDataset,
    examples: Sequence[Any],
    seed: int = 0,
    epochs: int = 20,
    hidden_size: int = 64,
    num_blocks: int = 2,
    num_heads: int = 1,
    max_seq_len: int = MAX_HISTORY,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    train_split: str = "train",
    num_threads: int | None = 1,
    progress: bool = True,
) -> list[int]:
    """
    Train `replay-rec`'s SASRec on the train rows and rank each example's candidates by its next-item logits.

    The model never sees the examples' targets: it trains on `train_split` only and reads each example's `row.history`
    at evaluation. Candidates that never occur in training keep their random initial embedding (they are scored, not
    skipped). A row with an empty history gives every candidate the same score, so its target ranks last.

    Args:
        dataset (`RecDataset`): The dataset; its `train_split` rows are the training data.
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`), e.g. from `build_examples`.
        seed (`int`, *optional*, defaults to `0`): Seeds initialisation, dropout and the order of training batches.
        epochs (`int`, *optional*, defaults to `20`): Passes over the training sequences.
        hidden_size (`int`, *optional*, defaults to `64`): Embedding and hidden size.
        num_blocks (`int`, *optional*, defaults to `2`): Transformer blocks.
        num_heads (`int`, *optional*, defaults to `1`): Attention heads; must divide `hidden_size`.
        max_seq_len (`int`, *optional*, defaults to `MAX_HISTORY`): Longest input sequence (training chunks and the
            number of history items read at evaluation).
        dropout (`float`, *optional*, defaults to `0.2`): Dropout rate.
        learning_rate (`float`, *optional*, defaults to `1e-3`): Adam learning rate.
        batch_size (`int`, *optional*, defaults to `128`): Sequences per training step and per scoring batch.
        train_split (`str`, *optional*, defaults to `"train"`): Split whose rows are trained on.
        num_threads (`int` or `None`, *optional*, defaults to `1`): torch intra-op threads while training and scoring
            (restored afterwards); `None` keeps the current setting. The model's matrices are small, so one thread is
            as fast, and two threads on a busy 2-core machine were seen to run 20-50 times slower.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.

    Returns:
        `list[int]`: the target's 1-based rank among each example's `candidate_ids`, ties counted against the target
        (as [`~trl_sdpo.rec.metrics.target_rank`]).
    """
    for name, value in dict(
        epochs=epochs, hidden_size=hidden_size, num_blocks=num_blocks, num_heads=num_heads
    ).items():
        if value < 1:
            raise ValueError(f"SASRec option `{name}` must be >= 1, got {value}.")
    if max_seq_len < 1 or batch_size < 1:
        raise ValueError(
            f"SASRec options `max_seq_len` and `batch_size` must be >= 1, got {max_seq_len}, {batch_size}."
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"SASRec option `hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads})."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"SASRec option `dropout` must be in [0, 1), got {dropout}.")
    item_ids = sorted(dataset.items)
    index = {item: i for i, item in enumerate(item_ids)}
    for position, example in enumerate(examples):
        ids = list(example.candidate_ids)
        if example.row.target not in ids:
            raise ValueError(f"Row {position}: the target item {example.row.target} is not among its `candidate_ids`.")
        unknown = [item for item in (*ids, *example.row.history) if item not in index]
        if unknown:
            raise ValueError(f"Row {position}: item ids {unknown[:5]} are not items of dataset {dataset.name!r}.")
    sequences = train_sequences(dataset.split(train_split))
    chunks = [[index[item] for item in chunk] for chunk in _chunks(sequences, max_seq_len)]
    if not chunks:
        raise ValueError(f"Dataset {dataset.name!r} has no {train_split!r} sequence of two or more items to train on.")
    logger.info(
        "SASRec: %d %s rows joined into %d sequences, cut into %d chunks of at most %d items.",
        len(dataset.split(train_split)),
        train_split,
        len(sequences),
        len(chunks),
        max_seq_len + 1,
    )

    replay = require_replay()
    num_items = len(item_ids)
    pad = num_items  # replay-rec expects the padding id to equal the cardinality
    schema = replay.TensorSchema(
        [
            replay.TensorFeatureInfo(
                ITEM_FEATURE,
                is_seq=True,
                feature_type=replay.FeatureType.CATEGORICAL,
                embedding_dim=hidden_size,
                padding_value=pad,
                cardinality=num_items,
                feature_hint=replay.FeatureHint.ITEM_ID,
                feature_sources=[replay.TensorFeatureSource(replay.FeatureSource.INTERACTIONS, ITEM_FEATURE)],
            )
        ]
    )
    # fork_rng: seeding must not change the caller's global torch random state.
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            torch.manual_seed(seed)
            model = replay.SasRec.from_params(
                schema,
                embedding_dim=hidden_size,
                num_heads=num_heads,
                num_blocks=num_blocks,
                max_sequence_length=max_seq_len,
                dropout=dropout,
            )
            _train(model, chunks, pad, max_seq_len, epochs, learning_rate, batch_size, seed, progress)
            scores = _score(model, examples, index, pad, max_seq_len, batch_size, progress)
        finally:
            torch.set_num_threads(threads)
    ranks = []
    for example, row_scores in zip(examples, scores):
        ranks.append(target_rank(row_scores, list(example.candidate_ids).index(example.row.target)))
    return ranks


def _train(
    model: torch.nn.Module,
    chunks: list[list[int]],
    pad: int,
    max_seq_len: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    progress: bool,
) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.98))
    order = list(range(len(chunks)))
    shuffler = random.Random(f"sasrec:{seed}")
    steps = epochs * ((len(chunks) + batch_size - 1) // batch_size)
    model.train()
    with tqdm(total=steps, desc="SASRec training", disable=not progress) as bar:
        for _ in range(epochs):
            shuffler.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = [chunks[i] for i in order[start : start + batch_size]]
                inputs, mask = _left_pad([chunk[:-1] for chunk in batch], max_seq_len, pad)
                labels, label_mask = _left_pad([chunk[1:] for chunk in batch], max_seq_len, pad)
                output = model(
                    feature_tensors={ITEM_FEATURE: inputs},
                    padding_mask=mask,
                    positive_labels=labels.unsqueeze(-1),
                    target_padding_mask=label_mask.unsqueeze(-1),
                )
                optimizer.zero_grad()
                output["loss"].backward()
                optimizer.step()
                bar.update(1)
                bar.set_postfix(loss=f"{output['loss'].item():.3f}")


@torch.no_grad()
def _score(
    model: torch.nn.Module,
    examples: Sequence[Any],
    index: dict[int, int],
    pad: int,
    max_seq_len: int,
    batch_size: int,
    progress: bool,
) -> list[list[float]]:
    model.eval()
    scores: list[list[float]] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="SASRec scoring", disable=not progress):
        batch = examples[start : start + batch_size]
        histories = [[index[item] for item in example.row.history][-max_seq_len:] for example in batch]
        inputs, mask = _left_pad(histories, max_seq_len, pad)
        logits = model(feature_tensors={ITEM_FEATURE: inputs}, padding_mask=mask)["logits"]
        for example, history, row_logits in zip(batch, histories, logits):
            if not history:
                scores.append([0.0] * len(example.candidate_ids))
                continue
            scores.append([float(row_logits[index[item]]) for item in example.candidate_ids])
    return scores


def sasrec_baseline(dataset: RecDataset, examples: Sequence[Any], seed: int = 0, **options: Any) -> dict[str, Any]:
    """
    Ranking metrics of the SASRec baseline (see [`sasrec_ranks`] for training, scoring and `options`).

    Args:
        dataset (`RecDataset`): The dataset; its train rows are the training data.
        examples (`Sequence[RecExample]`): Rows with `candidate_ids` and `row` (a `RecRow`).
        seed (`int`, *optional*, defaults to `0`): The seed.
        **options: Keyword options of [`sasrec_ranks`] (`epochs`, `hidden_size`, `max_seq_len`, ...).

    Returns:
        `dict` with `"hr@1"`, `"hr@5"`, `"ndcg@5"`, `"mrr"` and `"n"`.
    """
    return ranking_metrics(sasrec_ranks(dataset, examples, seed=seed, **options))
