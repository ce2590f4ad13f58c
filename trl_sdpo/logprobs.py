"""Summed log-probabilities of many completions per prompt, computed from a causal LM.

The entry point, [`completion_logps`], takes the tensors that [`DataCollatorForMultiNegativePreference`] (or
[`pad_multi_completion`]) produces and returns a (B, N) tensor. It is used for the policy, the reference model, the
precomputed reference log-probs and the recommendation toolkit's ranking evaluation alike.

Two layouts compute the same numbers:

- shared prefix (default): one row per prompt, `[prompt | c_0 | c_1 | ... | c_k]`. A 4-D mask lets every completion
  see the prompt and its own earlier tokens only, and position ids restart at the prompt length for every completion,
  so each completion is scored exactly as if it followed the prompt alone. The prompt runs once instead of 1+k times.
- rows: one right-padded `prompt + completion` row per completion, with an ordinary 2-D padding mask. It is the
  reference layout and the fallback for attention implementations that cannot take a custom mask.

Both score only the positions that predict completion tokens, through [`add_completion_logps_head`]: the model's
forward gathers those hidden states and computes their log-probabilities in fp32, in chunks when they are many, so no
(tokens x vocabulary) logits tensor is ever built for prompt positions.

Whether the shared row is exact is decided per model, by [`prefix_sharing_blocker`]: the attention implementation
must take a 4-D mask, sliding windows and chunked attention must not cut the row, and a probe run once per model
must find that no completion's hidden states depend on another completion's tokens. The probe is what keeps the rule
from going stale: convolutions, state-space scans and linear attention (LFM2, Nemotron-H, Jamba, Falcon-H1,
Qwen3-Next, ...) ignore the mask, and a list of layer types would miss the next such architecture.
"""

from __future__ import annotations

import functools
import types
import warnings
from dataclasses import dataclass

import torch
from accelerate.utils import is_peft_model
from torch.utils.checkpoint import checkpoint
from transformers.utils import ModelOutput

# Attention implementations that apply a (B, 1, T, T) mask passed as `attention_mask` as-is (transformers 5 returns a
# 4-D mask unchanged from `create_causal_mask`). flash_attention_2/3, flex_attention and the paged/kernel-hub variants
# do not: they would silently let completions see each other, so those models take the rows layout.
MASK_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")

# Largest (kept rows x vocabulary) block of logits the LM head builds at once, in elements (2**24 fp32 = 64 MiB).
# Beyond it rows are processed in chunks whose logits are recomputed in the backward instead of kept.
LOGITS_BUDGET = 2**24

# The keyword the patched forward answers to; distinct from TRL's `fused_lm_head` so both patches can coexist.
_REQUEST_KWARG = "trl_sdpo_logps_request"

# The isolation probe's verdict: a change in one completion's final hidden states, relative to their largest value,
# above this when another completion's tokens change means the shared row leaks. Layers that honour the 4-D mask give
# exactly 0 (the other completion's keys get probability exactly 0, so its values never enter any sum; measured 0.0 in
# fp32 and bf16, sdpa and eager, on tiny Llama, Qwen2, Mistral, Gemma, Gemma 2/3). Every conv, SSM and linear-attention
# hybrid measured at its tiny random initialisation (LFM2, Nemotron-H, Jamba, Falcon-H1, Qwen3-Next) moved by 2e-4 or
# more in fp32 and 2.5e-3 or more in bf16; trained weights move far more (up to ~4 nats in log-prob). A kernel that is
# not bitwise reproducible across rows of one batch would exceed it too and only cost speed (rows layout), never
# exactness.
ISOLATION_TOLERANCE = 1e-5
# Tokens in the probe's prompt and in each of its two completions: more than any short convolution's reach is not
# needed, any dependence on the first completion shows at the second one's first tokens.
_PROBE_TOKENS = 4

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


@dataclass
class CompletionLogpsOutput(ModelOutput):
    """
    Output of a model patched with [`add_completion_logps_head`] when called with a request.

    Args:
        log_probs (`torch.Tensor` of shape `(num_positions,)`):
            Float32 log-probability of each requested target token.
        hidden_states (`torch.Tensor` of shape `(num_positions, hidden_size)`):
            The final hidden states at the requested positions, when the request has no targets (the isolation
            probe); `log_probs` is then `None`.
    """

    log_probs: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The `PreTrainedModel` under DDP/accelerate wrappers and PEFT."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if is_peft_model(model):
        if model.active_peft_config.is_prompt_learning:
            raise NotImplementedError(
                "completion_logps does not support prompt-learning PEFT methods (prompt/prefix/p-tuning): their "
                "virtual tokens change the sequence layout. Use LoRA or another adapter method."
            )
        model = model.get_base_model()
    return model


def _logit_transform(text_config) -> tuple[float, float | None]:
    """(logit_scale, final_logit_softcapping) the model's own forward applies to its logits.

    Read the way TRL 1.16's `add_fused_lm_head` reads them, so both heads agree on every model family.
    """
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    if scale is None:
        scale = getattr(text_config, "output_multiplier", None)
    if scale is None:
        scale = getattr(text_config, "lm_head_multiplier", None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        scale = scaling if text_config.model_type == "hyperclovax" else 1 / scaling
    return (1.0 if scale is None else scale), softcap


def _head_log_probs_chunk(
    lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, logit_scale: float, softcap: float | None
) -> torch.Tensor:
    # Through the module, not its weight: DeepSpeed ZeRO-3 and FSDP gather the weight in its hooks, and a LoRA adapter
    # on the head applies
    logits = lm_head(hidden).float() * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _head_log_probs(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of `targets` under the model's LM head applied to `hidden` (kept rows only), in fp32.

    When (rows x vocabulary) exceeds `LOGITS_BUDGET`, rows are processed in chunks that each keep only their hidden
    states for the backward and recompute their logits there, so at most one chunk of logits exists at a time.
    Plain autograd rather than TRL's `ChunkedLogProbFunction`: on CPU (no Triton) TRL's torch fallback made the head
    1.8-3x slower for the few hundred kept rows a step has (measured, SmolLM2-135M shape, torch 2.13).
    """
    lm_head = model.get_output_embeddings()
    hidden = hidden.to(lm_head.weight.device)
    targets = targets.to(lm_head.weight.device)
    logit_scale, softcap = _logit_transform(model.config.get_text_config())
    rows = max(1, LOGITS_BUDGET // model.config.get_text_config().vocab_size)
    if hidden.shape[0] <= rows:
        return _head_log_probs_chunk(lm_head, hidden, targets, logit_scale, softcap)
    # Without autograd there is nothing to keep for a backward: chunks only bound the logits built at once
    run = functools.partial(checkpoint, _head_log_probs_chunk, use_reentrant=False)
    run = run if torch.is_grad_enabled() else _head_log_probs_chunk
    pieces = []
    for start in range(0, hidden.shape[0], rows):
        chunk = slice(start, start + rows)
        pieces.append(run(lm_head, hidden[chunk], targets[chunk], logit_scale, softcap))
    return torch.cat(pieces)


def _make_forward(class_forward):
    # A closure over the class's forward only, never over an instance: `copy.deepcopy(model)` rebinds the method and
    # `_trl_sdpo_inner_forward` to the copy, so a deep-copied reference model runs its own weights.
    @functools.wraps(class_forward)  # keeps the signature `generate` validates its kwargs against
    def forward(self, *args, **kwargs):
        request = kwargs.pop(_REQUEST_KWARG, None)
        if request is None:
            inner = self.__dict__.get("_trl_sdpo_inner_forward")
            return inner(*args, **kwargs) if inner is not None else class_forward(self, *args, **kwargs)
        positions, targets = request
        if kwargs.pop("labels", None) is not None:
            raise ValueError(f"`labels` cannot be combined with `{_REQUEST_KWARG}`.")
        kwargs["use_cache"] = False
        # The backbone and head are looked up on each call, since PEFT and FSDP replace modules after patching
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        hidden = hidden.flatten(0, 1).index_select(0, positions.to(hidden.device))
        if targets is None:
            return CompletionLogpsOutput(hidden_states=hidden)
        return CompletionLogpsOutput(log_probs=_head_log_probs(self, hidden, targets))

    forward._trl_sdpo_wrapper = True
    return forward


def add_completion_logps_head(model: torch.nn.Module) -> None:
    """
    Patch `model`'s forward so that `model(..., trl_sdpo_logps_request=(positions, targets))` returns a
    [`CompletionLogpsOutput`] with the log-probability of `targets[i]` predicted from the hidden state at flat
    position `positions[i]` of the `(batch * seq_len)` sequence, without computing logits anywhere else.

    Without the keyword the forward is the previous one (TRL's `fused_lm_head` patch included), so generation and
    TRL's own calls are unchanged. Idempotent. The patch goes on the `PreTrainedModel` under any DDP/accelerate
    wrapper and under PEFT (`get_base_model()`), so calls still go through the top-level wrapper. Apply it before
    `accelerator.prepare` (e.g. in a trainer's `__init__`): accelerate wraps the forward for mixed precision at
    prepare time, and a patch added afterwards would run outside that autocast.
    """
    base = _unwrap(model)
    # A marker on the instance, not on the function: accelerate re-wraps the patched forward at prepare time. It holds
    # the instance's id so that a `copy.deepcopy` (which copies the marker) is patched again: a patch stacked on top of
    # ours by TRL's `add_fused_lm_head` closes over the *original* instance's forward, so without a patch of its own a
    # deep-copied reference model would silently run the policy's weights.
    if base.__dict__.get("_trl_sdpo_head") == id(base):
        return
    current = base.__dict__.get("forward")
    if getattr(getattr(current, "__func__", None), "_trl_sdpo_wrapper", False) and current.__self__ is base:
        base._trl_sdpo_head = id(base)  # a deep copy of a model whose top forward is ours: already bound to the copy
        return
    if base.get_output_embeddings() is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings: completion_logps needs a causal LM head.")
    if "_original_forward" in base.__dict__ and not is_peft_model(model):
        _warn_once(
            "late-patch",
            "add_completion_logps_head was applied after accelerate wrapped the model's forward for mixed precision; "
            "completion log-probs will run outside its autocast. Call it before `accelerator.prepare`.",
        )
    # Keep the current forward (TRL's fused-head patch, accelerate's wrapper) for calls without our keyword
    if "forward" in base.__dict__:
        base._trl_sdpo_inner_forward = base.forward
    base.forward = types.MethodType(_make_forward(type(base).forward), base)
    base._trl_sdpo_head = id(base)


@dataclass
class _Layout:
    input_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor  # (R, T) for rows, (R, 1, T, T) for the shared prefix
    position_ids: torch.Tensor | None  # (R, T), shared prefix only
    positions: torch.Tensor  # (M,) flat index into (R * T) of the hidden state predicting each scored token
    targets: torch.Tensor  # (M,) the scored token ids
    owners: torch.Tensor  # (M,) flat index into (B * N) of the completion each scored token belongs to


def _lengths(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Lengths of right-padded rows; raises naming the first row whose mask is not right padding."""
    lengths = mask.sum(-1)
    expected = torch.arange(mask.shape[-1], device=mask.device) < lengths.unsqueeze(-1)
    bad = (expected != mask.bool()).any(-1)
    if bad.any():
        row = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"`{name}` must be right padded (ones then zeros); row {row} is not: {mask[row].tolist()}.")
    return lengths


def _scored(
    prompt_len: int, row: int, row_len: int, start: int, completion: list[int], owner: int, acc: list[list[int]]
) -> None:
    """Append the (flat position, target, owner) of every scored token of one completion placed at `start`."""
    # The first completion token is predicted by the last prompt token; with an empty prompt it has no predictor and
    # is left out, as in the rows layout (whose first token is never scored either).
    predictors = ([prompt_len - 1] if prompt_len else []) + list(range(start, start + len(completion) - 1))
    targets = completion if prompt_len else completion[1:]
    acc[0].extend(row * row_len + p for p in predictors)
    acc[1].extend(targets)
    acc[2].extend([owner] * len(targets))


def _rows_layout(prompts: list[list[int]], completions: dict[tuple[int, int], list[int]], n: int) -> _Layout:
    """One right-padded `prompt + completion` row per present completion, 2-D padding mask, default positions."""
    width = max(len(prompts[i]) + len(c) for (i, _), c in completions.items())
    ids, mask, acc = [], [], [[], [], []]
    for r, ((i, j), completion) in enumerate(completions.items()):
        row = prompts[i] + completion
        ids.append(row + [0] * (width - len(row)))
        mask.append([1] * len(row) + [0] * (width - len(row)))
        _scored(len(prompts[i]), r, width, len(prompts[i]), completion, i * n + j, acc)
    return _Layout(torch.tensor(ids), torch.tensor(mask), None, *(torch.tensor(a) for a in acc))


def _shared_prefix_layout(
    prompts: list[list[int]],
    completions: dict[tuple[int, int], list[int]],
    n: int,
    mask_dtype: torch.dtype | None,
    device: torch.device | str = "cpu",
) -> _Layout:
    """One `[prompt | c_0 | ... | c_k]` row per prompt that has a present completion.

    `mask_dtype` None gives a boolean mask (True = attend, for sdpa); a float dtype an additive 0 / dtype-min mask
    (eager adds the mask to the attention scores, so a boolean one would be silently wrong there). The (R, 1, T, T)
    mask is built on `device`; the other fields are small and built on the CPU.
    """
    per_row: dict[int, list[tuple[int, list[int]]]] = {}
    for (i, j), completion in completions.items():
        per_row.setdefault(i, []).append((j, completion))
    width = max(len(prompts[i]) + sum(len(c) for _, c in cs) for i, cs in per_row.items())
    ids, positions, segments, acc = [], [], [], [[], [], []]
    for r, (i, cs) in enumerate(per_row.items()):
        prompt = prompts[i]
        row, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        for j, completion in cs:
            _scored(len(prompt), r, width, len(row), completion, i * n + j, acc)
            row += completion
            pos += range(len(prompt), len(prompt) + len(completion))  # every completion starts at position P
            seg += [j + 1] * len(completion)
        pad = width - len(row)
        ids.append(row + [0] * pad)
        positions.append(pos + [0] * pad)
        segments.append(seg + [-1] * pad)
    seg = torch.tensor(segments, device=device)
    q, k = seg.unsqueeze(2), seg.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = causal & (q >= 0) & (k >= 0) & ((q == k) | (k == 0))
    # A padding query attends to itself only: some sdpa kernels return NaN for a fully masked query row, and the
    # backward would spread it into the weights' gradients
    allowed |= torch.eye(width, dtype=torch.bool, device=device)
    allowed = allowed.unsqueeze(1)
    if mask_dtype is not None:
        allowed = torch.zeros(allowed.shape, dtype=mask_dtype, device=device).masked_fill(
            ~allowed, torch.finfo(mask_dtype).min
        )
    return _Layout(torch.tensor(ids), allowed, torch.tensor(positions), *(torch.tensor(a) for a in acc))


def _sliding_window(text_config) -> int | None:
    window = getattr(text_config, "sliding_window", None)
    if not window or getattr(text_config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def _mask_dtype(base: torch.nn.Module) -> torch.dtype | None:
    """The shared-prefix mask's dtype for this model: boolean for sdpa, the weights' float dtype for eager."""
    if base.config._attn_implementation != "eager":
        return None
    dtype = base.get_input_embeddings().weight.dtype
    return dtype if dtype.is_floating_point else torch.float32


def _isolation_leak(model: torch.nn.Module, base: torch.nn.Module, device: torch.device | str) -> float:
    """
    How much one completion's final hidden states in a shared row move when the completion before it changes.

    Two shared rows `[prompt | a | b]` and `[prompt | a' | b]` of random tokens go through the model in one batch; the
    result is the largest change in `b`'s hidden states relative to their largest value (0 when the mask isolates
    the completions). Run once per model, attention implementation and dtype (cached on the model), in eval mode so
    that dropout cannot differ between the two rows, through the top-level forward so that PEFT, DDP and ZeRO-3
    wrappers take part as in training (every process makes the same call).
    """
    key = (base.config._attn_implementation, str(base.get_input_embeddings().weight.dtype))
    cached = base.__dict__.get("_trl_sdpo_isolation")
    if cached is not None and cached[0] == key:
        return cached[1]
    add_completion_logps_head(model)
    generator = torch.Generator().manual_seed(0)
    vocab = base.get_input_embeddings().num_embeddings
    prompt, first, other_first, second = (
        torch.randint(vocab, (_PROBE_TOKENS,), generator=generator).tolist() for _ in range(4)
    )
    completions = {(0, 0): first, (0, 1): second, (1, 0): other_first, (1, 1): second}
    layout = _shared_prefix_layout([prompt, prompt], completions, 2, _mask_dtype(base), device)
    width = layout.input_ids.shape[1]
    second_columns = torch.arange(2 * _PROBE_TOKENS, 3 * _PROBE_TOKENS)
    positions = torch.cat([second_columns, width + second_columns]).to(device)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            hidden = model(
                input_ids=layout.input_ids.to(device),
                attention_mask=layout.attention_mask,
                position_ids=layout.position_ids.to(device),
                use_cache=False,
                **{_REQUEST_KWARG: (positions, None)},
            ).hidden_states.float()
    finally:
        for module, training in modes.items():
            module.training = training
    after_first, after_other = hidden.chunk(2)
    scale = after_first.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    leak = ((after_first - after_other).abs().max() / scale).item()
    base._trl_sdpo_isolation = (key, leak)
    return leak


def _layer_types(text_config) -> str:
    kinds = getattr(text_config, "layer_types", None) or getattr(text_config, "layers_block_type", None)
    return f" (layer types: {', '.join(sorted(set(map(str, kinds))))})" if kinds else ""


def prefix_sharing_blocker(
    model: torch.nn.Module, longest: int | None = None, device: torch.device | str | None = None
) -> str | None:
    """
    Why the shared-prefix layout would not be exact for `model`, or `None` when it is.

    The checks, in order: the attention implementation takes a custom 4-D mask (`sdpa`, `eager`); a sliding window,
    if any, is not shorter than `longest` (prompt + completion, in tokens); attention is not chunked; and a probe,
    run once per model and cached on it, finds that a completion's hidden states do not depend on the tokens of
    another completion in the same row. The probe is what catches sequence mixers that ignore the mask
    (convolutions, state-space scans, linear attention) on any architecture, known or new.

    Args:
        model (`torch.nn.Module`): A causal LM, possibly wrapped (PEFT, DDP, accelerate).
        longest (`int`, *optional*): The longest prompt + completion to be scored; `None` skips the window check.
        device (`torch.device` or `str`, *optional*): Where to run the probe; defaults to the input embeddings'.

    Returns:
        `str` or `None`: the reason, in words, or `None` when every completion can share its prompt's row.
    """
    blocker = _blocker(model, _unwrap(model), longest, device)
    return None if blocker is None else blocker[1]


def _blocker(
    model: torch.nn.Module, base: torch.nn.Module, longest: int | None, device: torch.device | str | None
) -> tuple[str, str] | None:
    """(kind, reason) of [`prefix_sharing_blocker`]: the config's checks first, the probe only if they pass."""
    return _static_blocker(base, longest) or _mixer_blocker(model, base, device)


def _static_blocker(base: torch.nn.Module, longest: int | None) -> tuple[str, str] | None:
    """(kind, reason) read off the config alone, or None."""
    config = base.config
    for impl in {config._attn_implementation, config.get_text_config()._attn_implementation}:
        if impl not in MASK_ATTENTION_IMPLEMENTATIONS:
            return "attention", f"attention implementation {impl!r} cannot take a custom 4-D attention mask"
    window = _sliding_window(config.get_text_config())
    # The window would be measured in row offsets, not in each completion's own positions: exact only when it never
    # cuts (prompt + completion fits in it)
    if window is not None and longest is not None and longest > window:
        return "window", f"sliding-window attention (window {window}) is shorter than prompt + completion ({longest})"
    if getattr(config.get_text_config(), "attention_chunk_size", None):
        return "chunked", "chunked attention is not expressed by the shared-prefix mask"
    return None


def _mixer_blocker(
    model: torch.nn.Module, base: torch.nn.Module, device: torch.device | str | None
) -> tuple[str, str] | None:
    device = device if device is not None else base.get_input_embeddings().weight.device
    leak = _isolation_leak(model, base, device)
    if leak <= ISOLATION_TOLERANCE:
        return None
    return "mixer", (
        "a probe found that one completion's tokens change another completion's hidden states in the shared row "
        f"(by {leak:.1e} of their size): some of its sequence mixers ignore the attention mask, as convolutions, "
        f"state-space scans and linear attention do{_layer_types(base.config.get_text_config())}"
    )


def completion_logps(
    model: torch.nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
    prefix_sharing: bool = True,
) -> torch.Tensor:
    """
    Summed log-probability of every completion of every prompt under `model`.

    Only the positions that predict completion tokens reach the LM head, and log-softmax is computed in fp32.
    Completions with no tokens are never computed, nor are prompts without any present completion.

    Args:
        model (`torch.nn.Module`):
            A causal LM (a `PeftModel` or an accelerate/DDP-wrapped model too). It is called through its top-level
            forward, after [`add_completion_logps_head`] (applied here if it was not already).
        prompt_input_ids, prompt_attention_mask (`torch.Tensor`):
            (B, P), right padded.
        completion_input_ids, completion_attention_mask (`torch.Tensor`):
            (B, N, C), right padded; a completion with no tokens is absent.
        prefix_sharing (`bool`, *optional*, defaults to `True`):
            Run each prompt once for all its completions. `False` runs one prompt+completion row per completion.
            Models for which the shared row would not be exact (see [`prefix_sharing_blocker`]: attention that
            cannot take the mask, e.g. `flash_attention_2`, or sequence mixers that ignore it, e.g. LFM2's
            convolutions or Mamba layers) use rows, with a warning emitted once.

    Returns:
        `torch.Tensor`: (B, N) float32 sums of completion-token log-probs; 0 for absent completions.

    Examples:
    ```python
    >>> from trl_sdpo import completion_logps, pad_multi_completion
    >>> batch = pad_multi_completion([[5, 6, 7]], [[[8, 9], [10]]], pad_token_id=0)
    >>> completion_logps(model, **batch).shape
    torch.Size([1, 2])
    ```
    """
    batch, n, _ = completion_input_ids.shape
    device = prompt_input_ids.device
    base = _unwrap(model)
    add_completion_logps_head(model)

    prompt_lens = _lengths(prompt_attention_mask, "prompt_attention_mask").tolist()
    comp_lens = _lengths(completion_attention_mask, "completion_attention_mask").tolist()
    prompt_ids, comp_ids = prompt_input_ids.tolist(), completion_input_ids.tolist()
    prompts = [prompt_ids[i][: prompt_lens[i]] for i in range(batch)]
    completions = {
        (i, j): comp_ids[i][j][: comp_lens[i][j]] for i in range(batch) for j in range(n) if comp_lens[i][j] > 0
    }
    result = torch.zeros(batch * n, dtype=torch.float32, device=device)
    if not completions:
        return result.view(batch, n)

    if prefix_sharing:
        longest = max(len(prompts[i]) + len(c) for (i, _), c in completions.items())
        blocker = _blocker(model, base, longest, device)
        if blocker is not None:
            _warn_once(
                f"fallback-{blocker[0]}",
                f"Prefix sharing is off for this model: {blocker[1]}. Completion log-probs are computed with one "
                "prompt+completion row per completion instead (exact, but slower). This warning is shown once.",
            )
            prefix_sharing = False
    if prefix_sharing:
        layout = _shared_prefix_layout(prompts, completions, n, _mask_dtype(base), device)
    else:
        layout = _rows_layout(prompts, completions, n)

    inputs = {"input_ids": layout.input_ids.to(device), "attention_mask": layout.attention_mask.to(device)}
    if layout.position_ids is not None:
        inputs["position_ids"] = layout.position_ids.to(device)
    request = (layout.positions.to(device), layout.targets.to(device))
    log_probs = model(**inputs, use_cache=False, **{_REQUEST_KWARG: request}).log_probs
    return result.index_add(0, layout.owners.to(device), log_probs.float().to(device)).view(batch, n)
