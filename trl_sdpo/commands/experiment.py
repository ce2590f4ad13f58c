"""`trl-sdpo experiment`: run a recommendation study from a YAML file, one JSON per (method, seed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from .common import _HelpFormatter, setup_logging

logger = logging.getLogger("trl_sdpo.cli")

DESCRIPTION = """\
Run every (method, seed) of a study YAML on one split and write <output_dir>/<split>/<method>/seed<seed>.json
(metrics, the target's rank on every eval row, training log, wall times, versions, machine). A run whose JSON exists
is skipped, so a study completes over several sittings; the SFT model of a seed is trained once and shared.
Methods: base, sft, sft-continued, dpo (TRL's DPOTrainer, k=1), sdpo (SDPOTrainer), random, popular, sasrec,
memorizer (no LM: the candidate lists of the train rows only).
The YAML is the study's own format (see examples/configs/movielens.yaml), not a file of flags.

examples:
  trl-sdpo experiment --config examples/configs/movielens.yaml --preset cpu --split valid --dry-run
  trl-sdpo experiment --config examples/configs/movielens.yaml --preset cpu --split valid --seeds 0 --methods base,sft
  trl-sdpo experiment --config examples/configs/movielens.yaml --preset smoke --output_dir /tmp/smoke
  trl-sdpo experiment --config examples/configs/movielens.yaml --preset smoke --set sft.steps=1 seeds=[3] --dry-run
"""


@dataclass
class ExperimentArguments:
    """
    `trl-sdpo experiment`: which study, preset and split to run, and which part of it.

    Parameters:
        config (`str`): The study YAML file.
        preset (`str` or `None`): A preset of the file's `presets:` section.
        split (`str` or `None`): `valid` or `test`; default: the study's `eval_split`.
        output_dir (`str` or `None`): Overrides the study's `output_dir`.
        methods (`str` or `None`): Comma-separated subset of the study's methods.
        seeds (`str` or `None`): Comma-separated subset (or other list) of seeds.
        dry_run (`bool`): Print the plan and the estimated number of optimizer steps; run nothing.
        set (`list[str]` or `None`): `KEY=VALUE` settings over the file and the preset (a variant of a study without
            a copy of its file); every run JSON records the settings it ran with.
    """

    _argument_group_name = "Experiment"

    config: str = field(metadata={"help": "The study YAML file (e.g. examples/configs/movielens.yaml)."})
    preset: str | None = field(default=None, metadata={"help": "A preset of the file's `presets:` section."})
    split: Literal["valid", "test"] | None = field(
        default=None, metadata={"help": "Split to evaluate on (valid: choosing settings; test: final numbers)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Overrides the study's output_dir."})
    methods: str | None = field(default=None, metadata={"help": "Comma-separated methods to run (default: all)."})
    seeds: str | None = field(default=None, metadata={"help": "Comma-separated seeds to run (default: the study's)."})
    dry_run: bool = field(default=False, metadata={"help": "Print the plan and estimated steps; run nothing."})
    set: list[str] | None = field(
        default=None,
        metadata={
            "help": "KEY=VALUE ... set over the file and the preset: a dotted KEY walks into a section, VALUE is "
            "YAML (e.g. --set sft.start_rows=4096 sft_seed=null bf16=false)."
        },
    )


def make_experiment_parser():
    # transformers' HfArgumentParser, not TrlParser: TrlParser reserves --config for a file of flags, and ours is
    # the study file itself.
    from transformers import HfArgumentParser

    return HfArgumentParser(
        [ExperimentArguments],
        prog="trl-sdpo experiment",
        usage="trl-sdpo experiment --config FILE.yaml [--preset NAME] [--split valid|test] [flags]",
        description=DESCRIPTION,
        formatter_class=_HelpFormatter,
    )


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}.") from None


def run(command: str, argv: list[str]) -> int:
    (args,) = make_experiment_parser().parse_args_into_dataclasses(argv)
    from ..rec.study.config import ConfigError, load_experiment_config, parse_overrides, select
    from ..rec.study.runner import describe_plan, run_experiment

    try:
        config = load_experiment_config(args.config, preset=args.preset, overrides=parse_overrides(args.set or []))
    except ConfigError as error:
        # The checks name a key as if the file held it; say when the command line set it instead
        keys = {text: text.partition("=")[0].strip() for text in args.set or []}
        named = [text for text, key in keys.items() if f"`{key}`" in str(error) or f"`{key}." in str(error)]
        if named:
            raise ConfigError(f"{error} (given on the command line: --set {named[-1]})") from None
        raise
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
    config = select(config, methods, seeds)
    if args.output_dir:
        config.output_dir = args.output_dir
    split = args.split or config.eval_split
    print(describe_plan(config, split))
    if args.dry_run:
        return 0
    setup_logging()
    logging.getLogger("trl_sdpo.rec.study").setLevel(logging.INFO)
    result = run_experiment(config, split)
    print(
        f"\n{split}: {len(result['written'])} runs written, {len(result['skipped'])} skipped (JSON existed), "
        f"{len(result['unavailable'])} unavailable ({', '.join(m for m, _ in result['unavailable']) or 'none'}); "
        f"results in {config.output_dir}/{split}/"
    )
    return 0
