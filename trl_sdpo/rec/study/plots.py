"""Plots of a study: metrics with error bars, DPO vs S-DPO training curves, wall time. matplotlib is imported on use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .analysis import BASELINE_METHODS, group_runs, summary_table
from .report import HEADERS

CURVE_KEYS = ("rewards/chosen", "rewards/margins", "logps/chosen")


def _pyplot():
    # Imported on use: the analysis itself needs only numpy, and the caller's backend (inline, Agg) is kept.
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(
    runs: Iterable[dict[str, Any]],
    split: str,
    metrics: Sequence[str] = ("generation/hr@1", "generation/valid_ratio", "ranking/hr@1", "ranking/ndcg@5"),
):
    """
    One panel per metric: a bar per LM method (mean over seeds, error bar ± sample std), baselines as lines.

    Args:
        runs (`Iterable[dict]`): Runs from [`~trl_sdpo.rec.study.load_study`].
        split (`str`): The split.
        metrics (`Sequence[str]`, *optional*): Keys of `SUMMARY_METRICS`.

    Returns:
        `matplotlib.figure.Figure`.
    """
    plt = _pyplot()
    table = summary_table(runs, split)
    bars = [e for e in table if e["kind"] not in BASELINE_METHODS]
    lines = [e for e in table if e["kind"] in BASELINE_METHODS]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        means = [e[metric][0] for e in bars]
        stds = [0.0 if np.isnan(e[metric][1]) else e[metric][1] for e in bars]
        x = np.arange(len(bars))
        ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(x, [e["method"] for e in bars], rotation=30, ha="right")
        for i, entry in enumerate(lines):
            if not np.isnan(entry[metric][0]):
                ax.axhline(entry[metric][0], ls="--", color=f"C{i + 1}", label=entry["method"])
        ax.set_title(f"{HEADERS.get(metric, metric)} ({split})")
        if lines and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _curve(group: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps and the mean and std over seeds of `key` in the runs' log histories (steps every seed logged)."""
    per_seed = []
    for run in group:
        points = {e["step"]: e[key] for e in run.get("log_history") or [] if key in e and "step" in e}
        per_seed.append(points)
    steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    values = np.array([[p[s] for s in steps] for p in per_seed], dtype=np.float64).reshape(len(per_seed), len(steps))
    std = values.std(axis=0, ddof=1) if len(per_seed) > 1 else np.zeros(len(steps))
    return np.array(steps), values.mean(axis=0) if len(per_seed) else values, std


def plot_training_curves(
    runs: Iterable[dict[str, Any]],
    split: str,
    methods: Sequence[str] = ("dpo", "sdpo"),
    keys: Sequence[str] = CURVE_KEYS,
):
    """
    Training curves from the runs' `log_history`: mean over seeds, shaded ± sample std, one panel per key.

    Args:
        runs (`Iterable[dict]`): Runs from [`~trl_sdpo.rec.study.load_study`].
        split (`str`): The split whose runs to take (each run stores its training stage's log history).
        methods (`Sequence[str]`, *optional*, defaults to `("dpo", "sdpo")`): Methods drawn.
        keys (`Sequence[str]`, *optional*): Logged metrics, defaults to `rewards/chosen`, `rewards/margins` and
            `logps/chosen`.

    Returns:
        `matplotlib.figure.Figure`.
    """
    plt = _pyplot()
    groups = group_runs(runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, method in enumerate(methods):
            group = groups.get((split, method), [])
            steps, mean, std = _curve(group, key)
            if steps.size == 0:
                continue
            ax.plot(steps, mean, color=f"C{i}", label=f"{method} (n={len(group)})")
            ax.fill_between(steps, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_wall_time(runs: Iterable[dict[str, Any]], split: str):
    """
    Wall seconds of each method's own stages (training, generation and ranking evaluation), mean over seeds.

    The SFT checkpoint of a seed is trained once and shared: its time is in the `sft` bars only.

    Returns:
        `matplotlib.figure.Figure`.
    """
    plt = _pyplot()
    groups = [(method, group) for (s, method), group in group_runs(runs).items() if s == split]
    stages = ("train", "eval_generation", "eval_ranking")
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * max(len(groups), 1), 3.4))
    x = np.arange(len(groups))
    bottom = np.zeros(len(groups))
    for i, stage in enumerate(stages):
        height = np.array([np.mean([r["timings_s"].get(stage) or 0.0 for r in group]) for _, group in groups])
        ax.bar(x, height, bottom=bottom, color=f"C{i}", label=stage)
        bottom += height
    # Error bar: sample std over seeds of the three stages' sum.
    totals = [[sum(r["timings_s"].get(stage) or 0.0 for stage in stages) for r in group] for _, group in groups]
    ax.errorbar(x, bottom, yerr=[np.std(t, ddof=1) if len(t) > 1 else 0.0 for t in totals], fmt="none", color="k")
    ax.set_xticks(x, [m for m, _ in groups], rotation=30, ha="right")
    ax.set_ylabel("seconds (mean over seeds)")
    ax.set_title(f"wall time per method ({split})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweep(
    runs: Iterable[dict[str, Any]],
    split: str,
    parameter: str,
    metrics: Sequence[str] = ("ranking/hr@1", "ranking/ndcg@5"),
    baselines: Iterable[dict[str, Any]] = (),
):
    """
    A metric against one S-DPO setting (`num_negatives` or `beta`): mean over seeds with ± sample std error bars,
    on a log x axis (the values double or grow by 5x), and dashed lines for `baselines` runs on the same split (e.g.
    the main study's `sft-continued` and `dpo`, evaluated on the same rows).

    Returns:
        `matplotlib.figure.Figure`.
    """
    from .sweep import SWEEP_PARAMETERS, sweep_table

    plt = _pyplot()
    runs = list(runs)
    table = sweep_table(runs, split, parameter, metrics=metrics)
    reference = summary_table(list(baselines), split) if baselines else []
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        x = [e["value"] for e in table]
        mean = [e[metric][0] for e in table]
        std = [0.0 if np.isnan(e[metric][1]) else e[metric][1] for e in table]
        ax.errorbar(x, mean, yerr=std, fmt="o-", capsize=3, label="sdpo")
        for i, entry in enumerate(reference):
            if not np.isnan(entry[metric][0]):
                ax.axhline(entry[metric][0], ls="--", color=f"C{i + 1}", label=entry["method"])
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.minorticks_off()
        ax.set_xlabel(SWEEP_PARAMETERS[parameter])
        ax.set_title(f"{HEADERS.get(metric, metric)} ({split})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sft_curve(
    runs: Iterable[dict[str, Any]], split: str = "valid", metrics: Sequence[str] = ("ranking/ndcg@5", "ranking/hr@1")
):
    """
    The SFT learning curve: each metric against the rows seen (log scale), with the 95% interval of its mean over
    the eval rows (normal, from the per-row values), one panel per metric.

    Args:
        runs (`Iterable[dict]`): Runs from [`~trl_sdpo.rec.study.load_study`] with curve points (kind sft, `sft_rows`).
        split (`str`, *optional*, defaults to `"valid"`): The split.
        metrics (`Sequence[str]`, *optional*): Keys of `ROW_METRICS`.

    Returns:
        `matplotlib.figure.Figure`.
    """
    from .analysis import row_values
    from .curve import curve_points

    plt = _pyplot()
    runs = list(runs)
    points = curve_points(runs, split)
    by_method = {r["method"]: r for r in runs if r["split"] == split}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        xs, means, half = [], [], []
        for rows, method in points:
            values = row_values(by_method[method], metric)
            xs.append(rows)
            means.append(values.mean())
            half.append(1.96 * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0)
        ax.errorbar(xs, means, yerr=half, marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("SFT rows seen")
        ax.set_title(f"{HEADERS.get(metric, metric)} ({split})")
    fig.tight_layout()
    return fig


def plot_orderings(verdicts: Sequence[Any]):
    """
    A forest plot of orderings: one line per ordering and metric, its row-level interval (rows the replicates) and
    its seed-level t-interval (training runs the replicates) side by side against 0, the verdict beside it.

    Args:
        verdicts (`Sequence[OrderingVerdict]`): From [`~trl_sdpo.rec.study.replication.replicated_verdicts`];
            orderings without runs are left out.

    Returns:
        `matplotlib.figure.Figure`.
    """
    plt = _pyplot()
    shown = [v for v in verdicts if v.comparison is not None]
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(shown) + 1.2))
    for i, verdict in enumerate(shown):
        c, y = verdict.comparison, len(shown) - 1 - i
        for offset, (low, high), color, label in (
            (0.15, (c.row_low, c.row_high), "tab:blue", "row level (eval rows)"),
            (-0.15, (c.t_low, c.t_high), "tab:red", "seed level (t-interval over training runs)"),
        ):
            if not np.isnan(low):
                ax.plot([low, high], [y + offset] * 2, color=color, lw=2, label=label if i == 0 else None)
        ax.plot([c.mean_diff], [y], "ko", ms=4)
        ax.annotate(verdict.verdict, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(0.0, color="grey", lw=1)
    ax.set_yticks(range(len(shown)), [v.name for v in reversed(shown)], fontsize=8)
    ax.xaxis.set_major_locator(plt.MaxNLocator(6))
    ax.set_xlabel("difference a - b (95% intervals)")
    if shown:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(shown)), ncol=2)
    fig.tight_layout()
    return fig
