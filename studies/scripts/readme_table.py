"""
The README's `test` table of the MovieLens study (preset `study`), from a study folder's run JSONs: one row per
method, mean ± sample standard deviation over seeds, and the preference methods' held-out implicit rewards (mean over
seeds). From the repository root:

    python studies/scripts/readme_table.py [studies/movielens-study-fp32]

tests/test_rec_experiments.py checks that each of the README's study tables is this script's output for its folder,
so a number in the README is one a run recorded.
"""

import argparse
import math

from trl_sdpo.rec.study import group_runs, load_study, summary_table
from trl_sdpo.rec.study.analysis import format_mean_std
from trl_sdpo.rec.study.config import PREFERENCE_KINDS

SPLIT = "test"
# Kinds whose result does not depend on the preference seed: one value, whatever the number of seeds (an SFT row
# only while every seed starts from one SFT model: a replicated study trains one per seed)
ONE_VALUE = ("base", "sft", "popular")
COLUMNS = ("generation/hr@1", "generation/valid_ratio", "ranking/hr@1", "ranking/ndcg@5")
HEADER = ["method", "HR@1 (generation)", "ValidRatio", "HR@1 (ranking)", "NDCG@5"]


def scientific(value: float) -> str:
    """`3e-5`, `1e-4`, `2.5e-5`: a learning rate as the README writes it."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def label(run: dict, n_seeds: int) -> str:
    """The README's name of a method, with what sets it apart (rows, k, learning rate, seeds)."""
    kind, settings = run["kind"], run["config"]["method"]["settings"] or {}
    rate = f"lr {scientific(settings['learning_rate'])}" if "learning_rate" in settings else None
    if kind == "base":
        return "base (zero-shot)"
    if kind == "sft":
        return (
            f"SFT ({run['sft_rows_seen']:,} rows)"
            if n_seeds == 1
            else f"SFT ({run['sft_rows_seen']:,} rows, {n_seeds} seeds)"
        )
    if kind == "sft-continued":
        return f"SFT continued ({rate})"
    if kind in ("dpo", "dpo-pairs", "sdpo"):
        k = 1 if kind == "dpo" else settings["num_negatives"]
        name = {"dpo": "DPO", "dpo-pairs": "DPO on all pairs", "sdpo": "S-DPO"}[kind]
        return f"{name} (k = {k}, {rate})"
    if kind == "random":
        return f"random ({n_seeds} seed{'s' * (n_seeds != 1)})"
    if kind == "sasrec":
        return f"SASRec (replay-rec, {n_seeds} seeds)"
    return {"popular": "most-popular"}.get(kind, run["method"])


def heldout(runs: list[dict]) -> str:
    """Mean held-out reward accuracy and margin (nats) over the seeds; `—` for a method without held-out rows."""
    if not all(run.get("heldout") for run in runs):
        return "—"
    accuracy = sum(run["heldout"]["accuracy"] for run in runs) / len(runs)
    margin = sum(run["heldout"]["margin"] for run in runs) / len(runs)
    return f"{accuracy:.3f}, {margin:+.2f} nats"


def one_value(group: list[dict]) -> bool:
    """Whether the runs of one method give one value by design (see `ONE_VALUE`)."""
    return group[0]["kind"] in ONE_VALUE and len({run.get("sft_checkpoint") for run in group}) == 1


def cell(entry: dict, metric: str, single: bool) -> str:
    mean, std = entry[metric]
    if single:
        if not math.isnan(std) and std > 1e-12:  # equal values up to the rounding of their mean
            raise ValueError(f"{entry['method']}: {metric} differs between seeds ({std:.4f}); expected one value")
        std = math.nan
    return format_mean_std((mean, std))


def readme_table(directory: str) -> str:
    """The markdown table (header line first) of the study folder's `test` runs."""
    return readme_table_of(load_study(directory))


def readme_table_of(runs: list[dict]) -> str:
    """The markdown table (header line first) of the `test` runs among `runs`."""
    runs = [run for run in runs if run["split"] == SPLIT]
    # Every preference kind has a held-out cell; a table still filling in gives them different seeds, and then the
    # header must not claim one seed count
    seed_sets = {frozenset(run["seed"] for run in runs if run["kind"] == kind) for kind in PREFERENCE_KINDS}
    seed_sets.discard(frozenset())  # a kind the study did not run
    if len(seed_sets) > 1:
        seeds = "mean over each method's seeds"
    elif not seed_sets:
        seeds = "no preference runs yet"
    else:
        (seed_set,) = seed_sets
        seeds = {1: "one seed", 2: "both seeds"}.get(len(seed_set), f"{len(seed_set)} seeds")
    lines = [
        "| " + " | ".join([*HEADER, f"held-out reward accuracy, margin ({seeds})"]) + " |",
        "|" + "---|" * (len(HEADER) + 1),
    ]
    groups = group_runs(runs)
    for entry in summary_table(runs, SPLIT):
        group = groups[(SPLIT, entry["method"])]
        single = one_value(group)
        cells = [label(group[0], len(group)), *(cell(entry, metric, single) for metric in COLUMNS), heldout(group)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", default="studies/movielens-study-fp32")
    print(readme_table(parser.parse_args().directory))


if __name__ == "__main__":
    main()
