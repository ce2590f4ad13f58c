"""Summed log-probabilities of many completions per prompt, computed from a causal LM.

The one entry point, [`completion_logps`], takes the tensors that [`DataCollatorForMultiNegativePreference`] (or
[`pad_multi_completion`]) produces and returns a (B, N) tensor. It is used for the policy, the reference model, the
precomputed reference log-probs and the recommendation toolkit's ranking evaluation alike.
"""

from __future__ import annotations

import torch
from accelerate.utils import is_peft_model
from trl.trainer.utils import add_fused_lm_head


def _ensure_fused_lm_head(model: torch.nn.Module) -> None:
    # TRL's DPOTrainer patches its models in __init__; a model used outside a trainer gets the same patch here.
    base = model
    while hasattr(base, "module"):  # DDP / accelerate wrappers
        base = base.module
    if is_peft_model(base):
        base = base.get_base_model()
    if not getattr(base, "_trl_sdpo_fused_lm_head", False):
        if "_fused_forward" not in getattr(getattr(base.forward, "__func__", None), "__qualname__", ""):
            add_fused_lm_head(base)
        base._trl_sdpo_fused_lm_head = True


def _rows_logps(
    model: torch.nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_input_ids: torch.Tensor,
    completion_attention_mask: torch.Tensor,
) -> torch.Tensor:
    """1+k rows of prompt+completion, right padded, through TRL's fused LM head (the reference path)."""
    batch, n, _ = completion_input_ids.shape
    device = completion_input_ids.device
    prompt_lens = prompt_attention_mask.sum(-1)
    comp_lens = completion_attention_mask.sum(-1)  # (B, N)
    present = (comp_lens > 0).nonzero().tolist()  # absent negatives are never computed
    width = int(max(prompt_lens[i] + comp_lens[i, j] for i, j in present))
    input_ids = torch.zeros((len(present), width), dtype=torch.long, device=device)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for r, (i, j) in enumerate(present):
        p, c = int(prompt_lens[i]), int(comp_lens[i, j])
        input_ids[r, :p] = prompt_input_ids[i, :p]
        input_ids[r, p : p + c] = completion_input_ids[i, j, :c]
        attention[r, : p + c] = 1
        labels[r, p : p + c] = completion_input_ids[i, j, :c]
    _ensure_fused_lm_head(model)
    out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True, use_cache=False)
    # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens
    per_token = out.log_probs[:, -(width - 1) :].float()
    sums = per_token.sum(-1)
    result = torch.zeros((batch, n), dtype=sums.dtype, device=sums.device)
    index = torch.tensor(present, device=sums.device)
    return result.index_put((index[:, 0], index[:, 1]), sums)


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

    Args:
        model (`torch.nn.Module`):
            A causal LM (a `PeftModel` or an accelerate-wrapped model too).
        prompt_input_ids, prompt_attention_mask (`torch.Tensor`):
            (B, P), right padded.
        completion_input_ids, completion_attention_mask (`torch.Tensor`):
            (B, N, C), right padded; a completion with no tokens is absent.
        prefix_sharing (`bool`, *optional*, defaults to `True`):
            Run each prompt once for all its completions. `False` runs one prompt+completion row per completion.

    Returns:
        `torch.Tensor`: (B, N) float32 sums of completion-token log-probs; 0 for absent completions.
    """
    return _rows_logps(
        model, prompt_input_ids, prompt_attention_mask, completion_input_ids, completion_attention_mask
    )
