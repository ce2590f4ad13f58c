"""Multi-negative preference rows: format detection, validation and tokenization.

A row has one `prompt`, one `chosen` completion and a list of `rejected` completions, either all strings (standard
format) or all message lists (conversational format), as in TRL's preference format with `rejected` a list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from datasets import Dataset
from trl.data_utils import _tokenize, common_prefix_length

from .versions import warn_if_untested_trl

warn_if_untested_trl()  # `_tokenize` is private to TRL (trl_sdpo/versions.py)

logger = logging.getLogger(__name__)

STANDARD = "standard"
CONVERSATIONAL = "conversational"

# The roles chat templates know. A role outside them is most often a typo (`asistant`), which many templates render
# without complaint as a turn of an unknown speaker. `developer` is the system role of OpenAI-style templates,
# `ipython` the tool-result role of Llama 3.x.
KNOWN_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
# Turns a completion may hold after its first, assistant turn: more assistant turns and the results of its tool calls.
_COMPLETION_ROLES = ("assistant", "tool", "ipython")


def _is_message(value: Any) -> bool:
    # TRL's conversational format: a `role` and a `content`, or an assistant turn that calls tools and has no content
    # (TRL's tool-call preference data omits the key; an Arrow dataset holds it as None).
    return isinstance(value, dict) and "role" in value and ("content" in value or value.get("tool_calls") is not None)


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(_is_message(m) for m in value)


def parse_tools(tools: Any, index: int, dataset_name: str = "train") -> list[Any]:
    """
    A row's `tools` as the list of tool schemas the chat template takes.

    As `DPOTrainer` does, a JSON string is parsed (Arrow cannot store tool schemas of differing shapes, so datasets
    often hold them as strings); a list passes through.

    Raises:
        ValueError: naming the row when the string is not JSON or the value is neither a list nor a JSON list.
    """
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Row {index} of the {dataset_name} dataset: field `tools` is not valid JSON: {error}"
            ) from None
    if not isinstance(tools, list):
        raise ValueError(
            f"Row {index} of the {dataset_name} dataset: field `tools` must be a list of tool schemas (or a JSON "
            f"string of one), got {type(tools).__name__}."
        )
    return tools


def row_format(row: dict[str, Any], index: int = 0) -> str:
    """
    Whether a row is in standard (strings) or conversational (message lists) format.

    Decided from `prompt` and `chosen` only: TRL's `is_conversational` inspects the first value of the row and its
    answer on a list of conversations (our `rejected`) has been seen to change with `PYTHONHASHSEED`.

    Raises:
        ValueError: when `prompt` and `chosen` disagree or are neither strings nor message lists.
    """
    prompt, chosen = row.get("prompt"), row.get("chosen")
    if isinstance(prompt, str) and isinstance(chosen, str):
        return STANDARD
    if _is_message_list(prompt) and _is_message_list(chosen):
        return CONVERSATIONAL
    for field, value in (("prompt", prompt), ("chosen", chosen)):
        if not (isinstance(value, str) or _is_message_list(value)):
            raise ValueError(
                f"Row {index}: field `{field}` must be a string (standard format) or a non-empty list of messages "
                "with `role` and `content` (or `tool_calls`) (conversational format), got "
                f"{type(value).__name__}: {value!r:.80}"
            )
    raise ValueError(
        f"Row {index}: `prompt` is {type(prompt).__name__} but `chosen` is {type(chosen).__name__}; both must be "
        "strings (standard format) or both message lists (conversational format)."
    )


def validate_row(row: dict[str, Any], index: int, num_negatives: int | None, expected_format: str | None) -> str:
    """
    Check one multi-negative preference row and return its format.

    Raises:
        ValueError: naming the row index and the field, for every malformed case.
    """
    for field in ("prompt", "chosen", "rejected"):
        if field not in row:
            raise ValueError(f"Row {index}: missing field `{field}`.")
    fmt = row_format(row, index)
    if expected_format is not None and fmt != expected_format:
        raise ValueError(
            f"Row {index}: this row is in {fmt} format but earlier rows are {expected_format}; a dataset must use "
            "one format throughout."
        )
    rejected = row["rejected"]
    if isinstance(rejected, str) or not isinstance(rejected, list):
        raise ValueError(
            f"Row {index}: field `rejected` must be a list of completions (S-DPO takes several negatives), got "
            f"{type(rejected).__name__}. Wrap a single negative as `[rejected]`, or merge `rejected1..rejectedK` "
            "columns with `trl_sdpo.data.merge_rejected_columns`."
        )
    if len(rejected) == 0:
        raise ValueError(f"Row {index}: field `rejected` is an empty list; every row needs at least one negative.")
    for j, completion in enumerate(rejected):
        ok = isinstance(completion, str) if fmt == STANDARD else _is_message_list(completion)
        if not ok:
            expected = "a string" if fmt == STANDARD else "a non-empty list of messages with `role` and `content`"
            raise ValueError(
                f"Row {index}: `rejected[{j}]` must be {expected} like `chosen` ({fmt} format), got "
                f"{type(completion).__name__}: {completion!r:.80}"
            )
        if completion == row["chosen"]:
            raise ValueError(
                f"Row {index}: `rejected[{j}]` is identical to `chosen`; a completion cannot be preferred to itself."
            )
    if num_negatives is not None and len(rejected) < num_negatives:
        raise ValueError(
            f"Row {index}: field `rejected` has {len(rejected)} completions but `num_negatives={num_negatives}`. "
            "Lower `num_negatives`, set it to None to use every row's own count, or drop such rows."
        )
    if fmt == CONVERSATIONAL:
        _check_roles(row, index)
    return fmt


def _check_roles(row: dict[str, Any], index: int) -> None:
    # Wrong roles tokenize without error: the chat template renders whatever it is given, and at most the prompt
    # stops being a token prefix of prompt+completion (one warning for the whole dataset). The model would then be
    # trained to prefer a user turn, or to continue after its own answer.
    fields = [("prompt", row["prompt"]), ("chosen", row["chosen"])]
    fields += [(f"rejected[{j}]", completion) for j, completion in enumerate(row["rejected"])]
    for name, messages in fields:
        for m, message in enumerate(messages):
            if message["role"] not in KNOWN_ROLES:
                raise ValueError(
                    f"Row {index}: `{name}[{m}]` has role {message['role']!r}, which is not one of "
                    f"{', '.join(KNOWN_ROLES)}."
                )
    if row["prompt"][-1]["role"] == "assistant":
        raise ValueError(
            f"Row {index}: field `prompt` ends on an assistant turn; the completions are the assistant's answer to "
            "the prompt, so its last turn must be the user's (or a system or tool turn). Move that turn into the "
            "completions, or drop it."
        )
    for name, messages in fields[1:]:
        if messages[0]["role"] != "assistant":
            raise ValueError(
                f"Row {index}: `{name}[0]` has role {messages[0]['role']!r}; a completion is the assistant's answer, "
                "so it must start with an assistant turn."
            )
        for m, message in enumerate(messages[1:], start=1):
            if message["role"] not in _COMPLETION_ROLES:
                raise ValueError(
                    f"Row {index}: `{name}[{m}]` has role {message['role']!r}; a completion holds assistant turns "
                    f"and the results of their tool calls ({', '.join(_COMPLETION_ROLES)}) only."
                )


def validate_dataset(rows: Iterable[dict[str, Any]], num_negatives: int | None = None) -> str:
    """
    Validate every row of a multi-negative preference dataset before any training work starts.

    Args:
        rows (`Iterable[dict]`):
            The rows (a `datasets.Dataset` works).
        num_negatives (`int` or `None`, *optional*):
            Minimum number of negatives every row must have.

    Returns:
        `str`: `"standard"` or `"conversational"`.

    Raises:
        ValueError: naming the first bad row and field.
    """
    fmt = None
    n = 0
    for index, row in enumerate(rows):
        fmt = validate_row(row, index, num_negatives, fmt)
        n += 1
    if n == 0:
        raise ValueError("The dataset is empty.")
    return fmt


def merge_rejected_columns(dataset: Dataset, prefix: str = "rejected") -> Dataset:
    """
    Turn the S-DPO reference code's `rejected1, rejected2, ... rejectedK` columns into one `rejected` list column.

    Columns are taken in numeric order (`rejected2` before `rejected10`). Empty or missing values are dropped from a
    row's list, so rows may end up with different counts; each count change is logged.

    Args:
        dataset (`datasets.Dataset`):
            Dataset with columns `{prefix}1 ... {prefix}K`.
        prefix (`str`, *optional*, defaults to `"rejected"`):
            Column name prefix.

    Returns:
        `datasets.Dataset`: the same rows with one `rejected` list column instead.
    """
    numbered = sorted(
        (int(c[len(prefix) :]), c) for c in dataset.column_names if c.startswith(prefix) and c[len(prefix) :].isdigit()
    )
    if not numbered:
        raise ValueError(f"No `{prefix}1 ... {prefix}K` columns found; columns are {dataset.column_names}.")
    columns = [c for _, c in numbered]

    def merge(row: dict[str, Any]) -> dict[str, Any]:
        return {"rejected": [row[c] for c in columns if row[c] not in (None, "", [])]}

    merged = dataset.map(merge, remove_columns=columns, desc="Merging rejected columns")
    short = sum(1 for r in merged["rejected"] if len(r) < len(columns))
    if short:
        logger.warning(
            "merge_rejected_columns: %d rows had empty negatives and now hold fewer than %d.", short, len(columns)
        )
    return merged


def split_into_pairs(dataset: Dataset, num_negatives: int | None = None) -> Dataset:
    """
    The pairwise dataset a `DPOTrainer` user would build from multi-negative rows: one row per negative.

    Row `i` with negatives `[r_0, ..., r_{k-1}]` becomes the k rows `(prompt_i, chosen_i, r_0)`, ...,
    `(prompt_i, chosen_i, r_{k-1})`, in that order and next to each other; every other column is copied to each of
    them. TRL's `DPOTrainer` trained on the result computes, with the same k in every row, what `SDPOTrainer` with
    `ranking_loss="pairwise"` computes on the original rows, running the prompt k times instead of once.

    Args:
        dataset (`datasets.Dataset`):
            Rows with `prompt`, `chosen` and a `rejected` list (standard or conversational format), validated first.
        num_negatives (`int`, *optional*):
            Use the first `num_negatives` negatives of each row (rows with fewer raise an error); `None` uses all.

    Returns:
        `datasets.Dataset`: one row per (row, negative) pair, `rejected` holding a single completion.

    Raises:
        ValueError: naming the first malformed row and field.
    """
    validate_dataset(dataset, num_negatives)

    def split(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in batch}
        for i, negatives in enumerate(batch["rejected"]):
            for negative in negatives[:num_negatives]:
                for name, values in batch.items():
                    out[name].append(negative if name == "rejected" else values[i])
        return out

    return dataset.map(split, batched=True, remove_columns=dataset.column_names, desc="Splitting rows into pairs")


def tokenize_completions(
    processing_class: Any,
    prompt: str | list[dict[str, Any]],
    completions: Sequence[str | list[dict[str, Any]]],
    add_eos: bool = True,
    **apply_chat_template_kwargs: Any,
) -> tuple[list[int], list[list[int]]]:
    """
    Tokenize one prompt and its completions the way TRL's `DPOTrainer` tokenizes a chosen/rejected pair.

    Each completion is tokenized together with the prompt, so tokens that merge across the boundary or chat templates
    that render the prompt differently are handled: the shared prompt is the common prefix of the tokenized prompt and
    every tokenized prompt+completion, and each completion is the rest of its sequence.

    Args:
        processing_class: A tokenizer.
        prompt (`str` or `list[dict]`): The prompt, a string or a list of messages.
        completions (`Sequence`): The completions, strings or message lists, in the prompt's format.
        add_eos (`bool`, *optional*, defaults to `True`):
            Append the tokenizer's EOS token to string completions that do not end with it (as TRL does, and as the
            S-DPO paper does). Conversational completions get their end-of-turn tokens from the chat template.

    Returns:
        `tuple[list[int], list[list[int]]]`: the prompt ids and one list of ids per completion.
    """
    if isinstance(prompt, str):
        eos = processing_class.eos_token
        if add_eos and eos is not None:
            completions = [c if c.endswith(eos) else c + eos for c in completions]
        prompt_ids = _tokenize(processing_class, prompt)["input_ids"]
        full_ids = [_tokenize(processing_class, prompt + c)["input_ids"] for c in completions]
    else:
        prompt_ids = _tokenize(processing_class, prompt, add_generation_prompt=True, **apply_chat_template_kwargs)[
            "input_ids"
        ]
        full_ids = [
            _tokenize(processing_class, prompt + c, **apply_chat_template_kwargs)["input_ids"] for c in completions
        ]
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    if prompt_len < len(prompt_ids):
        _warn_prefix_mismatch(processing_class.decode(prompt_ids[prompt_len:]))
    return prompt_ids[:prompt_len], [ids[prompt_len:] for ids in full_ids]


_warned_prefix_mismatch = False


def _warn_prefix_mismatch(tail: str) -> None:
    global _warned_prefix_mismatch
    if not _warned_prefix_mismatch:
        _warned_prefix_mismatch = True
        logger.warning(
            "The tokenized prompt is not a prefix of every tokenized prompt+completion (tokens merging across the "
            "boundary, or a chat template rendering the prompt differently alone); the completions start where "
            "they diverge and this end of the prompt is left out: %r. Shown once.",
            tail,
        )
