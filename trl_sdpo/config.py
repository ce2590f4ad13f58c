"""Configuration for the S-DPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.utils import is_torch_bf16_gpu_available
from trl import DPOConfig


@dataclass
class SDPOConfig(DPOConfig):
    r"""
    Configuration class for [`SDPOTrainer`]: TRL's [`~trl.DPOConfig`] plus the few parameters of Softmax-DPO.

    Every `DPOConfig` / `TrainingArguments` parameter keeps its meaning. S-DPO computes one loss,
    `softplus(logsumexp_j(beta * (r_j - r_w)))`, so `loss_type` must stay `["sigmoid"]` (the k=1 case it generalizes)
    and `beta` is its temperature. Note on `beta`: the S-DPO paper uses `beta=1.0` for recommendation (and studies
    0.1-5), while TRL's default, kept here, is 0.1; pass `beta=1.0` to reproduce the paper. Unlike `DPOConfig`,
    `bf16` left unset means bf16 only where a bf16-capable GPU is present, so the default config works on a CPU.

    Parameters:
        > Parameters that control the negatives

        num_negatives (`int` or `None`, *optional*, defaults to `None`):
            Use the first `num_negatives` rejected completions of each row. Rows with fewer raise an error before
            training. `None` uses all of each row's negatives, and rows may then have different counts (padded and
            masked in the loss).

        > Parameters that control the log-prob computation

        prefix_sharing (`bool`, *optional*, defaults to `True`):
            Run each prompt once for all of its 1+k completions (one row `[prompt | c_0 | ... | c_k]` with a mask that
            lets each completion see only the prompt and itself). `False` runs 1+k padded prompt+completion rows;
            both give the same log-probs.
    """

    num_negatives: int | None = field(
        default=None,
        metadata={
            "help": "Use the first `num_negatives` rejected completions of each row; rows with fewer raise an error. "
            "None uses all of each row's negatives (counts may differ between rows)."
        },
    )
    prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Run each prompt once for all of its completions (shared prefix). False runs one "
            "prompt+completion row per completion; both give the same log-probs."
        },
    )

    def __post_init__(self):
        # DPOConfig turns bf16 on whenever fp16 is off, and TrainingArguments then refuses to start on a machine
        # without a bf16 accelerator (a plain CPU). Keep TRL's default where bf16 is available, fp32 elsewhere.
        if self.bf16 is None and not self.fp16 and not is_torch_bf16_gpu_available():
            self.bf16 = False
        super().__post_init__()
        if self.num_negatives is not None and self.num_negatives < 1:
            raise ValueError(f"`num_negatives` must be at least 1 or None, got {self.num_negatives}.")
        if list(self.loss_type) != ["sigmoid"]:
            raise ValueError(
                f"SDPOTrainer computes the S-DPO loss (the softmax generalization of `loss_type='sigmoid'`); got "
                f"loss_type={self.loss_type}. Leave `loss_type` at its default."
            )
        for name in ("ld_alpha", "use_weighting", "label_smoothing", "loss_weights"):
            if getattr(self, name, None):
                raise ValueError(f"`{name}` is a DPO variant that SDPOTrainer does not implement; unset it.")
        if getattr(self, "f_divergence_type", "reverse_kl") != "reverse_kl":
            raise ValueError("SDPOTrainer supports only `f_divergence_type='reverse_kl'` (standard DPO rewards).")
