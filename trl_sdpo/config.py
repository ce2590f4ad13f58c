"""Configuration for the S-DPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.utils import is_torch_bf16_gpu_available
from trl import DPOConfig

from .loss import RANKING_LOSSES
from .versions import warn_if_untested_trl

warn_if_untested_trl()  # this module builds on TRL internals (trl_sdpo/versions.py says which)

# The `loss_type` lists SDPOTrainer computes: the ranking loss where DPO's "sigmoid" stands, optionally with TRL's
# "sft" term (RPO). Every other DPO loss is defined on one chosen/rejected pair.
SUPPORTED_LOSS_TYPES = (["sigmoid"], ["sigmoid", "sft"], ["sft", "sigmoid"])


@dataclass
class SDPOConfig(DPOConfig):
    r"""
    Configuration class for [`SDPOTrainer`]: TRL's [`~trl.DPOConfig`] plus the few parameters of Softmax-DPO.

    Every `DPOConfig` / `TrainingArguments` parameter keeps its meaning. The preference term is the ranking loss
    chosen by `ranking_loss` (S-DPO's softmax by default), which stands where DPO's `"sigmoid"` loss stands: it is
    that loss at k=1. `loss_type` is `["sigmoid"]` (the ranking loss alone) or `["sigmoid", "sft"]` with
    `loss_weights`, as `DPOTrainer` combines them (RPO: the ranking loss plus the NLL of the chosen completion);
    `beta` is the temperature of the implicit reward. Note on `beta`: the S-DPO paper uses `beta=1.0` for
    recommendation (and studies 0.1-5), while TRL's default, kept here, is 0.1; pass `beta=1.0` to reproduce the
    paper. Unlike `DPOConfig`, `bf16` left unset means bf16 only where a bf16-capable GPU is present, so the default
    config works on a CPU.

    Parameters:
        > Parameters that control the negatives

        num_negatives (`int` or `None`, *optional*, defaults to `None`):
            Use the first `num_negatives` rejected completions of each row. Rows with fewer raise an error before
            training. `None` uses all of each row's negatives, and rows may then have different counts (padded and
            masked in the loss).

        > Parameters that control the loss

        ranking_loss (`str`, *optional*, defaults to `"softmax"`):
            How the chosen completion is set against its k negatives (`r = beta * (log pi - log pi_ref)`):

            - `"softmax"`: S-DPO, `softplus(logsumexp_j (r_j - r_w))`, the chosen one against all k at once.
            - `"pairwise"`: the mean over the row's negatives of DPO's `-log sigmoid(r_w - r_j)`, what training
              `DPOTrainer` on the row split into k pairs computes, with the prompt run once.
            - `"plackett_luce"`: the NLL of the full ranking chosen > rejected[0] > rejected[1] > ... under the
              Plackett-Luce model. The `rejected` lists must be ordered best first. `num_negatives` may not cut a
              ranking (rows with more negatives raise an error): drop the tail in the data if that is meant.

            All three are DPO's sigmoid loss at k=1. See `trl_sdpo.loss`.

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
    ranking_loss: str = field(
        default="softmax",
        metadata={
            "help": "How the chosen completion is set against its k negatives: `softmax` (S-DPO), `pairwise` (DPO on "
            "each (chosen, rejected_j) pair, averaged per row) or `plackett_luce` (NLL of the ranking chosen > "
            "rejected[0] > rejected[1] > ...; the lists must be ordered best first). All equal DPO at k=1.",
            "choices": list(RANKING_LOSSES),
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
        if self.beta <= 0:
            raise ValueError(
                f"`beta` must be positive, got {self.beta}: at 0 the loss is constant (no gradient), and below 0 the "
                "model is trained towards the rejected completions while the logged rewards say the opposite."
            )
        if self.num_negatives is not None and self.num_negatives < 1:
            raise ValueError(f"`num_negatives` must be at least 1 or None, got {self.num_negatives}.")
        if self.ranking_loss not in RANKING_LOSSES:
            raise ValueError(
                f"`ranking_loss` is {self.ranking_loss!r}; expected one of {', '.join(map(repr, RANKING_LOSSES))}."
            )
        if list(self.loss_type) not in SUPPORTED_LOSS_TYPES:
            raise ValueError(
                f"SDPOTrainer computes its ranking loss (`ranking_loss`, the generalization of `loss_type='sigmoid'` "
                f"to k negatives), optionally with the `sft` term; got loss_type={self.loss_type}. Use "
                "`loss_type=['sigmoid']` (the default) or `['sigmoid', 'sft']` with `loss_weights`."
            )
        for name in ("ld_alpha", "use_weighting", "label_smoothing"):
            if getattr(self, name, None):
                raise ValueError(f"`{name}` is a DPO variant that SDPOTrainer does not implement; unset it.")
        if getattr(self, "f_divergence_type", "reverse_kl") != "reverse_kl":
            raise ValueError("SDPOTrainer supports only `f_divergence_type='reverse_kl'` (standard DPO rewards).")
