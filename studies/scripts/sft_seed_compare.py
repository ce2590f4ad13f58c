"""
How far apart are two SFT models of the MovieLens study that differ only in their seed? The study trains one SFT model
(seed 0) and starts every preference seed from it, so its seed-sigma leaves the SFT stage's own spread out. Every run
of studies/movielens-sft-seed/ (an SFT model of its own seed: other train rows, other data order; fp32 on an AVX2-only
CPU) beside the fp32 run of the same method on seed 0 in studies/movielens-precision/, paired on their eval rows. From
the repository root:

    python studies/scripts/sft_seed_compare.py [--output studies/movielens-sft-seed/comparison.json]

For each pair it prints and records every per-row metric of both runs, their difference with its 95% paired bootstrap
interval, and how alike they rank each row's target. As a scale, the same between two seeds of the study's `dpo` and
`sdpo` on `test` (bf16, one SFT model, the preference stage's seed alone).
"""

import argparse
import json
from pathlib import Path

from trl_sdpo.rec.study import ROW_METRICS, load_study, rank_agreement, run_difference

SFT_SEEDS, REFERENCE, STUDY = (
    "studies/movielens-sft-seed",
    "studies/movielens-precision",
    "studies/movielens-study",
)
# Seed pairs of the study that show the preference stage's own spread (one SFT model)
SEED_PAIRS = [("test", "dpo", 0, 1), ("test", "sdpo", 0, 1)]


def seed_difference(run: dict, reference: dict) -> dict:
    """`run - reference` on every per-row metric both carry, and their rank agreement."""
    metrics = {metric: d for metric in ROW_METRICS if (d := run_difference(run, reference, metric))}
    return {"runs": [str(run["path"]), str(reference["path"])], "metrics": metrics,
            "rank_agreement": rank_agreement(run, reference)}  # fmt: skip


def report(title: str, result: dict) -> None:
    print(f"== {title} (95% paired bootstrap interval)")
    for metric, d in result["metrics"].items():
        low, high = d["ci95"]
        print(f"  {metric:24s} {d['a']:.4f} - {d['b']:.4f} = {d['diff']:+.4f} [{low:+.4f}, {high:+.4f}]")
    print("  ranks:", json.dumps(result["rank_agreement"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=f"{SFT_SEEDS}/comparison.json")
    args = parser.parse_args()
    reference = {(r["split"], r["method"], r["seed"]): r for r in load_study(REFERENCE)}
    pairs = {}
    for run in load_study(SFT_SEEDS):
        key = (run["split"], run["method"], 0)
        if run["kind"] != "sft" or key not in reference or run["precision"] != reference[key]["precision"]:
            raise SystemExit(f"{run['path']}: expected an SFT run with a seed-0 run of {key[1]} on {key[0]} in the "
                             f"same precision in {REFERENCE}.")  # fmt: skip
        pairs[f"{run['split']}/{run['method']} seed {run['seed']} vs 0"] = result = seed_difference(
            run, reference[key]
        )
        report(f"{run['method']} on {run['split']}: SFT seed {run['seed']} - SFT seed 0 ({run['precision']})", result)
    study = {(r["split"], r["method"], r["seed"]): r for r in load_study(STUDY)}
    scale = {}
    for split, method, s0, s1 in SEED_PAIRS:
        scale[f"{split}/{method} seed {s1} vs {s0}"] = result = seed_difference(
            study[(split, method, s1)], study[(split, method, s0)]
        )
        report(f"scale: {method} on {split}, preference seed {s1} - seed {s0} (one SFT model, bf16)", result)
    Path(args.output).write_text(json.dumps({"sft_seed": pairs, "preference_seed": scale}, indent=1) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
