"""`CompletionSFTTrainer`: TRL's `SFTTrainer` whose loss computes the LM head only where a token carries loss.

On a recommendation row the prompt (a history and 20 candidate titles, hundreds of tokens) carries no loss and the
completion (one title) does. TRL 1.16 computes log-probs through a fused LM head that, on CPUs (no Triton), scores
every position (`compact = _use_triton(...)`), so a (tokens x vocabulary) block of logits is built for each prompt
token and thrown away. This trainer gathers the hidden states of the positions that predict a labelled token and runs
the LM head on those alone, through the same head as [`completion_logps`] (fp32 log-softmax, bounded chunks). The
loss is TRL's `"nll"` loss unchanged: the summed negative log-likelihood of the labelled tokens divided by their
count (or by `num_items_in_batch` under gradient accumulation).
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from .logprobs import _REQUEST_KWARG, add_completion_logps_head
from .versions import warn_if_untested_trl

warn_if_untested_trl()  # this module builds on TRL internals (trl_sdpo/versions.py says which)


class CompletionSFTTrainer(SFTTrainer):
    """
    [`~trl.SFTTrainer`] whose loss runs the LM head only on positions that predict a labelled token.

    Same constructor, same data handling, same `"nll"` loss as `SFTTrainer` (tested equal, loss and gradients); it
    pays off when most tokens carry no loss (`completion_only_loss`, `assistant_only_loss`). Not logged, as there are
    no logits over the vocabulary to take them from: `entropy` and `mean_token_accuracy`. Every other configuration
    (`loss_type="dft"`, label smoothing, a `compute_loss_func`, MoE auxiliary losses, sequence parallelism) takes
    `SFTTrainer`'s own path.
    """

    def __init__(self, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if isinstance(model, torch.nn.Module):
            # Before accelerate wraps the forward for mixed precision (see `add_completion_logps_head`)
            add_completion_logps_head(model)
        super().__init__(*args, **kwargs)
        add_completion_logps_head(self.model)

    def _head_only_applies(self, inputs: dict[str, torch.Tensor]) -> bool:
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        return (
            "labels" in inputs
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and not (parallelism is not None and getattr(parallelism, "sp_enabled", False))
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._head_only_applies(inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask", "assistant_masks")}
        # Position t predicts token t + 1: keep the positions whose next label is a real token
        predicts = labels[:, 1:] != -100
        rows, columns = predicts.nonzero(as_tuple=True)
        positions = rows * labels.shape[1] + columns
        targets = labels[:, 1:][predicts]
        outputs = model(**model_inputs, use_cache=False, **{_REQUEST_KWARG: (positions, targets)})
        count = predicts.sum() if num_items_in_batch is None else num_items_in_batch
        # Clamped as TRL does: a batch without labelled tokens gives a finite zero
        loss = -outputs.log_probs.sum() / torch.as_tensor(count, device=outputs.log_probs.device).clamp(min=1)
        # As `SFTTrainer`: `num_items_in_batch` counts every rank's tokens, and DDP averages gradients across ranks
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if mode == "train":  # counted as SFTTrainer counts (padding-free batches have position ids, no mask)
            if "attention_mask" in inputs:
                tokens = inputs["attention_mask"].sum()
            else:
                tokens = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            tokens = self.accelerator.gather_for_metrics(tokens).sum().item()
            self._total_train_tokens += tokens // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
