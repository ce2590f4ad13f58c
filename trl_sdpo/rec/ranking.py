"""Ranking evaluation by likelihood: every candidate title scored as the completion of the prompt.

A candidate's score is its summed log-probability given the prompt, computed exactly as S-DPO training computes the
chosen/rejected log-probs (same tokenization, EOS appended, same log-prob function), so ranking metrics measure what
the loss optimizes and are defined for every row: no response can be invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..collator import pad_multi_completion
from ..data import tokenize_completions
from ..logprobs import completion_logps
from .metrics import ranking_metrics, target_rank
from .prompts import format_completion


def _as_completions(prompt: str | list[dict[str, Any]], titles: Sequence[str]) -> list[Any]:
    # The completions the builders train on: " " + title after a standard prompt, an assistant message otherwise
    return [format_completion(title, conversational=not isinstance(prompt, str)) for title in titles]


def score_candidates(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, Any]]],
    candidates: Sequence[Sequence[str]],
    batch_size: int = 8,
    prefix_sharing: bool = True,
    show_progress: bool = True,
    candidate_chunk_size: int | None = None,
) -> list[list[float]]:
    """
    Summed log-probability of each candidate title as the completion of its prompt.

    Each title becomes the completion the SFT and preference datasets train on
    ([`~trl_sdpo.rec.prompts.format_completion`]: `" " + title` after a standard prompt, an assistant message after a
    conversational one) and is tokenized with [`~trl_sdpo.data.tokenize_completions`] (prompt and completion jointly,
    EOS appended to text completions; messages through the chat template), padded with [`~trl_sdpo.pad_multi_completion`] and scored with
    [`~trl_sdpo.completion_logps`] under `torch.no_grad()` in eval mode (the model's mode is restored after).

    Args:
        model: A causal LM (a `PeftModel` too).
        tokenizer: Its tokenizer.
        prompts (`Sequence`): Strings or message lists.
        candidates (`Sequence[Sequence[str]]`): Each prompt's candidate titles.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts (prompt chunks, with `candidate_chunk_size`) per forward pass.
        prefix_sharing (`bool`, *optional*, defaults to `True`): Passed to `completion_logps`.
        show_progress (`bool`, *optional*, defaults to `True`): Show a progress bar.
        candidate_chunk_size (`int`, *optional*):
            Score at most this many candidates of a prompt per forward pass, bounding memory to
            `batch_size * candidate_chunk_size` sequences. Default: all of a prompt's candidates at once.

    Returns:
        `list[list[float]]`: one score per candidate, in the given order.
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"Got {len(prompts)} prompts but {len(candidates)} candidate lists.")
    if batch_size < 1 or (candidate_chunk_size is not None and candidate_chunk_size < 1):
        raise ValueError(
            f"batch_size and candidate_chunk_size must be positive, got {batch_size}, {candidate_chunk_size}."
        )
    for i, titles in enumerate(candidates):
        if len(titles) == 0:
            raise ValueError(f"Row {i}: `candidates` is empty.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with.")

    # Work items: (row, first candidate, prompt ids, completion ids), grouped by prompt length to pad little
    items = []
    for i, (prompt, titles) in enumerate(zip(prompts, candidates)):
        prompt_ids, completion_ids = tokenize_completions(tokenizer, prompt, _as_completions(prompt, titles))
        chunk = candidate_chunk_size or len(titles)
        for start in range(0, len(titles), chunk):
            items.append((i, start, prompt_ids, completion_ids[start : start + chunk]))
    items.sort(key=lambda item: (-len(item[2]), item[0], item[1]))

    scores: list[list[float]] = [[0.0] * len(titles) for titles in candidates]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(items), desc="Scoring candidates", disable=not show_progress) as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                tensors = pad_multi_completion([b[2] for b in batch], [b[3] for b in batch], pad_id)
                tensors = {k: v.to(device) for k, v in tensors.items()}
                logps = completion_logps(model, **tensors, prefix_sharing=prefix_sharing).cpu().tolist()
                for (row, first, _, completion_ids), values in zip(batch, logps):
                    scores[row][first : first + len(completion_ids)] = values[: len(completion_ids)]
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return scores


def score_examples(model: Any, tokenizer: Any, examples: Sequence[Any], **kwargs: Any) -> list[list[float]]:
    """[`score_candidates`] over examples' prompts and candidate titles (`RecExample`s); kwargs are passed on."""
    return score_candidates(
        model, tokenizer, [e.prompt for e in examples], [list(e.candidates) for e in examples], **kwargs
    )


def evaluate_ranking(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    batch_size: int = 8,
    prefix_sharing: bool = True,
    show_progress: bool = True,
    candidate_chunk_size: int | None = None,
    return_records: bool = False,
) -> dict[str, Any]:
    """
    HR@1, HR@5, NDCG@5 and MRR of the model's likelihood ranking of each row's candidates.

    The target's rank counts every other candidate scoring at least as high as it (ties go against the target; see
    [`~trl_sdpo.rec.metrics.target_rank`]). HR@1 here is comparable to the generation HR@1, with every row valid.

    Args:
        model, tokenizer: As for [`score_candidates`].
        examples (`Sequence[RecExample]`): Rows with `prompt`, `candidates` (titles) and `target` (one of them).
        batch_size, prefix_sharing, show_progress, candidate_chunk_size: As for [`score_candidates`].
        return_records (`bool`, *optional*, defaults to `False`):
            Add per-row `"records"` with `"scores"`, `"target_index"` and `"rank"`.

    Returns:
        `dict` with `"hr@1"`, `"hr@5"`, `"ndcg@5"`, `"mrr"` and `"n"` (and `"records"` when asked).
    """
    target_indices = []
    for i, example in enumerate(examples):
        if example.target not in example.candidates:
            raise ValueError(f"Row {i}: the target {example.target!r} is not among its `candidates`.")
        target_indices.append(list(example.candidates).index(example.target))
    scores = score_examples(
        model,
        tokenizer,
        examples,
        batch_size=batch_size,
        prefix_sharing=prefix_sharing,
        show_progress=show_progress,
        candidate_chunk_size=candidate_chunk_size,
    )
    ranks = [target_rank(s, t) for s, t in zip(scores, target_indices)]
    result: dict[str, Any] = ranking_metrics(ranks)
    if return_records:
        result["records"] = [
            {"scores": s, "target_index": t, "rank": r} for s, t, r in zip(scores, target_indices, ranks)
        ]
    return result
