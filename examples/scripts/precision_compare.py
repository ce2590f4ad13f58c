"""
Does the precision change what the MovieLens study measures? Every run in examples/results/movielens-precision/ (fp32,
on an AVX2-only CPU) beside the run of the same method, seed and split in examples/results/movielens-study/ (bf16
autocast, AVX512_BF16), paired on their eval rows. From the repository root:

    python examples/scripts/precision_compare.py [--output examples/results/movielens-precision/comparison.json]

For each pair it prints and records the paired difference fp32 - bf16 of every per-row metric with its 95% bootstrap
interval, and how alike the two rank each row's target (same rank, within one place, mean absolute difference,
correlation of the ranks). As a scale for the last, the same agreement between two seeds of one study method on
`test` (same SFT model, a different preference seed): a precision effect far below it is below the study's own noise.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.analysis import ROW_METRICS, paired_bootstrap, row_values

PRECISION, STUDY = "examples/results/movielens-precision", "examples/results/movielens-study"
# Seed pairs of the study that show its own run-to-run spread (the preference stage's seed, one SFT model)
SEED_PAIRS = [("test", "dpo", 0, 1), ("test", "sdpo", 0, 1)]


def rank_agreement(a: dict, b: dict) -> dict[str, float]:
    """How alike two runs rank each row's target (1 = first of the 20 candidates), paired by row id."""
    if a["rows"]["ids"] != b["rows"]["ids"]:
        raise ValueError(f"{a['path']} and {b['path']} were evaluated on different rows.")
    ra, rb = (np.asarray(run["rows"]["target_rank"]) for run in (a, b))
    gap = np.abs(ra - rb)
    return {
        "rows": int(gap.size),
        "same_rank": float((gap == 0).mean()),
        "within_one": float((gap <= 1).mean()),
        "mean_abs_rank_diff": float(gap.mean()),
        "rank_correlation": float(np.corrcoef(ra, rb)[0, 1]),
    }


def compare(fp32: dict, bf16: dict) -> dict:
    """fp32 - bf16 on every per-row metric both runs carry, and their rank agreement."""
    if (fp32["precision"], bf16["precision"]) != ("fp32", "bf16"):
        raise ValueError(f"expected fp32 vs bf16, got {fp32['precision']} ({fp32['path']}) vs {bf16['precision']}.")
    a, b = f"{fp32['method']} (fp32)", f"{bf16['method']} (bf16)"
    runs = [dict(fp32, method=a), dict(bf16, method=b)]
    metrics = {}
    for metric in ROW_METRICS:
        if row_values(fp32, metric) is None or row_values(bf16, metric) is None:
            continue
        c = paired_bootstrap(runs, fp32["split"], a, b, metric)
        metrics[metric] = {
            "fp32": float(row_values(fp32, metric).mean()),
            "bf16": float(row_values(bf16, metric).mean()),
            "diff": c.mean_diff,
            "ci95": [c.ci_low, c.ci_high],
            "rows": c.n_rows,
        }
    return {"fp32_run": str(fp32["path"]), "bf16_run": str(bf16["path"]), "metrics": metrics,
            "rank_agreement": rank_agreement(fp32, bf16)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=f"{PRECISION}/comparison.json")
    args = parser.parse_args()
    study = {(r["split"], r["method"], r["seed"]): r for r in load_study(STUDY)}
    pairs = {}
    for run in load_study(PRECISION):
        key = (run["split"], run["method"], run["seed"])
        if key not in study:
            raise SystemExit(f"{run['path']}: the study has no {key[1]} seed {key[2]} on {key[0]} to compare with.")
        pairs["/".join(map(str, key))] = result = compare(run, study[key])
        print(f"== {key[1]} seed {key[2]} on {key[0]}: fp32 - bf16 (95% paired bootstrap interval)")
        for metric, m in result["metrics"].items():
            low, high = m["ci95"]
            print(f"  {metric:24s} {m['fp32']:.4f} - {m['bf16']:.4f} = {m['diff']:+.4f} [{low:+.4f}, {high:+.4f}]")
        print("  ranks:", json.dumps(result["rank_agreement"]))
    scale = {}
    for split, method, s0, s1 in SEED_PAIRS:
        scale[f"{split}/{method} seed {s1} vs {s0}"] = agree = rank_agreement(
            study[(split, method, s1)], study[(split, method, s0)]
        )
        print(f"== scale: {method} seed {s1} vs seed {s0} on {split} (both bf16): {json.dumps(agree)}")
    Path(args.output).write_text(json.dumps({"fp32_vs_bf16": pairs, "seed_to_seed": scale}, indent=1) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
