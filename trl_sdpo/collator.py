"""Collating one-chosen/many-rejected rows into padded tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

TRUNCATION_MODES = ("keep_start", "keep_end")


def truncate_row(
    prompt_ids: list[int],
    completion_ids: Sequence[list[int]],
    max_length: int | None,
    truncation_mode: str = "keep_start",
) -> tuple[list[int], list[list[int]]]:
    """
    Truncate one prompt and its completions so that prompt + each completion fits in `max_length` tokens.

    `keep_start` is exactly TRL's per-sequence rule: each prompt+completion keeps its first `max_length` tokens, so
    completions are cut at the end (a prompt of `max_length` tokens or more leaves no completion: such rows are
    dropped, and counted, when the dataset is prepared). `keep_end` keeps the end of every sequence, but the prompt
    must stay one shared prefix for all completions, so it is cut from the left by what the *longest* completion needs
    (TRL cuts each pair on its own; with equal completion lengths the two agree). A completion longer than
    `max_length` on its own keeps its last `max_length` tokens.

    Returns:
        `tuple[list[int], list[list[int]]]`: the truncated prompt ids and completion ids.
    """
    if max_length is None:
        return list(prompt_ids), [list(c) for c in completion_ids]
    if truncation_mode == "keep_start":
        prompt = list(prompt_ids[:max_length])
        room = max_length - len(prompt)
        return prompt, [list(c[:room]) for c in completion_ids]
    if truncation_mode == "keep_end":
        longest = max(len(c) for c in completion_ids)
        keep = max(max_length - longest, 0)
        prompt = list(prompt_ids[len(prompt_ids) - keep :]) if keep else []
        return prompt, [list(c[-max_length:]) for c in completion_ids]
    raise ValueError(f"Unsupported truncation mode: {truncation_mode!r}, expected one of {TRUNCATION_MODES}.")


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple:
        return n
    return -(-n // multiple) * multiple


def pad_multi_completion(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    num_completions: int | None = None,
) -> dict[str, torch.Tensor]:
    """
    Pad B prompts and their completions (any number per prompt) into the tensors that
    [`~trl_sdpo.completion_logps`] takes.

    Args:
        prompt_ids (`Sequence[Sequence[int]]`): B prompts.
        completion_ids (`Sequence[Sequence[Sequence[int]]]`): for each prompt, its completions (at least one).
        pad_token_id (`int`): Padding value for ids.
        pad_to_multiple_of (`int`, *optional*): Round the prompt and completion lengths up to a multiple of this.
        num_completions (`int`, *optional*): Pad the completion axis to this many (default: the batch's largest).

    Returns:
        `dict[str, torch.Tensor]` with right-padded
        - `prompt_input_ids`, `prompt_attention_mask`: (B, P)
        - `completion_input_ids`, `completion_attention_mask`: (B, N, C); a missing completion is all padding.
    """
    batch = len(prompt_ids)
    n = num_completions or max(len(c) for c in completion_ids)
    p_len = _round_up(max(len(p) for p in prompt_ids), pad_to_multiple_of)
    c_len = _round_up(max(len(c) for cs in completion_ids for c in cs), pad_to_multiple_of)
    prompt = torch.full((batch, p_len), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, p_len), dtype=torch.long)
    completion = torch.full((batch, n, c_len), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((batch, n, c_len), dtype=torch.long)
    for i, (p, cs) in enumerate(zip(prompt_ids, completion_ids)):
        prompt[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        prompt_mask[i, : len(p)] = 1
        for j, c in enumerate(cs):
            completion[i, j, : len(c)] = torch.as_tensor(c, dtype=torch.long)
            completion_mask[i, j, : len(c)] = 1
    return {
        "prompt_input_ids": prompt,
        "prompt_attention_mask": prompt_mask,
        "completion_input_ids": completion,
        "completion_attention_mask": completion_mask,
    }


@dataclass
class DataCollatorForMultiNegativePreference(DataCollatorMixin):
    """
    Data collator for S-DPO rows: one prompt, one chosen and k rejected completions, dynamically padded.

    Each example holds `"prompt_ids"`, `"chosen_ids"` and `"rejected_ids"` (a list of k id lists; k may differ
    between examples), as [`SDPOTrainer`] prepares them. The collator returns, right padded:
    - `"prompt_input_ids"`, `"prompt_attention_mask"`: (B, P).
    - `"completion_input_ids"`, `"completion_attention_mask"`: (B, 1+K, C). Completion 0 is the chosen one,
      completions 1..K the rejected ones; K is the batch's largest k and absent negatives are all padding.
    - `"rejected_mask"`: (B, K) bool, True for a real negative.
    - `"ref_chosen_logps"` (B,) and `"ref_rejected_logps"` (B, K), when the examples carry precomputed values
      (absent negatives are 0 there).

    The prompt is kept once per row rather than once per completion: the log-prob computation decides whether to run
    it once (shared prefix) or once per completion.

    Args:
        pad_token_id (`int`):
            Token ID to use for padding.
        max_length (`int`, *optional*):
            Maximum length of prompt + one completion; see [`truncate_row`] for how each mode truncates.
        truncation_mode (`str`, *optional*, defaults to `"keep_start"`):
            `"keep_start"` or `"keep_end"`, as in TRL's `DataCollatorForPreference`.
        pad_to_multiple_of (`int`, *optional*):
            If set, prompt and completion lengths are padded to a multiple of this value.
        num_negatives (`int`, *optional*):
            Use only the first `num_negatives` rejected completions of each example.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            Only `"pt"` is supported.

    Examples:
    ```python
    >>> from trl_sdpo import DataCollatorForMultiNegativePreference
    >>> collator = DataCollatorForMultiNegativePreference(pad_token_id=0)
    >>> batch = collator([
    ...     {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [[6], [7, 8]]},
    ...     {"prompt_ids": [9], "chosen_ids": [10], "rejected_ids": [[11]]},
    ... ])
    >>> batch["completion_input_ids"].shape, batch["rejected_mask"].tolist()
    (torch.Size([2, 3, 2]), [[True, True], [True, False]])
    ```
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    num_negatives: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts, completions, counts = [], [], []
        for example in examples:
            rejected = list(example["rejected_ids"])[: self.num_negatives]
            prompt, comps = truncate_row(
                example["prompt_ids"], [example["chosen_ids"], *rejected], self.max_length, self.truncation_mode
            )
            prompts.append(prompt)
            completions.append(comps)
            counts.append(len(rejected))
        k = max(counts)
        output = pad_multi_completion(
            prompts, completions, self.pad_token_id, self.pad_to_multiple_of, num_completions=1 + k
        )
        output["rejected_mask"] = torch.arange(k).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
        if "ref_chosen_logps" in examples[0]:
            output["ref_chosen_logps"] = torch.tensor([float(e["ref_chosen_logps"]) for e in examples])
            ref_rejected = torch.zeros(len(examples), k)
            for i, e in enumerate(examples):
                values = list(e["ref_rejected_logps"])[: counts[i]]
                ref_rejected[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
            output["ref_rejected_logps"] = ref_rejected
        return output
