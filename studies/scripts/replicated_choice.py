"""
The learning rates the replicated MovieLens study (preset `study-replicated`) chooses on `valid`, by the `study`
preset's rule (per kind, the highest mean valid ranking NDCG@5; a tie keeps the lower rate), and whether the preset's
test methods use them. From the repository root:

    python studies/scripts/replicated_choice.py [--scratch DIR]

`sdpo`'s grid is this folder's `sdpo-lr3e-4` and `sdpo-lr1e-3` beside the fp32 `sdpo-lr1e-4` of `studies/movielens-precision/` (the same
SFT model, rows and settings but the rate; checked here), which the `study` preset chose in bf16 over 1e-5 and 3e-5.
`dpo-pairs`' grid is this folder's `dpo-pairs-lr{1e-5,3e-5,1e-4}`. Exits 1 (saying why) while a grid run is missing
or the preset's rate differs from the choice: `studies/scripts/replicated_queue.sh` runs no `test` run until then.
"""

import argparse
import math
import sys

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.config import load_experiment_config
from trl_sdpo.rec.study.selection import select_variants

FOLDER = "studies/movielens-replicated"
INCUMBENT = "studies/movielens-precision"  # its fp32 valid run of sdpo-lr1e-4
GRID = {
    "sdpo": ["sdpo-lr1e-4", "sdpo-lr3e-4", "sdpo-lr1e-3"],
    "dpo-pairs": [f"dpo-pairs-lr{r}" for r in ("1e-5", "3e-5", "1e-4")],
}


def without(config: dict, *keys: str) -> dict:
    out = {k: v for k, v in config.items() if k not in keys}
    out["method"] = {k: v for k, v in config["method"].items() if k != "name"}
    out["method"]["settings"] = {k: v for k, v in config["method"]["settings"].items() if k != "learning_rate"}
    return out


def valid_runs(folders: list[str]) -> list[dict]:
    """The valid grid runs: this study's, and the incumbent `sdpo-lr1e-4` if the study lacks one (checked equal)."""
    runs = [r for folder in folders for r in load_study(folder, missing_ok=True) if r["split"] == "valid"]
    runs = [r for r in runs if any(r["method"] in grid for grid in GRID.values())]
    if "sdpo-lr1e-4" not in {r["method"] for r in runs}:
        incumbent = [r for r in load_study(INCUMBENT) if r["split"] == "valid" and r["method"] == "sdpo-lr1e-4"]
        mine = next((r for r in runs if r["method"] == "sdpo-lr3e-4"), None)
        if mine is not None:
            for run in incumbent:
                if without(run["config"], "bf16") != without(mine["config"], "bf16") or run["precision"] != "fp32":
                    sys.exit(f"{run['path']} is not the same training as {mine['path']} but for its learning rate.")
        runs += incumbent
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", default=None, help="Also read valid runs from this output folder.")
    args = parser.parse_args()
    runs = valid_runs([FOLDER, *([args.scratch] if args.scratch else [])])
    config = load_experiment_config("examples/configs/movielens.yaml", "study-replicated", check_paths=False)
    problems = []
    done = {r["method"] for r in runs}
    for methods in GRID.values():
        for method in methods:
            if method not in done:
                problems.append(f"valid run {method} missing")
    for kind, choice in select_variants(runs, "valid", kinds=list(GRID)).items():
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
