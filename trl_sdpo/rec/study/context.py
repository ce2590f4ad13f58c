"""
What the stages of one study call share (`StudyContext`): the study, where it writes, its precision, the dataset and
the rows computed once per seed. The runner builds it; the stages (`trl_sdpo.rec.study.stages`) receive it, so they
need nothing of the runner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..machine import resolve_bf16
from .records import sft_checkpoint_dir

if TYPE_CHECKING:
    from ..dataset import RecDataset
    from .config import ExperimentConfig


@dataclass
class StudyContext:
    """
    The state one `trl-sdpo experiment` call shares between its stages.

    Parameters:
        config (`ExperimentConfig`): The study, resolved for the split it runs on.
        dataset (`RecDataset` or `None`): The study's dataset, set when the runner loads its data (`None` while only
            a plan is made).
        preference_cache (`dict`): The preference rows of each seed and row settings (examples, S-DPO rows,
            held-out rows), built once so that dpo, dpo-pairs and sdpo train on the same rows.
        reference_cache (`dict`): Those rows tokenized with the SFT model's reference log-probs, computed once per
            seed and rows and shared by every method that trains on them (dpo reads the first negative's columns).
        output_dir (`Path`): `config.output_dir`.
        bf16 (`bool`): Whether the LM stages run in bf16 autocast (`config.bf16` resolved on this machine).
    """

    config: ExperimentConfig
    dataset: RecDataset | None = None
    preference_cache: dict[tuple, Any] = field(default_factory=dict)
    reference_cache: dict[tuple, Any] = field(default_factory=dict)
    output_dir: Path = field(init=False)
    bf16: bool = field(init=False)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.config.output_dir)
        self.bf16 = resolve_bf16(self.config.bf16)

    def example_options(self) -> dict[str, Any]:
        """How every row of the study is built (`trl_sdpo.rec.builders.build_examples` keywords)."""
        c = self.config
        return {
            "num_candidates": c.num_candidates,
            "sampler": c.sampler,
            "conversational": c.conversational,
            "paraphrase": c.paraphrase,
        }

    def train_examples(self, rows: int | None, seed: int):
        """`rows` train rows drawn by `seed` (all with `None`), built as every row of the study."""
        from ..builders import build_examples

        return build_examples(self.dataset, "train", seed=seed, max_rows=rows, **self.example_options())

    def sft_model_id(self, seed: int, spelt: bool = False) -> str:
        """
        The SFT model that training seed `seed`'s preference stage starts from, as the key of what is kept from it
        (trained preference models, reference log-probs): its folder relative to the output folder, so the key is
        the same however `--output_dir` is spelt (absolute or relative) and wherever the study folder lies.
        `spelt=True` gives the folder as the output folder was spelt, the key before that (still looked up).
        """
        sft_seed = seed if self.config.sft_seed is None else self.config.sft_seed
        folder = sft_checkpoint_dir(self.config, sft_seed, self.config.sft.start_rows)
        return str(folder) if spelt else os.path.relpath(folder.resolve(), self.output_dir.resolve())
