"""
`docs/results.md` from the run JSONs of one or more study folders: machine, versions, the main table, the paired
comparisons, the claim check and every configuration tried, with nothing left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..machine import describe_machine
from .analysis import (
    SUMMARY_METRICS,
    PairedComparison,
    compare_lists,
    compare_methods,
    format_interval,
    format_mean_std,
    group_runs,
    load_study,
    mean_std,
    other_list_samplers,
    runs_on_other_lists,
    splits,
    stage_seconds,
    summary_table,
)
from .claims import claim_check, describe_claims
from .selection import learning_rate_of, select_variants
from .sweep import SWEEP_METRICS, SWEEP_PARAMETERS, describe_sweep, sweep_comparisons, sweep_table

HEADERS = {
    "generation/hr@1": "HR@1 (gen)",
    "generation/valid_ratio": "ValidRatio",
    "ranking/hr@1": "HR@1",
    "ranking/hr@5": "HR@5",
    "ranking/ndcg@5": "NDCG@5",
    "ranking/mrr": "MRR",
}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(table: list[dict[str, Any]]) -> str:
    """The main table (from [`~trl_sdpo.rec.study.summary_table`]) as Markdown: mean ± std over n seeds."""
    header = ["method", "seeds", *HEADERS.values(), "wall time (s)"]
    rows = [
        [
            entry["method"],
            "1 (seed-independent)" if entry["seed_independent"] else entry["n_seeds"],
            *(format_mean_std(entry[m]) for m, _, _ in SUMMARY_METRICS),
            format_mean_std(entry["time/total"], digits=0),
        ]
        for entry in table
    ]
    return markdown_table(header, rows)


def comparisons_markdown(comparisons: Sequence[PairedComparison]) -> str:
    """Paired comparisons as Markdown: row-bootstrap interval and per-seed differences side by side."""
    header = ["a − b", "metric", "seeds", "rows", "difference", "95% CI (rows)", "per seed mean ± sigma", "CI excl. 0"]
    rows = [
        [
            f"{c.a} − {c.b}",
            HEADERS.get(c.metric, c.metric),
            len(c.seeds),
            c.n_rows,
            f"{c.mean_diff:+.4f}",
            format_interval(c.ci_low, c.ci_high),
            format_mean_std((c.seed_mean, c.seed_sigma)),
            "yes" if c.excludes_zero else "no",
        ]
        for c in comparisons
    ]
    return markdown_table(header, rows)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def configurations_markdown(runs: list[dict[str, Any]]) -> str:
    """
    Every configuration and every run of a study, with nothing left out.

    Three layers, so that each setting is written once: the settings that every run having them shares, when more
    than one method has them (baselines have no model settings); per (split, method), its other settings; per run,
    its metrics and any setting that differs between the seeds of its method.
    """
    flats = [_flatten(run["config"]) for run in runs]
    keys = sorted(set().union(*flats)) if flats else []
    shared = {}
    for key in keys:
        values = {f[key] for f in flats if key in f}
        # A setting only one method has (a variant's override) belongs to that method's line, not to the shared list.
        holders = {(r["split"], r["method"]) for r, f in zip(runs, flats) if key in f}
        if len(values) == 1 and len(holders) > 1:
            shared[key] = values.pop()
    lines = ["Settings shared by every run that has them (held by more than one method):", ""]
    lines += [f"- `{k}` = `{v}`" for k, v in shared.items()] or ["- (none)"]

    def own(flat: dict[str, str], skip) -> str:
        return ", ".join(
            f"`{k}={v}`" for k, v in flat.items() if k not in skip and k not in ("method.name", "method.kind")
        )

    groups: dict[tuple[str, str], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run["split"], run["method"]), []).append(i)
    config_rows, varying = [], {}
    for (split, method), members in groups.items():
        first = flats[members[0]]
        constant = {k: v for k, v in first.items() if all(flats[i].get(k) == v for i in members)}
        varying.update({i: set(shared) | set(constant) for i in members})
        seeds = ", ".join(str(runs[i]["seed"]) for i in members)
        run = runs[members[0]]
        config_rows.append(
            [split, method, run["kind"], run["preset"], seeds, own(constant, shared) or "(shared only)"]
        )
    lines += ["", "Configurations (settings beyond the shared ones):", ""]
    lines.append(markdown_table(["split", "method", "kind", "preset", "seeds", "settings"], config_rows))

    header = ["split", "method", "seed", *HEADERS.values(), "time (s)", "settings varying between seeds"]
    rows = []
    for i, (run, flat) in enumerate(zip(runs, flats)):
        metrics = []
        for _, section, key in SUMMARY_METRICS:
            value = (run["metrics"].get(section) or {}).get(key)
            metrics.append("—" if value is None else f"{value:.4f}")
        seconds = stage_seconds(run)
        time = "—" if seconds is None else f"{seconds:.0f}"
        rows.append([run["split"], run["method"], run["seed"], *metrics, time, own(flat, varying[i]) or "—"])
    lines += ["", "Every run:", "", markdown_table(header, rows)]
    return "\n".join(lines)


def _machines(runs: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        machine = run.get("machine")
        seen[describe_machine(machine) if machine else "not recorded"] = None
    return list(seen)


def _versions(runs: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        versions = run.get("versions") or {}
        seen[", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded"] = None
    return list(seen)


def sweep_markdown(runs: list[dict[str, Any]], split: str, n_boot: int = 10000, seed: int = 0) -> list[str]:
    """
    Lines of the k and beta sweeps of a split (see `trl_sdpo.rec.study.sweep`): per value, mean ± std over seeds;
    each value minus the one below it, paired; where the curve stops improving. Empty when the split has no sweep.
    """
    out: list[str] = []
    for parameter, name in SWEEP_PARAMETERS.items():
        table = sweep_table(runs, split, parameter)
        if len(table) < 2:
            continue
        header = [name, "method", "seeds", *(HEADERS[m] for m in SWEEP_METRICS), "train time (s)"]
        rows = [
            [
                f"{e['value']:g}",
                e["method"],
                len(e["seeds"]),
                *(format_mean_std(e[m]) for m in SWEEP_METRICS),
                format_mean_std(e["time/train"], digits=0),
            ]
            for e in table
        ]
        out += [
            "",
            f"S-DPO over {name} on `{split}` (the other settings as `sdpo`):",
            "",
            markdown_table(header, rows),
        ]
        steps = sweep_comparisons(runs, split, parameter, n_boot=n_boot, seed=seed)
        out += ["", f"Each {name} minus the one below it, paired:", "", comparisons_markdown(steps)]
        for metric in SWEEP_METRICS:
            out += ["", describe_sweep(runs, split, parameter, metric, n_boot=n_boot, seed=seed).replace("\n", "  \n")]
    return out


NOTES_FILE = "NOTES.md"


def _heldout_cell(group: list[dict[str, Any]], key: str) -> str:
    values = [run["heldout"][key] for run in group if run.get("heldout")]
    if len(values) < len(group) or not values:
        return "-"
    return f"{sum(values) / len(values):+.3f}" if key == "margin" else f"{sum(values) / len(values):.3f}"


def selection_markdown(runs: list[dict[str, Any]], split: str) -> list[str]:
    """
    Lines of the choice of settings on a split (`trl_sdpo.rec.study.selection`): per preference kind with two or more
    variants, each variant's learning rate, ranking metrics, held-out rewards (fp32, at the end) and the one chosen.
    Empty for `test` (nothing is chosen there) and for kinds whose variants share one learning rate (a k or beta
    sweep: `sweep_markdown` shows those).
    """
    if split == "test":
        return []
    groups = group_runs(runs)
    chosen = {
        kind: c
        for kind, c in select_variants(runs, split).items()
        if len({learning_rate_of(groups[(split, method)][0]) for method in c["candidates"]}) > 1
    }
    if not chosen:
        return []
    table = {entry["method"]: entry for entry in summary_table(runs, split)}
    rows = []
    for kind, choice in chosen.items():
        for method in choice["candidates"]:
            group = groups[(split, method)]
            rate = learning_rate_of(group[0])
            rows.append(
                [
                    kind,
                    method + (" (chosen)" if method == choice["method"] else ""),
                    "stage default" if rate is None else f"{rate:g}",
                    len(group),
                    format_mean_std(table[method]["ranking/ndcg@5"]),
                    format_mean_std(table[method]["ranking/hr@1"]),
                    _heldout_cell(group, "accuracy"),
                    _heldout_cell(group, "margin"),
                    format_mean_std(mean_std([run["timings_s"].get("train") for run in group]), digits=0),
                ]
            )
    header = ["kind", "method", "learning rate", "seeds", "NDCG@5", "HR@1", "held-out acc.", "held-out margin"]
    return [
        "",
        f"Settings chosen on `{split}` (per kind, the highest mean ranking NDCG@5; a tie keeps the default, then the "
        "lower learning rate). Held-out: implicit-reward accuracy over (chosen, negative) pairs (chance 0.5) and "
        "margin in nats on preference rows not trained on, fp32, after training:",
        "",
        markdown_table([*header, "train time (s)"], rows),
    ]


def curve_markdown(runs: list[dict[str, Any]], split: str, n_boot: int = 10000, seed: int = 0) -> list[str]:
    """Lines of the SFT learning curve of a split (methods of kind sft with `sft_rows`) and the rule's pick so far."""
    from .curve import curve_points, pick_sft_point

    points = curve_points(runs, split)
    if not points:
        return []
    # The planned points are recorded in every curve run's settings
    first = next(r for r in runs if r["split"] == split and r["method"] == points[0][1])
    planned = ((first["config"].get("sft") or {}).get("curve_rows")) or [rows for rows, _ in points]
    table = {entry["method"]: entry for entry in summary_table(runs, split)}
    rows = [
        [
            rows_seen,
            method,
            format_mean_std(table[method]["ranking/ndcg@5"]),
            format_mean_std(table[method]["ranking/hr@1"]),
            format_mean_std(table[method]["generation/valid_ratio"]),
        ]
        for rows_seen, method in points
    ]
    pick = pick_sft_point(runs, planned=planned, split=split, n_boot=n_boot, seed=seed)
    out = ["", f"SFT learning curve on `{split}` (points planned: {planned}):", ""]
    out.append(markdown_table(["rows seen", "method", "NDCG@5", "HR@1 (ranking)", "ValidRatio"], rows))
    head, *steps = pick.describe().splitlines()
    return out + ["", head, ""] + [f"- {step}" for step in steps]


def study_markdown(directory: str | Path, n_boot: int = 10000, seed: int = 0) -> str:
    """The section of `docs/results.md` for one study folder (see [`results_markdown`]), with its `NOTES.md` if any."""
    runs = load_study(directory)
    names = sorted({run["study"] for run in runs})
    presets = sorted({run["preset"] for run in runs})
    out = [f"## Study {', '.join(names)} (`{directory}`), preset {', '.join(presets)}", ""]
    # A study's own notes (what the JSONs cannot say: the sittings, who shared the machine) are part of its record.
    notes = Path(directory) / NOTES_FILE
    if notes.is_file():
        out += [notes.read_text().strip(), ""]
    out += ["Machine(s) the runs were measured on:", ""] + [f"- {m}" for m in _machines(runs)]
    out += ["", "Package versions:", ""] + [f"- {v}" for v in _versions(runs)]
    # test first: it holds the final numbers; valid holds the selection runs.
    for split in sorted(splits(runs), key=lambda s: s != "test"):
        role = "final numbers, computed once" if split == "test" else "selection of settings"
        out += ["", f"### Split `{split}` ({role})", ""]
        out += [
            (
                "Mean ± sample standard deviation (ddof=1) over seeds; wall time is the run's own stages (its training "
                "over all its sittings, its evaluation), without the reference log-probs its seed's methods share."
            ),
            "",
        ]
        out.append(summary_markdown(summary_table(runs, split)))
        comparisons = compare_methods(runs, split, n_boot=n_boot, seed=seed)
        sweeps = sweep_markdown(runs, split, n_boot=n_boot, seed=seed)
        if comparisons or not sweeps:
            out += [
                "",
                f"Paired comparisons on `{split}` (per row averaged over shared seeds; {n_boot} row resamples):",
            ]
            out += ["", comparisons_markdown(comparisons) if comparisons else "(the methods compared were not run)"]
            out += [
                "",
                f"Claim check on `{split}`:",
                "",
                describe_claims(claim_check(runs, split, n_boot=n_boot, seed=seed)),
            ]
        out += sweeps
        out += curve_markdown(runs, split, n_boot=n_boot, seed=seed)
        out += selection_markdown(runs, split)
        for sampler in other_list_samplers(runs):
            others = runs_on_other_lists(runs, sampler)
            out += [
                "",
                f"The same models on the same `{split}` rows with the `{sampler}` candidate lists (ranking):",
                "",
            ]
            out.append(summary_markdown(summary_table(others, split)))
            out += ["", f"`{sampler}` lists minus the study's own, paired by row and seed:", ""]
            out.append(comparisons_markdown(compare_lists(runs, split, sampler, n_boot=n_boot, seed=seed)))
    out += ["", "### Every configuration tried", "", configurations_markdown(runs)]
    groups = group_runs(runs)
    out += ["", f"{len(runs)} runs in {len(groups)} (split, method) groups."]
    return "\n".join(out)


def results_markdown(*study_dirs: str | Path, n_boot: int = 10000, seed: int = 0) -> str:
    """
    The whole of `docs/results.md`, generated from the run JSONs of `study_dirs`.

    Per study and split: the machine and package versions the runs recorded, the main table (mean ± std over seeds),
    the paired comparisons, the claim check in words, and every run with its settings and metrics.

    Args:
        *study_dirs (`str` or `Path`): Study folders (`<dir>/<split>/<method>/seed<seed>.json`).
        n_boot (`int`, *optional*, defaults to `10000`): Bootstrap resamples per comparison.
        seed (`int`, *optional*, defaults to `0`): Seed of the resampling.

    Returns:
        `str`: Markdown.
    """
    if not study_dirs:
        raise ValueError("results_markdown needs at least one study folder.")
    head = [
        "# Results",
        "",
        "Generated from the run JSONs by `trl-sdpo results "
        + " ".join(str(d) for d in study_dirs)
        + " --output docs/results.md`; do not edit by hand.",
        "Settings are selected on `valid`; `test` is evaluated once with the selected settings. Every run found is",
        "listed under *Every configuration tried*.",
    ]
    return (
        "\n".join(head + [""] + ["\n\n".join(study_markdown(d, n_boot=n_boot, seed=seed) for d in study_dirs)]) + "\n"
    )
