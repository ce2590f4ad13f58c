"""
Is a retrained SFT model the committed one? The fp32 study's SFT model (studies/movielens-study-fp32/
test/sft/seed0.json) lived on one machine's disk; on a fresh machine studies/scripts/fp32_study_queue.sh trains it
again (same seed, rows and order). A preference seed may start from the retrain only if it is the same model, so this
compares the retrain's Trainer log, step by step, with the committed run's: the training loss, gradient norm, learning
rate and token count of every step logged so far. From the repository root:

    python studies/scripts/sft_retrain_check.py [--output_dir /work/fp32-precision]

It reads the newest `trainer_state.json` under `<output_dir>/checkpoints/seed0/trainer-sft/` (the runner's Trainer
checkpoints, every 16 steps), so it can answer after the first 16 of the 128 steps. Equal floats at every step mean the
same computation on the same weights (the same CPU kind and thread count reproduce fp32 bit for bit); a difference
prints the first step where they part and exits 1.
"""

import argparse
import json
import sys
from pathlib import Path

COMMITTED = Path("studies/movielens-study-fp32/test/sft/seed0.json")
KEYS = ("loss", "grad_norm", "learning_rate", "num_tokens")


def _steps(log_history: list[dict]) -> dict[int, dict]:
    """
    The training-step entries of a Trainer log, by step (evaluation and summary entries have no `loss`), with
    `num_tokens` as the step's own count: the Trainer's counter is cumulative and starts again from 0 when a run
    resumes from a checkpoint (the committed run resumed at step 112), so only each step's increment compares.
    """
    steps = {entry["step"]: dict(entry) for entry in log_history if "loss" in entry and "grad_norm" in entry}
    previous = 0.0
    for step in sorted(steps):
        total = steps[step]["num_tokens"]
        steps[step]["num_tokens"] = total - previous if total >= previous else total  # a resumed counter
        previous = total
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="/work/fp32-precision")
    args = parser.parse_args()

    states = sorted(
        Path(args.output_dir).glob("checkpoints/seed0/trainer-sft/checkpoint-*/trainer_state.json"),
        key=lambda path: int(path.parent.name.split("-")[-1]),
    )
    if not states:
        sys.exit(f"no SFT Trainer checkpoint under {args.output_dir}/checkpoints/seed0/trainer-sft/ yet")
    committed = _steps(json.loads(COMMITTED.read_text())["log_history"])
    retrain = _steps(json.loads(states[-1].read_text())["log_history"])
    print(f"{states[-1]}: steps {min(retrain)}-{max(retrain)} of the committed {min(committed)}-{max(committed)}")
    for step in sorted(retrain):
        differ = {
            key: (committed[step][key], retrain[step][key])
            for key in KEYS
            if committed[step][key] != retrain[step][key]
        }
        if differ:
            print(f"step {step}: the retrain differs from the committed run: {differ}")
            sys.exit(1)
    print(f"every logged value of steps {min(retrain)}-{max(retrain)} equal: the same model so far")


if __name__ == "__main__":
    main()
