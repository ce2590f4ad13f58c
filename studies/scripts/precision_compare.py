"""
Does the precision change what the MovieLens study measures? Every fp32 LM run (on an AVX2-only CPU) in
studies/movielens-precision/ (`valid`) and studies/movielens-study-fp32/ (`test`) beside the run of the same method,
seed and split in studies/movielens-study/ (bf16 autocast, AVX512_BF16), paired on their eval rows (a `test` run of a
seed the study lacks, its seed 2, has no partner: it is listed as fp32 only, for studies/scripts/fp32_tables.py). From
the repository root:

    python studies/scripts/precision_compare.py [--output studies/movielens-precision/comparison.json]

For each pair it prints and records the paired difference fp32 - bf16 of every per-row metric with its 95% bootstrap
interval, how alike the two rank each row's target (same rank, within one place, mean absolute difference,
correlation of the ranks), and how their training losses differ step by step. As a scale for the ranks, the same
agreement between two seeds of one study method on `test` (same SFT model, a different preference seed): a precision
effect far below it is below the study's own noise.

For a preference-stage run whose SFT model was also evaluated in each folder, it records what the question of the
study turns on: the stage's effect on its own SFT model (preference - SFT, per row) in each precision, and fp32 - bf16
of that effect; and the held-out preference rows (reward accuracy, margins) of both.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.analysis import (
    ROW_METRICS,
    bootstrap_interval,
    check_same_rows,
    rank_agreement,
    row_values,
    run_difference,
)

PRECISION, STUDY = "studies/movielens-precision", "studies/movielens-study"
FP32_STUDY = "studies/movielens-study-fp32"
# Seed pairs of the study that show its own run-to-run spread (the preference stage's seed, one SFT model)
SEED_PAIRS = [("test", "dpo", 0, 1), ("test", "sdpo", 0, 1)]


def interval(per_row: np.ndarray) -> dict:
    """Mean of per-row values and its 95% bootstrap interval over the rows."""
    low, high = bootstrap_interval(per_row)
    return {"mean": float(per_row.mean()), "ci95": [low, high]}


def losses(run: dict) -> dict[int, float]:
    """The training loss the run logged at each optimizer step."""
    return {entry["step"]: entry["loss"] for entry in run["log_history"] if "loss" in entry}


def loss_difference(fp32: dict, bf16: dict) -> dict | None:
    """loss_fp32 - loss_bf16 at every step both logged (each step's loss is the mean over the same rows in both);
    `None` for runs that trained nothing (`base`)."""
    a, b = losses(fp32), losses(bf16)
    steps = sorted(set(a) & set(b))
    if not steps:
        return None
    diff = np.array([a[step] - b[step] for step in steps])
    largest = int(np.abs(diff).argmax())
    return {"steps": len(steps), "first_step": {"fp32": a[steps[0]], "bf16": b[steps[0]]},
            "mean_diff": float(diff.mean()), "sd_diff": float(diff.std(ddof=1)),
            "max_abs_diff": float(abs(diff[largest])), "max_abs_diff_step": steps[largest]}  # fmt: skip


def heldout_difference(fp32: dict, bf16: dict) -> dict:
    """The held-out preference rows of both runs (the same rows: the study draws them by seed) and fp32 - bf16."""
    a, b = fp32["heldout"], bf16["heldout"]
    if a["rows"] != b["rows"]:
        raise ValueError(f"{fp32['path']} and {bf16['path']} hold out {a['rows']} and {b['rows']} rows.")
    margins = np.asarray(a["row_margins"]) - np.asarray(b["row_margins"])
    return {"rows": a["rows"], **{key: {"fp32": a[key], "bf16": b[key]} for key in ("accuracy", "margin")},
            "margin_diff": interval(margins)}  # fmt: skip


def preference_effect(pref32: dict, sft32: dict, pref16: dict, sft16: dict) -> dict:
    """The preference stage's effect on its SFT model (per row) in fp32 and in bf16, and fp32 - bf16 of it."""
    check_same_rows(pref32, sft32, pref16, sft16)
    effects = {}
    for metric in ROW_METRICS:
        values = [row_values(run, metric) for run in (pref32, sft32, pref16, sft16)]
        if any(v is None for v in values):
            continue
        e32, e16 = values[0] - values[1], values[2] - values[3]
        effects[metric] = {"fp32": interval(e32), "bf16": interval(e16), "fp32_minus_bf16": interval(e32 - e16)}
    return {"sft_runs": [str(sft32["path"]), str(sft16["path"])], "metrics": effects}


def sft_of(run: dict, folder: list[dict]) -> dict | None:
    """The SFT run of `folder` that evaluated the SFT model `run`'s preference stage started from (by checkpoint, not
    seed: every preference seed of a study starts from its one SFT model, evaluated as `sft` seed 0); `None` for a run
    with no SFT model (`base`)."""
    if run.get("sft_checkpoint") is None:
        return None
    return next((r for r in folder if r["kind"] == "sft" and (r["split"], r["sft_checkpoint"])
                 == (run["split"], run["sft_checkpoint"])), None)  # fmt: skip


def compare(fp32: dict, bf16: dict) -> dict:
    """fp32 - bf16 on every per-row metric both runs carry, their rank agreement and their training losses."""
    if (fp32["precision"], bf16["precision"]) != ("fp32", "bf16"):
        raise ValueError(f"expected fp32 vs bf16, got {fp32['precision']} ({fp32['path']}) vs {bf16['precision']}.")
    metrics = {}
    for metric in ROW_METRICS:
        if d := run_difference(fp32, bf16, metric):
            metrics[metric] = {"fp32": d["a"], "bf16": d["b"], "diff": d["diff"], "ci95": d["ci95"], "rows": d["rows"]}
    return {"fp32_run": str(fp32["path"]), "bf16_run": str(bf16["path"]), "metrics": metrics,
            "rank_agreement": rank_agreement(fp32, bf16), "losses": loss_difference(fp32, bf16)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=f"{PRECISION}/comparison.json")
    args = parser.parse_args()
    study_runs = load_study(STUDY)
    # The fp32 study's baselines are the bf16 study's runs (no LM, so no precision): nothing to compare
    precision_runs = [r for r in load_study(PRECISION) + load_study(FP32_STUDY) if r.get("precision")]
    study = {(r["split"], r["method"], r["seed"]): r for r in study_runs}
    pairs, fp32_only = {}, []
    for run in precision_runs:
        key = (run["split"], run["method"], run["seed"])
        if key not in study:
            # A seed the study lacks (its test seed 2): no bf16 partner; studies/scripts/fp32_tables.py uses it
            if run["split"] != "test" or run.get("precision") != "fp32":
                raise SystemExit(
                    f"{run['path']}: the study has no {key[1]} seed {key[2]} on {key[0]} to compare with."
                )
            fp32_only.append(str(run["path"]))
            print(f"== {key[1]} seed {key[2]} on {key[0]}: fp32 only (the study has no bf16 run to pair it with)")
            continue
        pairs["/".join(map(str, key))] = result = compare(run, study[key])
        sft32, sft16 = sft_of(run, precision_runs), sft_of(study[key], study_runs)
        if run.get("heldout") and sft32 and sft16:
            result["preference_effect"] = preference_effect(run, sft32, study[key], sft16)
            result["heldout"] = heldout_difference(run, study[key])
        print(f"== {key[1]} seed {key[2]} on {key[0]}: fp32 - bf16 (95% paired bootstrap interval)")
        for metric, m in result["metrics"].items():
            low, high = m["ci95"]
            print(f"  {metric:24s} {m['fp32']:.4f} - {m['bf16']:.4f} = {m['diff']:+.4f} [{low:+.4f}, {high:+.4f}]")
        print("  ranks:", json.dumps(result["rank_agreement"]))
        print("  training loss fp32 - bf16:", json.dumps(result["losses"]))
        if "preference_effect" in result:
            print(
                f"  its effect on its SFT model ({result['preference_effect']['sft_runs']}), fp32 | bf16 | difference:"
            )
            for metric, m in result["preference_effect"]["metrics"].items():
                print(f"  {metric:24s}", " | ".join(f"{x['mean']:+.4f} [{x['ci95'][0]:+.4f}, {x['ci95'][1]:+.4f}]"
                                                    for x in m.values()))  # fmt: skip
            print("  held-out preference rows:", json.dumps(result["heldout"]))
    scale = {}
    for split, method, s0, s1 in SEED_PAIRS:
        scale[f"{split}/{method} seed {s1} vs {s0}"] = agree = rank_agreement(
            study[(split, method, s1)], study[(split, method, s0)]
        )
        print(f"== scale: {method} seed {s1} vs seed {s0} on {split} (both bf16): {json.dumps(agree)}")
    Path(args.output).write_text(
        json.dumps({"fp32_vs_bf16": pairs, "fp32_only": fp32_only, "seed_to_seed": scale}, indent=1) + "\n"
    )
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
