"""
The study machinery of the recommendation toolkit: a study file, the runner and its stages, and the analysis of the
run JSONs it writes. One module per job:

- `config`: the study YAML (dataclasses, presets, validation).
- `runner`: `run_experiment` and `plan`: every (method, seed) of a study on one split, one run JSON each.
- `stages`: the SFT stage (and its learning curve) and the preference stage of a method.
- `context`: what the stages of one call share (`StudyContext`: config, dataset, rows computed once per seed).
- `models`: the starting model, checkpoints and the TRL config of a stage.
- `records`: run JSON paths and recorded settings, checkpoint folders, atomic writes.
- `resumable`: Trainer checkpoints to resume from across sittings, the record of each sitting, curve points.
- `heldout`: implicit rewards on held-out preference rows (did the preference stage move the model?).
- `analysis`: loading runs, per-row values, summary tables, paired bootstrap (numpy only).
- `curve`: the SFT learning curve and the rule that picks its point.
- `power`: how many eval rows a paired interval of a given width needs.
- `claims`, `selection`, `sweep`, `report`, `plots`: the claim check, choosing settings on valid, the k/beta sweep,
  docs/results.md, figures.

`trl_sdpo.rec.study` itself exports the analysis names (`load_study`, `summary_table`, `compare_methods`, ...).
"""

from .analysis import (
    BASELINE_METHODS,
    CLAIM_METRICS,
    COMPARISONS,
    KINDS,
    LM_METHODS,
    ROW_METRICS,
    SCHEMA,
    SUMMARY_METRICS,
    PairedComparison,
    compare_lists,
    compare_methods,
    group_runs,
    load_run,
    load_study,
    mean_std,
    method_order,
    missing_runs,
    other_list_samplers,
    paired_bootstrap,
    rank_agreement,
    row_values,
    run_difference,
    runs_of,
    runs_on_other_lists,
    splits,
    summary_table,
)

__all__ = [
    "BASELINE_METHODS",
    "CLAIM_METRICS",
    "COMPARISONS",
    "KINDS",
    "LM_METHODS",
    "ROW_METRICS",
    "SCHEMA",
    "SUMMARY_METRICS",
    "PairedComparison",
    "compare_lists",
    "compare_methods",
    "group_runs",
    "load_run",
    "load_study",
    "mean_std",
    "method_order",
    "missing_runs",
    "other_list_samplers",
    "paired_bootstrap",
    "rank_agreement",
    "row_values",
    "run_difference",
    "runs_of",
    "runs_on_other_lists",
    "splits",
    "summary_table",
]
