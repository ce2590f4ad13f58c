"""The S-DPO loss as a pure tensor function: it knows nothing of models or trainers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    rejected_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Softmax-DPO loss of Chen et al. (2024), "On Softmax Direct Preference Optimization for Recommendation".

    For each row, with rewards `r = logpi(y|x) - logpi_ref(y|x)`:

        L = -log sigmoid(-log sum_j exp(beta * (r_j - r_w)))  =  softplus(logsumexp_j(beta * (r_j - r_w)))

    over the row's real negatives `j`. With one negative this is TRL's DPO `"sigmoid"` loss,
    `-log sigmoid(beta * (r_w - r_l))`. The log-sum-exp and softplus keep it finite for any finite input (the
    paper's code sums exponentials and overflows in fp32 once `beta * margin` passes about 88).

    Args:
        policy_chosen_logps (`torch.Tensor`): (B,) summed log-probs of the chosen completions under the policy.
        policy_rejected_logps (`torch.Tensor`): (B, k) the same for the rejected completions.
        ref_chosen_logps (`torch.Tensor`): (B,) under the reference model.
        ref_rejected_logps (`torch.Tensor`): (B, k) under the reference model.
        beta (`float`): Temperature of the implicit reward. The paper uses 1.0 for recommendation.
        rejected_mask (`torch.Tensor`, *optional*):
            (B, k) bool, True where a negative is real. Padded negatives are left out of the sum.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: per-row losses (B,), chosen rewards (B,) and rejected
        rewards (B, k), the rewards being `beta * r` detached (padded negatives hold 0).

    Raises:
        ValueError: if shapes disagree or a row has no real negative.
    """
    if policy_rejected_logps.dim() != 2 or policy_chosen_logps.dim() != 1:
        raise ValueError(
            f"Expected chosen log-probs of shape (B,) and rejected of shape (B, k), got "
            f"{tuple(policy_chosen_logps.shape)} and {tuple(policy_rejected_logps.shape)}."
        )
    if policy_rejected_logps.shape != ref_rejected_logps.shape or policy_chosen_logps.shape != ref_chosen_logps.shape:
        raise ValueError("Policy and reference log-probs must have the same shapes.")
    if rejected_mask is None:
        rejected_mask = torch.ones_like(policy_rejected_logps, dtype=torch.bool)
    else:
        rejected_mask = rejected_mask.to(device=policy_rejected_logps.device, dtype=torch.bool)
        if rejected_mask.shape != policy_rejected_logps.shape:
            raise ValueError(
                f"`rejected_mask` has shape {tuple(rejected_mask.shape)}, expected {tuple(policy_rejected_logps.shape)}."
            )
    empty = ~rejected_mask.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"Rows {rows} have no real negative (rejected_mask all False); S-DPO needs at least one.")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (rejected_logratios - chosen_logratios.unsqueeze(1))
    # -inf drops a padded negative from the logsumexp; the row keeps at least one finite term (checked above)
    logits = logits.masked_fill(~rejected_mask, float("-inf"))
    losses = F.softplus(torch.logsumexp(logits, dim=1))

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach().masked_fill(~rejected_mask, 0.0)
    return losses, chosen_rewards, rejected_rewards
