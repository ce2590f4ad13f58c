"""
The queue of one sitting of issue 17's MovieLens study (preset `study` of examples/configs/movielens.yaml): the SFT
learning curve point by point until its rule decides, then the valid learning-rate runs of the preference stage.

Every step is a `trl-sdpo experiment` call, so a sitting can end at any moment: finished runs are skipped, a run cut
short resumes from its last Trainer checkpoint, and each run JSON records its sittings. From the repository root:

    python examples/scripts/movielens_study_queue.py [--output_dir DIR]

The test runs come after the learning rates are chosen on valid and written into the preset (see the YAML).
"""

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.config import load_experiment_config
from trl_sdpo.rec.study.curve import pick_sft_point

CONFIG, PRESET = "examples/configs/movielens.yaml", "study"
# The order of the valid learning-rate runs: one run of each method at every rate before the next rate
PREFERENCE = [f"{kind}-lr{lr}" for lr in ("3e-5", "1e-4", "1e-5") for kind in ("sdpo", "dpo", "sft-continued")]


def run(output_dir: str, split: str, seeds: str, methods: str) -> None:
    print(f"=== {split} seeds {seeds} {methods} {datetime.now(UTC).isoformat(timespec='seconds')}", flush=True)
    command = [sys.executable, "-m", "trl_sdpo.cli", "experiment", "--config", CONFIG, "--preset", PRESET]
    command += ["--output_dir", output_dir, "--split", split, "--seeds", seeds, "--methods", methods]
    subprocess.run(command, check=True)


def main() -> None:
    config = load_experiment_config(CONFIG, PRESET)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=config.output_dir, help="Where the study's runs go.")
    output_dir = parser.parse_args().output_dir
    curve = {m.sft_rows: name for name, m in config.methods.items() if m.kind == "sft" and m.sft_rows is not None}
    while True:
        valid = Path(output_dir) / "valid"
        pick = pick_sft_point(load_study(output_dir) if valid.is_dir() else [], planned=config.sft.curve_rows)
        print(pick.describe(), flush=True)
        if pick.decided:
            break
        run(output_dir, "valid", "0", curve[pick.next_rows])
    for method in PREFERENCE:
        run(output_dir, "valid", "0", method)
    print(f"=== done {datetime.now(UTC).isoformat(timespec='seconds')}", flush=True)


if __name__ == "__main__":
    main()
