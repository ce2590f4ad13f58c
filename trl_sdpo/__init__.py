"""trl-sdpo: Softmax-DPO (S-DPO) for Hugging Face TRL.

Not to be confused with TRL's unrelated `trl.experimental.sdpo.SDPOTrainer` (self-distillation).
"""

from .collator import DataCollatorForMultiNegativePreference, pad_multi_completion
from .config import SDPOConfig
from .data import merge_rejected_columns
from .logprobs import completion_logps
from .loss import sdpo_loss
from .trainer import SDPOTrainer

SoftmaxDPOTrainer = SDPOTrainer

__version__ = "0.1.0"

__all__ = [
    "DataCollatorForMultiNegativePreference",
    "SDPOConfig",
    "SDPOTrainer",
    "SoftmaxDPOTrainer",
    "completion_logps",
    "merge_rejected_columns",
    "pad_multi_completion",
    "sdpo_loss",
    "__version__",
]
