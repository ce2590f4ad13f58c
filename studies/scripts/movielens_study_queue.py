"""
The MovieLens study's queue (preset `study` of examples/configs/movielens.yaml): the SFT learning curve point by
point until its rule decides, then the valid learning-rate runs of the preference stage.

Every step is a `trl-sdpo experiment` call, so a sitting can end at any moment: finished runs are skipped, a run cut
short resumes from its last Trainer checkpoint, and each run JSON records its sittings. From the repository root:

    python studies/scripts/movielens_study_queue.py [--output_dir DIR] [--test] [--dry_run]

`--test` runs the final table instead (seeds 0, 1, 2 on `test`; seed 0 first, whose preference models are the ones
trained on valid), and refuses to start until every valid learning-rate run exists, the rates the rule chose on valid
are the ones written into the preset's `sft-continued`, `dpo` and `sdpo`, and `test_eval_rows` is set.
"""

import argparse
import math
import subprocess
import sys
from datetime import UTC, datetime

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.config import load_experiment_config
from trl_sdpo.rec.study.curve import pick_sft_point
from trl_sdpo.rec.study.selection import select_variants

CONFIG, PRESET = "examples/configs/movielens.yaml", "study"
# The order of the valid learning-rate runs: one run of each method at every rate before the next rate
PREFERENCE = [f"{kind}-lr{lr}" for lr in ("3e-5", "1e-4", "1e-5") for kind in ("sdpo", "dpo", "sft-continued")]
# The final table: seed 0 of every method first (its preference models were trained on valid: evaluation only)
TEST = [
    ("0", "base,sft,sft-continued,dpo,sdpo,random,popular,sasrec"),
    ("1,2", "sft-continued,dpo,sdpo,random,popular,sasrec"),
]


def run(output_dir: str, split: str, seeds: str, methods: str, dry_run: bool = False) -> None:
    print(f"=== {split} seeds {seeds} {methods} {datetime.now(UTC).isoformat(timespec='seconds')}", flush=True)
    command = [sys.executable, "-m", "trl_sdpo.cli", "experiment", "--config", CONFIG, "--preset", PRESET]
    command += ["--output_dir", output_dir, "--split", split, "--seeds", seeds, "--methods", methods]
    if not dry_run:
        subprocess.run(command, check=True)


def test_ready(config, output_dir: str) -> list[str]:
    """Why the test runs may not start yet (empty when they may)."""
    valid = [run for run in load_study(output_dir, missing_ok=True) if run["split"] == "valid"]
    done = {run["method"] for run in valid}
    problems = [f"valid run {method} missing" for method in PREFERENCE if method not in done]
    for kind, choice in select_variants(valid).items():
        written = config.methods[kind].settings.learning_rate
        if choice["learning_rate"] is None or not math.isclose(choice["learning_rate"], written):
            problems.append(f"{kind}: valid chose {choice['method']}, the preset has learning rate {written:g}")
    if config.test_eval_rows is None:
        problems.append("test_eval_rows is not set (from trl_sdpo.rec.study.power.rows_needed on the valid runs)")
    return problems


def main() -> None:
    config = load_experiment_config(CONFIG, PRESET)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=config.output_dir, help="Where the study's runs go.")
    parser.add_argument("--test", action="store_true", help="Run the final test table (see above).")
    parser.add_argument("--dry_run", action="store_true", help="Print the calls without running them.")
    args = parser.parse_args()
    output_dir = args.output_dir
    if args.test:
        problems = test_ready(config, output_dir)
        if problems:
            sys.exit("Not ready for the test runs:\n- " + "\n- ".join(problems))
        for seeds, methods in TEST:
            run(output_dir, "test", seeds, methods, args.dry_run)
        print(f"=== done {datetime.now(UTC).isoformat(timespec='seconds')}", flush=True)
        return
    curve = {m.sft_rows: name for name, m in config.methods.items() if m.kind == "sft" and m.sft_rows is not None}
    while True:
        pick = pick_sft_point(load_study(output_dir, missing_ok=True), planned=config.sft.curve_rows)
        print(pick.describe(), flush=True)
        if pick.decided:
            break
        if args.dry_run:
            print("(dry run: stops before the curve is decided)")
            return
        run(output_dir, "valid", "0", curve[pick.next_rows])
    for method in PREFERENCE:
        run(output_dir, "valid", "0", method, args.dry_run)
    print(f"=== done {datetime.now(UTC).isoformat(timespec='seconds')}", flush=True)


if __name__ == "__main__":
    main()
