"""
From a `RecDataset` to model-ready rows: examples (prompt, candidate titles, target), TRL's prompt/completion SFT
dataset, and S-DPO preference datasets (one chosen title, `num_negatives` rejected titles).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .candidates import row_seed, sample_candidates
from .dataset import RecDataset, RecRow
from .prompts import DATASET_KINDS, DEFAULT_TEMPLATE, build_prompt, format_completion

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "popular", "model")
# Salts that give the template and negative choices their own random streams, apart from the candidate sampler's.
_TEMPLATE_SALT = 0x7E3779B97F4A7C15
_NEGATIVE_SALT = 0x3C6EF372FE94F82B


@dataclass
class RecExample:
    """
    One row ready for a model.

    Args:
        prompt (`str` or `list[dict]`): The prompt (standard string ending with "Answer:", or messages).
        candidates (`list[str]`): Candidate titles, in the order shown in the prompt.
        target (`str`): The target's title.
        row (`RecRow`): The source row.
        candidate_ids (`list[int]`): Candidate item ids, aligned with `candidates`.
    """

    prompt: str | list[dict]
    candidates: list[str]
    target: str
    row: RecRow
    candidate_ids: list[int]

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def target_position(self) -> int:
        """Index of the target among the candidates (by id, so duplicate titles do not confuse it)."""
        return self.candidate_ids.index(self.row.target)


def select_rows(dataset: RecDataset, split: str, max_rows: int | None = None, seed: int = 0) -> list[RecRow]:
    """The rows of `split`; with `max_rows`, a seeded uniform subset of that size kept in source order."""
    rows = dataset.split(split)
    if max_rows is not None and max_rows < len(rows):
        if max_rows < 0:
            raise ValueError(f"`max_rows` must be >= 0, got {max_rows}.")
        keep = sorted(random.Random(f"{seed}|{dataset.name}|{split}|rows").sample(range(len(rows)), max_rows))
        rows = [rows[i] for i in keep]
    return rows


_warned_duplicate_titles = False


def _warn_duplicate_titles(n: int) -> None:
    global _warned_duplicate_titles
    if n and not _warned_duplicate_titles:
        _warned_duplicate_titles = True
        logger.warning(
            "%d rows show two candidates with the same title: a generated answer cannot tell them apart. Negatives "
            "skip titles equal to the target's. Shown once.",
            n,
        )


def build_examples(
    dataset: RecDataset,
    split: str,
    num_candidates: int = 20,
    sampler: str = "default",
    seed: int = 0,
    conversational: bool = False,
    paraphrase: bool = False,
    max_rows: int | None = None,
    template: int = DEFAULT_TEMPLATE,
) -> list[RecExample]:
    """
    Prompts with candidates for the rows of one split.

    Args:
        dataset (`RecDataset`): The dataset.
        split (`str`): `"train"`, `"valid"` or `"test"`.
        num_candidates (`int`, *optional*, defaults to `20`): Candidates per row, target included.
        sampler (`str`, *optional*, defaults to `"default"`): See `trl_sdpo.rec.candidates.sample_candidates`.
        seed (`int`, *optional*, defaults to `0`): Seeds candidates, paraphrase choice and the `max_rows` subset.
        conversational (`bool`, *optional*, defaults to `False`): Prompts as messages for chat models.
        paraphrase (`bool`, *optional*, defaults to `False`):
            Pick a template per row (seeded by the row's identity) instead of `template`.
        max_rows (`int`, *optional*): Keep a seeded uniform subset of this many rows (in source order).
        template (`int`, *optional*, defaults to `0`): The template used without `paraphrase`.

    Returns:
        `list[RecExample]`.
    """
    rows = select_rows(dataset, split, max_rows, seed)
    candidate_ids = sample_candidates(dataset, rows, num_candidates, sampler, seed)
    kind = DATASET_KINDS.get(dataset.name, "item")
    examples, duplicated = [], 0
    for row, ids in zip(rows, candidate_ids):
        titles = [dataset.title(i) for i in ids]
        duplicated += len(set(titles)) < len(titles)
        rng = random.Random(row_seed(seed, row) ^ _TEMPLATE_SALT) if paraphrase else None
        prompt = build_prompt(
            [dataset.title(i) for i in row.history],
            titles,
            template=None if paraphrase else template,
            conversational=conversational,
            rng=rng,
            kind=kind,
        )
        examples.append(RecExample(prompt, titles, dataset.title(row.target), row, list(ids)))
    _warn_duplicate_titles(duplicated)
    return examples


def _one_format(examples: Sequence[RecExample]) -> bool:
    if not examples:
        raise ValueError("No examples given.")
    conversational = examples[0].conversational
    for i, example in enumerate(examples):
        if example.conversational != conversational:
            raise ValueError(f"Example {i}: mixes standard and conversational prompts; use one format throughout.")
    return conversational


def build_sft_dataset(examples: Sequence[RecExample]) -> Dataset:
    """
    TRL's prompt/completion format: the completion is the target title (`" " + title` after a standard prompt, an
    assistant message for a conversational one), so SFT trains on the answer only.
    """
    from datasets import Dataset

    conversational = _one_format(examples)
    return Dataset.from_dict(
        {
            "prompt": [e.prompt for e in examples],
            "completion": [format_completion(e.target, conversational) for e in examples],
        }
    )


def _wrong_candidates(example: RecExample, index: int, needed: int) -> list[tuple[int, str]]:
    """(position, title) of the candidates that are not the target, one per distinct title, in list order."""
    seen = {example.target}
    wrong = []
    for position, (item_id, title) in enumerate(zip(example.candidate_ids, example.candidates)):
        if item_id != example.row.target and title not in seen:
            seen.add(title)
            wrong.append((position, title))
    if len(wrong) < needed:
        raise ValueError(
            f"Example {index} ({example.row.split} row {example.row.index}): only {len(wrong)} candidates with a "
            f"title other than the target's, fewer than num_negatives={needed}. Lower `num_negatives` or raise "
            "`num_candidates`."
        )
    return wrong


def build_preference_dataset(
    examples: Sequence[RecExample],
    num_negatives: int = 3,
    strategy: str = "random",
    seed: int = 0,
    dataset: RecDataset | None = None,
    model: Any = None,
    tokenizer: Any = None,
    batch_size: int = 8,
) -> Dataset:
    """
    An S-DPO preference dataset: `prompt`, `chosen` (the target title) and `rejected` (a list of `num_negatives`
    wrong candidate titles from the row's own candidates, never equal to the chosen title, all distinct).

    Args:
        examples (`Sequence[RecExample]`): From `build_examples`.
        num_negatives (`int`, *optional*, defaults to `3`): Rejected titles per row (the paper's default).
        strategy (`str`, *optional*, defaults to `"random"`):
            - `"random"`: a uniform draw, seeded by `seed` and the row's identity (the paper; fixed across epochs).
            - `"popular"`: the most frequent train-split targets among the wrong candidates (needs `dataset`).
            - `"model"`: the wrong candidates `model` scores highest (hard negatives; needs `model`, `tokenizer`),
              by summed completion log-prob (`trl_sdpo.rec.ranking.score_candidates`).
            Ties are broken by position in the candidate list, which is random.
        seed (`int`, *optional*, defaults to `0`): Seeds the `"random"` strategy.
        dataset (`RecDataset`, *optional*): Popularity source for `"popular"`.
        model, tokenizer (*optional*): Scorer for `"model"`.
        batch_size (`int`, *optional*, defaults to `8`): Scoring batch size for `"model"`.

    Returns:
        `datasets.Dataset` with columns `prompt`, `chosen`, `rejected`.
    """
    from datasets import Dataset

    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown negative strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}.")
    if num_negatives < 1:
        raise ValueError(f"`num_negatives` must be at least 1, got {num_negatives}.")
    conversational = _one_format(examples)
    wrong = [_wrong_candidates(e, i, num_negatives) for i, e in enumerate(examples)]

    if strategy == "random":
        negatives = [
            [title for _, title in random.Random(row_seed(seed, e.row) ^ _NEGATIVE_SALT).sample(w, num_negatives)]
            for e, w in zip(examples, wrong)
        ]
    elif strategy == "popular":
        if dataset is None:
            raise ValueError("strategy='popular' ranks candidates by train-set frequency and needs `dataset`.")
        counts = dataset.target_counts("train")
        negatives = [
            [
                title
                for _, title in sorted(w, key=lambda pt, e=e: (-counts[e.candidate_ids[pt[0]]], pt[0]))[:num_negatives]
            ]
            for e, w in zip(examples, wrong)
        ]
    else:
        if model is None or tokenizer is None:
            raise ValueError("strategy='model' scores the candidates with a model and needs `model` and `tokenizer`.")
        from .ranking import score_examples  # lazy: pulls in torch and the core log-prob code

        scores = score_examples(model, tokenizer, examples, batch_size=batch_size)
        negatives = [
            [title for _, title in sorted(w, key=lambda pt, s=s: (-s[pt[0]], pt[0]))[:num_negatives]]
            for w, s in zip(wrong, scores)
        ]

    return Dataset.from_dict(
        {
            "prompt": [e.prompt for e in examples],
            "chosen": [format_completion(e.target, conversational) for e in examples],
            "rejected": [[format_completion(t, conversational) for t in titles] for titles in negatives],
        }
    )
