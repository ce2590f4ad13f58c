"""
The replicated MovieLens study's tables (preset `study-replicated`): first the orderings, each with its row-level and
seed-level intervals and its verdict by the rule of `trl_sdpo.rec.study.replication` (S-DPO against DPO on all k
pairs first), then every method's mean ± std over the pipeline seeds, the ValidRatio floor, the runs still missing
and what the folder's own runs cost. Seed 0's runs that the `study` preset's fp32 folder already holds (the same SFT
model, rows and settings) are read from there. From the repository root:

    python studies/scripts/replicated_tables.py [--folder studies/movielens-replicated] [--plot orderings.png]

With `--folder studies/movielens-study-fp32 --seed0 none` it applies the same rule to the one-SFT-model table
(preference seeds 0-2 from SFT seed 0), where the seeds vary the preference stage only.
"""

import argparse
import sys
from pathlib import Path

from trl_sdpo.rec.study import load_study, missing_runs
from trl_sdpo.rec.study.analysis import machine_seconds
from trl_sdpo.rec.study.replication import (
    load_pipeline_runs,
    replicated_verdicts,
    valid_ratio_floor,
    verdicts_markdown,
)

sys.path.insert(0, str(Path(__file__).parent))
from readme_table import readme_table_of  # noqa: E402

SPLIT = "test"
# The replicated table: the methods studies/scripts/replicated_queue.sh runs on `test`, at every seed of the preset
TABLE_METHODS = ("sft", "sft-continued", "dpo", "dpo-pairs", "sdpo", "random", "popular")
SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="studies/movielens-replicated")
    parser.add_argument("--seed0", default="studies/movielens-study-fp32", help="`none` to borrow nothing.")
    parser.add_argument("--n_boot", type=int, default=10000)
    parser.add_argument("--plot", default=None, help="Write the orderings' forest plot to this PNG file.")
    args = parser.parse_args()
    runs = load_pipeline_runs(args.folder, None if args.seed0 == "none" else args.seed0, split=SPLIT)
    if not runs:
        sys.exit(f"No `{SPLIT}` runs in {args.folder} yet.")
    print(f"## Orderings ({SPLIT}, seeds as the replicates; the rule: trl_sdpo.rec.study.replication)\n")
    print(verdicts_markdown(replicated_verdicts(runs, SPLIT, n_boot=args.n_boot)))
    print("\n## Every method, mean ± std over the seeds\n")
    print(readme_table_of(runs))
    print("\n## ValidRatio >= 0.95 (mean over seeds)\n")
    for method, ok, evidence in valid_ratio_floor(runs, SPLIT):
        print(f"- {method}: {'yes' if ok else 'no' if ok is False else 'not run'}, {evidence}")
    if args.seed0 == "none":  # another folder's design (one SFT model): what its own runs lack
        missing = missing_runs(runs)
    else:
        present = {(run["method"], run["seed"]) for run in runs}
        missing = [(method, seed) for method in TABLE_METHODS for seed in SEEDS if (method, seed) not in present]
    print(f"\nRuns missing: {', '.join(f'{m}/seed{s}' for m, s in missing) if missing else 'none'}")
    if missing and args.seed0 != "none":
        print(f"(a method's seed 0 is read from {args.seed0} once this folder has a run of the method of its own)")
    spent = machine_seconds(load_study(args.folder, missing_ok=True))  # this folder's own runs, valid and test
    print(
        f"\nCompute of {args.folder}'s own runs (valid and test; trl_sdpo.rec.study.analysis.machine_seconds): "
        f"{spent['total']:,.0f} s ({spent['total'] / 3600:.1f} h): {spent['calls']:,.0f} s in the calls that wrote "
        f"them, {spent['other_sittings']:,.0f} s in training sittings outside those calls"
    )
    if args.plot:
        from trl_sdpo.rec.study.plots import plot_orderings

        figure = plot_orderings(replicated_verdicts(runs, SPLIT, n_boot=args.n_boot))
        figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"Forest plot: {args.plot}")


if __name__ == "__main__":
    main()
