"""Placeholder: being written."""
from trl import DPOTrainer


class SDPOTrainer(DPOTrainer):
    pass
