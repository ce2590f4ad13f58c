"""
Whether a preference stage moved the model: implicit rewards on held-out preference rows, during and after training.

The implicit reward of a completion is `beta * (log pi(y|x) - log pi_ref(y|x))` (summed token log-probs), the
reference being the SFT model the stage started from. On rows the model did not train on, a stage that learned
something ranks the chosen completion above the rejected ones more often than chance (pairwise accuracy 0.5) and by a
margin. The same measure for every preference method (sft-continued, dpo, sdpo), computed here from the model and the
rows' precomputed reference columns, not from a trainer's own logs: SFT trainers log no rewards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ...collator import DataCollatorForMultiNegativePreference
from ...logprobs import completion_logps

# Fixed before any study read it: below this mean held-out margin (nats, beta 1) a stage "did not move" the model,
# whatever its accuracy. bf16 rounds summed log-probs by up to ~0.2 nats per completion (measured on SmolLM2-135M):
# a smaller margin can be rounding alone.
MIN_MARGIN = 0.25


@torch.no_grad()
def heldout_logps(model, rows, pad_token_id: int, max_length: int | None, batch_size: int = 8, bf16: bool = False):
    """
    Summed log-probs of every completion of prepared S-DPO rows (`prompt_ids`, `chosen_ids`, `rejected_ids`).

    Args:
        model: The policy (train or eval mode; put in eval mode for the call and restored).
        rows: A prepared dataset (a trainer's `train_dataset` or `precompute_reference`'s output), k negatives a row.
        pad_token_id (`int`), max_length (`int` or `None`): As the trainer's collator.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward pass.
        bf16 (`bool`, *optional*, defaults to `False`): Under bf16 autocast (the log-softmax stays fp32).

    Returns:
        `np.ndarray` (N, 1+K) float64: column 0 the chosen completion; NaN for absent negatives.
    """
    collator = DataCollatorForMultiNegativePreference(pad_token_id=pad_token_id, max_length=max_length)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logps = completion_logps(
                    model,
                    batch["prompt_input_ids"].to(device),
                    batch["prompt_attention_mask"].to(device),
                    batch["completion_input_ids"].to(device),
                    batch["completion_attention_mask"].to(device),
                )
            values = logps.double().cpu().numpy()
            present = np.concatenate([np.ones((len(values), 1), bool), batch["rejected_mask"].numpy()], axis=1)
            out.append(np.where(present, values, np.nan))
    finally:
        model.train(was_training)
    width = max(block.shape[1] for block in out)
    return np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=np.nan) for b in out])


def reference_logps(rows) -> np.ndarray:
    """The precomputed reference columns of prepared rows as (N, 1+K) float64, NaN for absent negatives."""
    chosen = np.asarray(rows["ref_chosen_logps"], dtype=np.float64)
    rejected = [list(r) for r in rows["ref_rejected_logps"]]
    counts = [len(r) for r in rows["rejected_ids"]]
    width = max(counts)
    out = np.full((len(chosen), 1 + width), np.nan)
    out[:, 0] = chosen
    for i, (values, k) in enumerate(zip(rejected, counts)):
        out[i, 1 : 1 + k] = values[:k]
    return out


def reward_stats(policy: np.ndarray, reference: np.ndarray, beta: float) -> dict[str, Any]:
    """
    Implicit-reward statistics of held-out rows from (N, 1+K) policy and reference log-probs (NaN = absent).

    Returns:
        `dict`: `accuracy` (the fraction of (row, negative) pairs whose chosen reward is higher; chance 0.5),
        `accuracy_all` (rows whose chosen reward beats every negative's; chance 1/(1+k)), `margin` (mean over rows of
        the chosen reward minus the mean of the row's rejected rewards), `chosen`/`rejected` (mean rewards),
        `rows`, and the per-row `row_margins` and `row_accuracy` (for intervals over rows).
    """
    rewards = beta * (policy - reference)
    chosen, rejected = rewards[:, 0], rewards[:, 1:]
    present = ~np.isnan(rejected)
    wins = np.where(present, chosen[:, None] > rejected, False)
    row_accuracy = wins.sum(axis=1) / present.sum(axis=1)
    row_margins = chosen - np.nanmean(rejected, axis=1)
    return {
        "accuracy": float(wins.sum() / present.sum()),
        "accuracy_all": float(np.mean(wins.sum(axis=1) == present.sum(axis=1))),
        "margin": float(row_margins.mean()),
        "chosen": float(chosen.mean()),
        "rejected": float(np.nanmean(rejected)),
        "rows": int(len(chosen)),
        "row_margins": [round(float(x), 5) for x in row_margins],
        "row_accuracy": [round(float(x), 4) for x in row_accuracy],
    }


def interval(values, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval (percentile, resampling rows) of the mean of `values`."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


class HeldoutRewardsCallback(TrainerCallback):
    """
    Evaluate the implicit rewards of held-out rows every `every` optimizer steps and at the end of training, and add
    them to the trainer's log history as `heldout/accuracy`, `heldout/margin`, `heldout/chosen`, `heldout/rejected`
    (without the per-row lists, kept in `self.history`).

    Args:
        rows: Prepared held-out rows with the reference columns (the stage's starting model).
        beta (`float`): The reward scale (the method's beta; 1 for sft-continued, whose reward is its log-ratio).
        pad_token_id (`int`), max_length (`int` or `None`), batch_size (`int`), bf16 (`bool`): See [`heldout_logps`].
        every (`int` or `None`): Steps between evaluations; `None` = at the end only.
    """

    def __init__(self, rows, beta, pad_token_id, max_length, batch_size=8, bf16=False, every=None):
        self.rows, self.beta, self.every = rows, beta, every
        self.kwargs = {"pad_token_id": pad_token_id, "max_length": max_length, "batch_size": batch_size, "bf16": bf16}
        self.reference = reference_logps(rows)
        self.history: list[dict[str, Any]] = []

    def evaluate(self, model, step: int) -> dict[str, Any]:
        stats = reward_stats(heldout_logps(model, self.rows, **self.kwargs), self.reference, self.beta)
        self.history.append({"step": step, **stats})
        return stats

    def _log(self, state, model) -> None:
        if self.history and self.history[-1]["step"] == state.global_step:
            return
        stats = self.evaluate(model, state.global_step)
        entry = {f"heldout/{key}": stats[key] for key in ("accuracy", "accuracy_all", "margin", "chosen", "rejected")}
        state.log_history.append({**entry, "step": state.global_step})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._log(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._log(state, model)
