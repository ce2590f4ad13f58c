"""The S-DPO paper's generation evaluation: greedy answers to the recommendation prompts, matched to candidate titles.

Protocol (paper and reference code, `evaluate_batch.py`): greedy decoding (no sampling, one beam), at most 20 new
tokens; a response is *valid* when exactly one candidate title occurs in it, and a *hit* when it is valid and contains
the target. HR@1 = hits / all rows, ValidRatio = valid / all rows.

Two matchers decide which candidates a response names:
- `"paper"`: the reference rule verbatim, a case-sensitive substring test per title. A title that is a substring of
  another candidate's title ("Heat" in "The Heat") makes every response naming the longer one invalid, and "Heat"
  also matches "Heathrow".
- `"strict"`: case- and whitespace-insensitive, titles must start and end at word boundaries, and an occurrence
  inside a longer matched title's occurrence does not count (longest match wins).
Both are always computed (they are cheap); `matcher` chooses which one fills `"hr@1"` and `"valid_ratio"`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig
from trl.data_utils import _tokenize

MATCHERS = ("paper", "strict")


def _paper_matches(response: str, candidates: Sequence[str]) -> list[str]:
    return [title for title in dict.fromkeys(candidates) if title in response]


def _normalize(text: str) -> str:
    return " ".join(text.casefold().split())


def _strict_matches(response: str, candidates: Sequence[str]) -> list[str]:
    text = _normalize(response)
    spans: list[tuple[int, int, str]] = []  # (start, end, title) of every word-bounded occurrence
    for title in dict.fromkeys(candidates):
        key = _normalize(title)
        if not key:
            continue
        # Lookarounds instead of \b: titles may start or end with punctuation ("Se7en", "M*A*S*H", "Heat (1995)")
        pattern = re.compile(r"(?<!\w)" + re.escape(key) + r"(?!\w)")
        spans.extend((m.start(), m.end(), title) for m in pattern.finditer(text))
    matched = []
    for start, end, title in sorted(spans):
        inside_longer = any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
        if not inside_longer and title not in matched:
            matched.append(title)
    return matched


def match_response(response: str, candidates: Sequence[str], matcher: str = "paper") -> list[str]:
    """
    The candidate titles a response names, under the given matcher (see the module docstring).

    Args:
        response (`str`): The generated text (the answer only, without the prompt).
        candidates (`Sequence[str]`): The row's candidate titles.
        matcher (`str`, *optional*, defaults to `"paper"`): `"paper"` or `"strict"`.

    Returns:
        `list[str]`: the matched titles, each once, in candidate order (`"paper"`) or order of appearance
        (`"strict"`). The response is valid when this list has exactly one title.
    """
    if matcher == "paper":
        return _paper_matches(response, candidates)
    if matcher == "strict":
        return _strict_matches(response, candidates)
    raise ValueError(f"Unknown matcher {matcher!r}; expected one of {MATCHERS}.")


def judge_response(response: str, candidates: Sequence[str], target: str, matcher: str = "paper") -> dict[str, Any]:
    """
    Whether one response is valid and a hit.

    Returns:
        `dict` with `"matched"` (the single matched title, or None when invalid), `"valid"` and `"hit"`. Under
        `"paper"` a hit is "valid and the target occurs in the response", as in the reference code; under `"strict"`
        it is "valid and the matched title is the target".
    """
    matched = match_response(response, candidates, matcher)
    valid = len(matched) == 1
    if not valid:
        return {"matched": None, "valid": False, "hit": False}
    if matcher == "paper":
        hit = target in response
    else:
        hit = _normalize(matched[0]) == _normalize(target)
    return {"matched": matched[0], "valid": True, "hit": hit}


def _prompt_ids(tokenizer: Any, prompt: str | list[dict[str, Any]]) -> list[int]:
    # Exactly how training tokenizes a prompt (trl_sdpo.data.tokenize_completions): special tokens as the tokenizer
    # adds them for text, the chat template with the generation prompt for messages.
    if isinstance(prompt, str):
        return list(_tokenize(tokenizer, prompt)["input_ids"])
    return list(_tokenize(tokenizer, prompt, add_generation_prompt=True)["input_ids"])


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, Any]]],
    batch_size: int = 8,
    max_new_tokens: int = 20,
    show_progress: bool = True,
) -> list[str]:
    """
    Greedy answers to prompts, batched with left padding; the result does not depend on `batch_size`.

    Prompts are tokenized as in training (messages through the chat template with the generation prompt). Batches
    group prompts of similar length (longest first) to pad little; answers come back in the prompts' order. Decoding
    stops at the model's and the tokenizer's EOS tokens; special tokens are dropped from the answers, which are
    stripped of surrounding whitespace.

    Args:
        model: A causal LM with `generate` (a `PeftModel` too).
        tokenizer: Its tokenizer; needs a pad token.
        prompts (`Sequence`): Strings or message lists.
        batch_size (`int`, *optional*, defaults to `8`): Prompts per `generate` call.
        max_new_tokens (`int`, *optional*, defaults to `20`): The paper's limit.
        show_progress (`bool`, *optional*, defaults to `True`): Show a progress bar.

    Returns:
        `list[str]`: one answer per prompt.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, which batched generation needs. Load the model with "
            "`trl_sdpo.rec.load_model_and_tokenizer`, which sets one, or set `tokenizer.pad_token` yourself."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    encoded = [_prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    stop_ids = _stop_token_ids(model, tokenizer)
    # `generate` fills every field left None from the model's own generation config (transformers >= 5), so settings
    # saved with a checkpoint that would change plain greedy decoding are neutralized explicitly.
    generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids or None,
        bos_token_id=getattr(getattr(model, "generation_config", None), "bos_token_id", None),
    )
    device = next(model.parameters()).device
    responses: list[str] = [""] * len(encoded)
    was_training = model.training
    padding_side = tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    try:
        with torch.no_grad(), tqdm(total=len(encoded), desc="Generating", disable=not show_progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, padding=True, return_tensors="pt")
                input_ids = batch["input_ids"].to(device)
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=batch["attention_mask"].to(device),
                    generation_config=generation_config,
                )
                new_tokens = output[:, input_ids.shape[1] :]
                for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    responses[i] = text.strip()
                bar.update(len(chunk))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return responses


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    batch_size: int = 8,
    max_new_tokens: int = 20,
    matcher: str = "paper",
    return_records: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """
    The paper's generation metrics, HR@1 and ValidRatio, on recommendation examples.

    Args:
        model: A causal LM with `generate`.
        tokenizer: Its tokenizer (with a pad token).
        examples (`Sequence[RecExample]`): Rows with `prompt`, `candidates` (titles) and `target` (a title).
        batch_size (`int`, *optional*, defaults to `8`): Prompts per `generate` call; does not change the results.
        max_new_tokens (`int`, *optional*, defaults to `20`): The paper's limit.
        matcher (`str`, *optional*, defaults to `"paper"`):
            Which matcher fills `"hr@1"` and `"valid_ratio"`: `"paper"` (the reference rule, comparable to published
            numbers) or `"strict"`. See the module docstring.
        return_records (`bool`, *optional*, defaults to `False`): Add per-row `"records"`.
        show_progress (`bool`, *optional*, defaults to `True`): Show a progress bar.

    Returns:
        `dict` with
        - `"hr@1"`, `"valid_ratio"`: under `matcher`; `"n"`: the row count; `"matcher"`: its name.
        - `"hr@1/paper"`, `"valid_ratio/paper"`, `"hr@1/strict"`, `"valid_ratio/strict"`: both matchers.
        - `"records"` (with `return_records`): per row, `"response"`, `"target"`, and under `matcher` the
          `"matched"` title (None when invalid), `"valid"` and `"hit"`.
    """
    if matcher not in MATCHERS:
        raise ValueError(f"Unknown matcher {matcher!r}; expected one of {MATCHERS}.")
    responses = generate_responses(
        model, tokenizer, [e.prompt for e in examples], batch_size, max_new_tokens, show_progress
    )
    n = len(examples)
    result: dict[str, Any] = {}
    records = [{"response": r, "target": e.target} for r, e in zip(responses, examples)]
    for name in MATCHERS:
        judged = [judge_response(r, e.candidates, e.target, name) for r, e in zip(responses, examples)]
        result[f"hr@1/{name}"] = sum(j["hit"] for j in judged) / max(n, 1)
        result[f"valid_ratio/{name}"] = sum(j["valid"] for j in judged) / max(n, 1)
        if name == matcher:
            for record, j in zip(records, judged):
                record.update(j)
    result = {
        "hr@1": result[f"hr@1/{matcher}"],
        "valid_ratio": result[f"valid_ratio/{matcher}"],
        "n": n,
        "matcher": matcher,
        **result,
    }
    if return_records:
        result["records"] = records
    return result
