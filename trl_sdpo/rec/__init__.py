"""
Recommendation toolkit: datasets, candidate lists, prompts and S-DPO datasets for LM-based next-item recommendation.

The core (`trl_sdpo.loss`, `trainer`, ...) never imports this package. The data modules (dataset, loaders, candidates,
leak, prompts, builders) need only the standard library and numpy; `datasets` is imported when a dataset is built.
"""

from .builders import RecExample, build_examples, build_preference_dataset, build_sft_dataset, select_rows
from .candidates import SAMPLERS, sample_candidates
from .dataset import RecDataset, RecRow
from .leak import leak_check, leak_check_lists, leak_check_records
from .loaders import (
    load_dataset_by_name,
    load_lastfm,
    load_movielens,
    load_sdpo_json,
    sdpo_records,
    write_sdpo_json,
)
from .prompts import TEMPLATES, build_prompt, format_completion

__all__ = [
    "SAMPLERS",
    "TEMPLATES",
    "RecDataset",
    "RecExample",
    "RecRow",
    "build_examples",
    "build_preference_dataset",
    "build_prompt",
    "build_sft_dataset",
    "format_completion",
    "leak_check",
    "leak_check_lists",
    "leak_check_records",
    "load_dataset_by_name",
    "load_lastfm",
    "load_movielens",
    "load_sdpo_json",
    "sample_candidates",
    "sdpo_records",
    "select_rows",
    "write_sdpo_json",
]

# Evaluation, ranking, baselines and model loading import torch and transformers: loaded on first use, so that data
# work (and `trl-sdpo data`) starts in a fraction of a second.
_LAZY = {
    "evaluate_generation": "evaluate",
    "generate_responses": "evaluate",
    "match_response": "evaluate",
    "evaluate_ranking": "ranking",
    "score_candidates": "ranking",
    "ranking_metrics": "metrics",
    "random_baseline": "baselines",
    "popularity_baseline": "baselines",
    "load_model_and_tokenizer": "models",
    "prepare_tokenizer": "models",
    "default_model_dir": "models",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
