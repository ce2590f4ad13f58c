"""trl-sdpo: Softmax-DPO (S-DPO) for Hugging Face TRL.

Not to be confused with TRL's unrelated `trl.experimental.sdpo.SDPOTrainer` (self-distillation).
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"  # kept equal to pyproject.toml's version by tests/test_packaging.py

# Names are imported on first use: importing torch and trl takes seconds, and `trl_sdpo.rec` (data loading, the
# `trl-sdpo data` command) should not pay for them.
_EXPORTS = {
    "CompletionSFTTrainer": "sft",
    "DataCollatorForMultiNegativePreference": "collator",
    "pad_multi_completion": "collator",
    "SDPOConfig": "config",
    "merge_rejected_columns": "data",
    "split_into_pairs": "data",
    "completion_logps": "logprobs",
    "sdpo_loss": "loss",
    "pairwise_dpo_loss": "loss",
    "plackett_luce_loss": "loss",
    "RANKING_LOSSES": "loss",
    "SDPOTrainer": "trainer",
    "SoftmaxDPOTrainer": "trainer",
}

__all__ = [
    "CompletionSFTTrainer",
    "DataCollatorForMultiNegativePreference",
    "SDPOConfig",
    "SDPOTrainer",
    "SoftmaxDPOTrainer",
    "__version__",
    "completion_logps",
    "merge_rejected_columns",
    "pad_multi_completion",
    "pairwise_dpo_loss",
    "plackett_luce_loss",
    "RANKING_LOSSES",
    "sdpo_loss",
    "split_into_pairs",
]

if TYPE_CHECKING:
    from .collator import DataCollatorForMultiNegativePreference, pad_multi_completion
    from .config import SDPOConfig
    from .data import merge_rejected_columns, split_into_pairs
    from .logprobs import completion_logps
    from .loss import RANKING_LOSSES, pairwise_dpo_loss, plackett_luce_loss, sdpo_loss
    from .sft import CompletionSFTTrainer
    from .trainer import SDPOTrainer, SoftmaxDPOTrainer


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
