"""
The MovieLens study's `test` table with fp32 runs in it, from studies/movielens-study-fp32/ (fp32 on an AVX2-only
CPU, every preference run from the fp32 SFT model) and studies/movielens-study/ (bf16 autocast, AVX512_BF16). Each
folder keeps to one precision (the runner refuses to mix them); this shows what each way of completing the study
(preset `study`) says, beside the other. From the repository root:

    python studies/scripts/fp32_tables.py [--output studies/movielens-precision/test-tables.json]

It prints and records two tables, each with its summary, its paired comparisons (the claim's orderings and S-DPO
against most-popular) and its claim check, beside the study's own claim check:

- `mixed`: the study's runs and the fp32 runs of the (method, seed) pairs the study lacks (its seed 2): three seeds in
  two precisions, from two SFT models (the bf16 one and its fp32 retrain, same seed, rows and order);
- `fp32`: the fp32 study's folder: its fp32 runs (the SFT model and every seed of the preference stage run so far)
  and the baselines that need no LM (random, most-popular, SASRec: the bf16 study's runs, copied).

And each fp32 preference run's effect on the fp32 SFT model it started from, per row, with a 95% interval; and what
each table cost to compute (`compute_hours`), the bf16 study's selection on `valid` included.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from trl_sdpo.rec.study import (
    BASELINE_METHODS,
    CLAIM_METRICS,
    COMPARISONS,
    compare_methods,
    load_study,
    run_difference,
    summary_table,
)
from trl_sdpo.rec.study.claims import claim_check

STUDY, PRECISION = "studies/movielens-study", "studies/movielens-precision"
FP32_STUDY = "studies/movielens-study-fp32"
SPLIT = "test"
# The claim's orderings, and S-DPO against the baseline it must beat
ORDERINGS = [*COMPARISONS, ("sdpo", "popular")]
SHOWN = ("generation/hr@1", "generation/valid_ratio", "ranking/hr@1", "ranking/ndcg@5")


def table(runs: list[dict]) -> dict:
    """Summary, paired comparisons and claim check of `runs` on `test`."""
    return {
        "runs": sorted(str(r["path"]) for r in runs),
        "summary": summary_table(runs, SPLIT),
        "comparisons": [dataclasses.asdict(c) for c in compare_methods(runs, SPLIT, pairs=ORDERINGS)],
        "claims": verdicts(runs),
    }


def verdicts(runs: list[dict]) -> list[dict]:
    """The claim check on `test`, one dict per part (name, verdict, evidence)."""
    return [{"name": p.name, "verdict": p.verdict, "evidence": p.evidence} for p in claim_check(runs, SPLIT)]


def effects_on_sft(fp32: list[dict]) -> dict:
    """Each fp32 preference run's effect on the fp32 SFT model it started from ({"method/seed": {metric: diff}})."""
    sft = {r["sft_checkpoint"]: r for r in fp32 if r["kind"] == "sft"}
    return {
        f"{r['method']}/{r['seed']}": {m: run_difference(r, sft[r["sft_checkpoint"]], m) for m in CLAIM_METRICS}
        for r in fp32
        if r["kind"] not in ("sft", "base") and r["sft_checkpoint"] in sft
    }


def compute_hours(runs: list[dict]) -> dict:
    """
    What `runs` cost in hours, from what each run JSON recorded, every model trained once: an SFT run by its checkpoint
    folder (the points of a curve are one run, whose `sft_train_s` is cumulative: its largest value), a preference
    model by `trained_model` (a valid run and the test run that reuses its model share it; the time includes the
    reference pass), the baselines' fitting, and every run's evaluation (ranking and generation).
    """
    sft, preference, baselines, evaluation = {}, {}, 0.0, 0.0
    for run in runs:
        timings = run["timings_s"]
        evaluation += (timings.get("eval_ranking") or 0.0) + (timings.get("eval_generation") or 0.0)
        if run["kind"] in BASELINE_METHODS:
            baselines += timings.get("train") or 0.0
        elif run["kind"] != "base":
            folder = str(Path(run["sft_checkpoint"]).parent)
            sft[folder] = max(sft.get(folder, 0.0), run["sft_train_s"])
            if run["kind"] != "sft":
                preference[run["trained_model"]] = timings["train"]
    hours = {"sft": sum(sft.values()), "preference": sum(preference.values()), "baselines": baselines,
             "evaluation": evaluation}  # fmt: skip
    hours = {key: value / 3600 for key, value in hours.items()}
    return {**hours, "total": sum(hours.values()), "sft_runs": len(sft), "preference_models": len(preference)}


def show(title: str, result: dict) -> None:
    print(f"== {title}")
    for entry in result["summary"]:
        cells = (f"{name} {entry[name][0]:.4f} ± {entry[name][1]:.4f}" for name in SHOWN)
        print(f"  {entry['method']:14s} seeds {entry['seeds']}: {', '.join(cells)}")
    for c in result["comparisons"]:
        seeds = ", ".join(f"{s}: {d:+.4f}" for s, d in c["per_seed_diff"].items())
        print(f"  {c['a']} - {c['b']} {c['metric']}: {c['mean_diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
              f" (per seed {seeds})")  # fmt: skip
    for part in result["claims"]:
        print(f"  claim: {part['name']}: {part['verdict']}. {part['evidence']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=f"{PRECISION}/test-tables.json")
    args = parser.parse_args()
    study_all = load_study(STUDY)
    study = [r for r in study_all if r["split"] == SPLIT]
    folder = [r for r in load_study(FP32_STUDY) if r["split"] == SPLIT]
    fp32 = [r for r in folder if r["kind"] not in BASELINE_METHODS]
    if bad := [str(r["path"]) for r in fp32 if r.get("precision") != "fp32"]:
        raise SystemExit(f"expected fp32 LM runs only in {FP32_STUDY}/{SPLIT}: {bad}")
    held = {(r["method"], r["seed"]) for r in study}
    result = {
        "mixed": table(study + [r for r in fp32 if (r["method"], r["seed"]) not in held]),
        "fp32": table(folder),
        "study_claims": verdicts(study),
        "effect_on_fp32_sft": effects_on_sft(fp32),
        "compute_hours": {
            "fp32 test table (AVX2 CPU; the copied baselines' fitting on the AVX-512 one)": compute_hours(folder),
            "bf16 study, valid and test (AVX-512 CPU)": compute_hours(study_all),
            "bf16 study, valid only": compute_hours([r for r in study_all if r["split"] == "valid"]),
        },
    }
    show(f"mixed: {SPLIT}, the study's runs (bf16) + fp32 runs of the seeds it lacks", result["mixed"])
    show(f"fp32: {SPLIT}, the fp32 study (its LM runs in fp32, the baselines that need no LM)", result["fp32"])
    print("== claim check of the study alone (bf16)")
    for part in result["study_claims"]:
        print(f"  {part['name']}: {part['verdict']}. {part['evidence']}")
    print("== each fp32 preference run's effect on the fp32 SFT model")
    for name, metrics in result["effect_on_fp32_sft"].items():
        for metric, d in metrics.items():
            print(f"  {name} {metric}: {d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    print("== compute, hours (every model trained once, every evaluation)")
    for name, hours in result["compute_hours"].items():
        print(f"  {name}: " + ", ".join(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
                                        for key, value in hours.items()))  # fmt: skip
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
