"""
The learning rates the replicated MovieLens study (preset `study-replicated`) chooses on `valid`, by the `study`
preset's rule (per kind, the highest mean valid ranking NDCG@5; a tie keeps the lower rate), and whether the preset's
test methods use them. From the repository root:

    python studies/scripts/replicated_choice.py [--scratch DIR] [--missing]

The grid of a kind is the preset's methods of that kind other than its test method (`sdpo-lr3e-4`, ...), so a rate
added to the grid is one line of the YAML. `sdpo-lr1e-4` is the fp32 run of `studies/movielens-precision/` (the same
SFT model, rows and settings but the rate; checked here), which the `study` preset chose in bf16 over 1e-5 and 3e-5.
Exits 1 (saying why) while a grid run is missing or the preset's rate differs from the choice:
`studies/scripts/replicated_queue.sh` runs no `test` run until then. `--missing` prints the grid runs still to train
instead, one per line (what the queue runs on valid).
"""

import argparse
import math
import sys

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.config import load_experiment_config
from trl_sdpo.rec.study.selection import select_variants

FOLDER = "studies/movielens-replicated"
INCUMBENT = "studies/movielens-precision"  # its fp32 valid run of INCUMBENT_METHOD
INCUMBENT_METHOD = "sdpo-lr1e-4"
KINDS = ("dpo-pairs", "sdpo")


def grids(config) -> dict[str, list[str]]:
    """The learning-rate variants of each kind in the preset: its methods of the kind but the test method itself."""
    return {kind: [name for name, m in config.methods.items() if m.kind == kind and name != kind] for kind in KINDS}


def without(config: dict, *keys: str) -> dict:
    out = {k: v for k, v in config.items() if k not in keys}
    out["method"] = {k: v for k, v in config["method"].items() if k != "name"}
    out["method"]["settings"] = {k: v for k, v in config["method"]["settings"].items() if k != "learning_rate"}
    return out


def valid_runs(folders: list[str], grid: dict[str, list[str]]) -> list[dict]:
    """The valid grid runs: this study's, and the incumbent's if the study lacks one (checked equal)."""
    runs = [r for folder in folders for r in load_study(folder, missing_ok=True) if r["split"] == "valid"]
    runs = [r for r in runs if any(r["method"] in methods for methods in grid.values())]
    if INCUMBENT_METHOD not in {r["method"] for r in runs}:
        incumbent = [r for r in load_study(INCUMBENT) if r["split"] == "valid" and r["method"] == INCUMBENT_METHOD]
        mine = next((r for r in runs if r["method"] in grid["sdpo"]), None)
        if mine is not None:
            for run in incumbent:
                if without(run["config"], "bf16") != without(mine["config"], "bf16") or run["precision"] != "fp32":
                    sys.exit(f"{run['path']} is not the same training as {mine['path']} but for its learning rate.")
        runs += incumbent
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", default=None, help="Also read valid runs from this output folder.")
    parser.add_argument("--missing", action="store_true", help="Print the grid runs still to train, and exit 0.")
    args = parser.parse_args()
    config = load_experiment_config("examples/configs/movielens.yaml", "study-replicated", check_paths=False)
    grid = grids(config)
    runs = valid_runs([FOLDER, *([args.scratch] if args.scratch else [])], grid)
    done = {r["method"] for r in runs}
    in_grid = {method for methods in grid.values() for method in methods}
    missing = [name for name in config.methods if name in in_grid and name not in done]  # in the YAML's order
    if args.missing:
        print("\n".join(missing))
        return 0
    problems = [f"valid run {method} missing" for method in missing]
    for kind, choice in select_variants(runs, "valid", kinds=KINDS).items():
        values = ", ".join(f"{m} {v:.4f}" for m, v in sorted(choice["candidates"].items()))
        print(f"{kind}: {values} -> {choice['method']} (lr {choice['learning_rate']:g})")
        written = config.methods[kind].settings.learning_rate
        if not math.isclose(choice["learning_rate"], written):
            problems.append(
                f"{kind}: valid chooses lr {choice['learning_rate']:g}, the preset's test method has {written:g}"
            )
    for problem in problems:
        print(f"not ready: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
