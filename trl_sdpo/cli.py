"""`trl-sdpo`: S-DPO on your own preference data, and data, SFT, S-DPO and evaluation for LM-based recommendation.

`main` only picks the subcommand; each subcommand's flags come from dataclasses (`trl_sdpo.commands.args`) through
`trl.TrlParser`, so TRL's `SFTConfig` / `SDPOConfig` flags and `--config FILE.yaml` work as in TRL's own scripts.
"""

from __future__ import annotations

import importlib
import os
import sys

# (module in trl_sdpo.commands, one line for the top-level help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sdpo": ("sdpo", "S-DPO on your own preference file or Hub dataset, with the flags of TRL's `trl dpo`."),
    "data": ("data", "Build a recommendation dataset: summary, --export to S-DPO JSON, or --leak-check."),
    "sft": ("training", "Supervised fine-tuning: prompt -> target title (TRL SFTTrainer, completion-only loss)."),
    "train": (
        "training",
        "S-DPO on recommendation rows: the target + k rejected titles per prompt; reference = --model.",
    ),
    "eval": ("evaluation", "Generation HR@1 / ValidRatio, ranking HR@1 / HR@5 / NDCG@5 / MRR, and baselines."),
    "experiment": ("experiment", "Run a study YAML: every (method, seed) on a split, one JSON per run, resumable."),
    "demo": ("demo", "The whole path on MovieLens-100K + SmolLM2-135M: base -> SFT -> S-DPO, table, JSON, plot."),
    "results": ("results", "docs/results.md from a study's run JSONs: tables, paired bootstrap, claim check."),
}

USAGE = """\
usage: trl-sdpo <command> [flags]     (trl-sdpo <command> --help lists a command's flags)

Softmax-DPO (S-DPO) with Hugging Face TRL: `sdpo` trains on your own preference data; the other commands are
the toolkit for LM-based recommendation (MovieLens, LastFM, Goodreads).

commands:
{commands}

examples:
  trl-sdpo sdpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name prefs.jsonl --beta 1.0 --output_dir out
  trl-sdpo sdpo --config recipe.yaml --use_peft --lora_r 16
  trl-sdpo demo                                   # base -> SFT -> S-DPO, about 10 minutes on 2 CPU cores
  trl-sdpo data --dataset movielens --split valid --export ml-valid.json
  trl-sdpo data --dataset lastfm --data_dir data/lastfm --sampler sdpo-compat --leak-check
  trl-sdpo sft --max_rows 2000 --use_peft --output_dir sft-model
  trl-sdpo train --model sft-model --num_negatives 3 --beta 1.0 --use_peft --output_dir sdpo-model
  trl-sdpo eval --model sdpo-model --split test --report test.json
  trl-sdpo experiment --config examples/configs/movielens.yaml --preset cpu --split valid --dry-run

Every command accepts --config FILE.yaml (flags from a YAML file); the recommendation commands also take --report
FILE (results as JSON).
"""


class CommandError(Exception):
    """A problem with the user's input (a missing file, a bad flag combination): printed without a traceback."""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run `trl-sdpo <command> [flags]`; returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"trl-sdpo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trl-sdpo: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(f"trl_sdpo.commands.{COMMANDS[name][0]}")
    try:
        return module.run(name, rest)
    except (CommandError, OSError, ImportError, ValueError) as error:
        # Missing or malformed data/model files and missing packages are the user's to fix; rec's errors name the
        # file, line and the command to run, which a traceback would bury.
        if os.environ.get("TRL_SDPO_DEBUG"):
            raise
        print(f"trl-sdpo {name}: error: {error}\n(set TRL_SDPO_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
