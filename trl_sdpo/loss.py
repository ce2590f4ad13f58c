"""The ranking losses as pure tensor functions: they know nothing of models or trainers.

Each takes the summed log-probs of one chosen and k rejected completions per row, under the policy and the reference
model, and returns per-row losses and the implicit rewards `beta * (log pi - log pi_ref)`. They differ in how the
chosen completion is set against its k negatives:

| name              | function               | per-row loss, with `z_j = beta * (r_j - r_w)`                       |
|-------------------|------------------------|---------------------------------------------------------------------|
| `"softmax"`       | [`sdpo_loss`]          | `softplus(logsumexp_j z_j)`: S-DPO, the chosen one against all k    |
| `"pairwise"`      | [`pairwise_dpo_loss`]  | `mean_j softplus(z_j)`: DPO on each (chosen, rejected_j) pair       |
| `"plackett_luce"` | [`plackett_luce_loss`] | NLL of the ranking chosen > rejected[0] > rejected[1] > ...         |

All three are TRL's DPO `"sigmoid"` loss `-log sigmoid(beta * (r_w - r_l))` at k = 1, and all are computed with
log-sum-exp and softplus, so they stay finite for any finite input (the S-DPO paper's code sums exponentials and
overflows in fp32 once `beta * margin` passes about 88). Rows may have fewer than k negatives: `rejected_mask` marks
the real ones, and padded negatives take no part in a loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    rejected_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the inputs and return the chosen rewards (B,), rejected rewards (B, k) and the mask (B, k), rewards
    being `beta * (log pi - log pi_ref)` with their gradient."""
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
        raise ValueError(f"Rows {rows} have no real negative (rejected_mask all False); each needs at least one.")
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    return chosen, rejected, rejected_mask


def _output(losses: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor) -> LossOutput:
    return losses, chosen.detach(), rejected.detach().masked_fill(~mask, 0.0)


def sdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    rejected_mask: torch.Tensor | None = None,
) -> LossOutput:
    """
    Softmax-DPO loss of Chen et al. (2024), "On Softmax Direct Preference Optimization for Recommendation".

    For each row, with rewards `r = log pi(y|x) - log pi_ref(y|x)`:

        L = -log sigmoid(-log sum_j exp(beta * (r_j - r_w)))  =  softplus(logsumexp_j(beta * (r_j - r_w)))

    over the row's real negatives `j`: the chosen completion against all of them at once. With one negative this is
    TRL's DPO `"sigmoid"` loss, `-log sigmoid(beta * (r_w - r_l))`.

    Args:
        policy_chosen_logps (`torch.Tensor`): (B,) summed log-probs of the chosen completions under the policy.
        policy_rejected_logps (`torch.Tensor`): (B, k) the same for the rejected completions.
        ref_chosen_logps (`torch.Tensor`): (B,) under the reference model.
        ref_rejected_logps (`torch.Tensor`): (B, k) under the reference model.
        beta (`float`): Temperature of the implicit reward. The S-DPO paper uses 1.0 for recommendation.
        rejected_mask (`torch.Tensor`, *optional*):
            (B, k) bool, True where a negative is real. Padded negatives take no part in the loss.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: per-row losses (B,), chosen rewards (B,) and rejected
        rewards (B, k), the rewards being `beta * (log pi - log pi_ref)` detached (padded negatives hold 0).

    Raises:
        ValueError: if shapes disagree or a row has no real negative.
    """
    chosen, rejected, mask = _rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, rejected_mask
    )
    # -inf drops a padded negative from the logsumexp; the row keeps at least one finite term (checked above)
    logits = (rejected - chosen.unsqueeze(1)).masked_fill(~mask, float("-inf"))
    return _output(F.softplus(torch.logsumexp(logits, dim=1)), chosen, rejected, mask)


def pairwise_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    rejected_mask: torch.Tensor | None = None,
) -> LossOutput:
    """
    DPO's sigmoid loss on every (chosen, rejected_j) pair of a row, averaged over the row's real negatives.

        L = mean_j -log sigmoid(beta * (r_w - r_j))  =  mean_j softplus(beta * (r_j - r_w))

    This is what splitting each row into k pairs ([`~trl_sdpo.data.split_into_pairs`]) and training TRL's
    `DPOTrainer` on them computes, with each prompt run once instead of k times. Where rows have different numbers
    of negatives, each row weighs the same here, while `DPOTrainer` on the split pairs weighs each pair the same (a
    row with more negatives counts more); with the same k in every row the two are equal.

    Args and returns: as [`sdpo_loss`].
    """
    chosen, rejected, mask = _rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, rejected_mask
    )
    # A padded negative's log-probs are placeholders: its pair loss is multiplied out, and the mean is over real ones
    pair_losses = F.softplus(rejected - chosen.unsqueeze(1)) * mask
    losses = pair_losses.sum(dim=1) / mask.sum(dim=1).to(pair_losses.dtype)
    return _output(losses, chosen, rejected, mask)


def plackett_luce_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    rejected_mask: torch.Tensor | None = None,
) -> LossOutput:
    """
    Negative log-likelihood of a full ranking under the Plackett-Luce model, the scores being the implicit rewards.

    Each row's completions must be in ranking order: `chosen` first (the best), then `rejected` ordered best first,
    so that the row states chosen > rejected[0] > rejected[1] > ... > rejected[k-1]. With scores `s_0 = beta * r_w`
    and `s_i = beta * r_{i-1}`:

        L = sum_{i=0}^{k-1} ( logsumexp_{m >= i} s_m  -  s_i )

    the sum over positions of the NLL of picking the item placed there among those not yet placed. Its first term
    (i = 0) is the S-DPO loss [`sdpo_loss`]; at k = 1 the whole loss is DPO's sigmoid loss. The order of `rejected`
    matters here, unlike in the other two losses. A row with fewer negatives (padded, `rejected_mask` False at the end)
    is the ranking of its real negatives only; a mask with gaps ranks the real negatives in their order.

    Args and returns: as [`sdpo_loss`].
    """
    chosen, rejected, mask = _rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, rejected_mask
    )
    # Position 0 is the chosen completion, positions 1..k the negatives in their given order
    scores = torch.cat([chosen.unsqueeze(1), rejected], dim=1)
    present = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    n = scores.shape[1]
    positions = torch.arange(n, device=scores.device)
    # later[i, m]: item m is still unplaced when position i is chosen. Each position's own item is always included,
    # so no logsumexp runs over -inf alone (its gradient would be NaN); an absent position's term is zeroed below.
    later = positions.unsqueeze(0) >= positions.unsqueeze(1)
    include = (later.unsqueeze(0) & present.unsqueeze(1)) | torch.eye(n, dtype=torch.bool, device=scores.device)
    # Absent negatives get a finite placeholder score (0): their terms are multiplied out and carry no gradient
    filled = scores.masked_fill(~present, 0.0)
    logits = filled.unsqueeze(1).expand(-1, n, -1).masked_fill(~include, float("-inf"))
    terms = (torch.logsumexp(logits, dim=2) - filled) * present
    return _output(terms.sum(dim=1), chosen, rejected, mask)


RANKING_LOSSES: dict[str, Callable[..., LossOutput]] = {
    "softmax": sdpo_loss,
    "pairwise": pairwise_dpo_loss,
    "plackett_luce": plackett_luce_loss,
}
"""The ranking losses by the name `SDPOConfig.ranking_loss` takes."""
