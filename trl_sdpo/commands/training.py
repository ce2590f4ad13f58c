"""`trl-sdpo sft` and `trl-sdpo train`: fine-tune on recommendation rows with TRL's SFTTrainer or SDPOTrainer."""

from __future__ import annotations

import logging
import time

from ..rec.training import train_sdpo, train_sft
from .args import (
    ModelArguments,
    RecRowsArguments,
    SDPOArguments,
    SFTArguments,
    SFTCommandArguments,
    TrainCommandArguments,
)
from .common import (
    build_rec_examples,
    card_and_push,
    cpu_training_defaults,
    hub_base_model,
    load_model,
    load_rec_dataset,
    lora_config,
    make_parser,
    parse,
    save_model,
    settings,
    setup_logging,
    write_report,
)

logger = logging.getLogger("trl_sdpo.cli")

SFT_DESCRIPTION = """\
Supervised fine-tuning on recommendation rows: prompt (history + candidates) -> the target's title, with
TRL's SFTTrainer and the loss on the completion only. Saves a model (LoRA merged unless --no_merge_adapter) that
`trl-sdpo train --model` starts from. Every trl.SFTConfig flag works (--learning_rate, --max_steps, ...).

example:
  trl-sdpo sft --dataset movielens --max_rows 2000 --use_peft --learning_rate 2e-4 --output_dir sft-model
"""

TRAIN_DESCRIPTION = """\
S-DPO training: each row's prompt, its target title as the chosen completion and --num_negatives wrong candidate
titles as rejected completions, with trl_sdpo.SDPOTrainer. The reference model is the starting --model (usually
the SFT output): with --use_peft the policy is a new LoRA on it and the reference is the adapter-disabled model;
without, the reference is a frozen copy. Every trl_sdpo.SDPOConfig / DPOConfig flag works (--beta, --max_steps, ...).

example:
  trl-sdpo train --model sft-model --num_negatives 3 --beta 1.0 --use_peft --learning_rate 1e-4 --output_dir sdpo
"""


def make_sft_parser():
    return make_parser(
        "sft",
        SFT_DESCRIPTION,
        [RecRowsArguments, ModelArguments, SFTCommandArguments, SFTArguments],
        output_dir="trl-sdpo-sft",
        **cpu_training_defaults(),
    )


def make_train_parser():
    return make_parser(
        "train",
        TRAIN_DESCRIPTION,
        [RecRowsArguments, ModelArguments, TrainCommandArguments, SDPOArguments],
        output_dir="trl-sdpo-sdpo",
        beta=1.0,  # the S-DPO paper's value; TRL's DPO default is 0.1
        num_negatives=3,  # the paper's default
        **cpu_training_defaults(),
    )


# ---------------------------------------------------------------------------------------------- training steps
def build_preference_rows(examples, dataset, num_negatives: int, strategy: str, seed: int, model=None, tokenizer=None):
    from ..rec.builders import build_preference_dataset

    needs_model = strategy == "model"
    return build_preference_dataset(
        examples,
        num_negatives=num_negatives,
        strategy=strategy,
        seed=seed,
        dataset=dataset,
        model=model if needs_model else None,
        tokenizer=tokenizer if needs_model else None,
    )


# ------------------------------------------------------------------------------------------------- subcommands
def run(command: str, argv: list[str]) -> int:
    return run_sft(argv) if command == "sft" else run_train(argv)


def _eval_examples(dataset, data_args, args, cmd_args):
    if args.eval_strategy == "no":
        return None
    return build_rec_examples(dataset, data_args, "valid", seed=args.seed, max_rows=cmd_args.eval_rows)


def _save_and_report(command, model, tokenizer, metrics, dataset, split, num_rows, start, parsed) -> int:
    data_args, model_args, cmd_args, args = parsed
    if not args.distributed_state.is_main_process:  # under `accelerate launch` every process gets here: one writes
        return 0
    save_model(model, tokenizer, args.output_dir, merge=model_args.merge_adapter)
    card_and_push(
        args.output_dir,
        args,
        method="S-DPO" if command == "train" else "SFT",
        settings=_card_settings(command, args, cmd_args, dataset, split, num_rows),
        base_model=hub_base_model(model_args),
        sdpo=command == "train",
    )
    report = {
        "command": command,
        "dataset": dataset.summary(),
        "split": split,
        "num_rows": num_rows,
        "output_dir": args.output_dir,
        **metrics,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "settings": settings(data_args, model_args, cmd_args, args),
    }
    write_report(cmd_args.report, report)
    return 0


def _card_settings(command, args, cmd_args, dataset, split, num_rows) -> dict[str, str]:
    from ..model_card import sdpo_settings

    data = {"Data": f"{num_rows} {dataset.name} {split} rows (trl_sdpo.rec)"}
    if command == "train":
        return {**data, "Negatives": f"{cmd_args.negative_strategy} wrong candidates", **sdpo_settings(args)}
    return {**data, "Learning rate": f"{args.learning_rate:g}", "Max steps": str(args.max_steps)}


def _load_inputs(parsed):
    """What `sft` and `train` both start from: the dataset, the train and eval examples, the model."""
    data_args, model_args, cmd_args, args = parsed
    setup_logging()
    start = time.perf_counter()
    dataset = load_rec_dataset(data_args)
    split = data_args.split or "train"
    examples = build_rec_examples(dataset, data_args, split, seed=args.seed)
    eval_examples = _eval_examples(dataset, data_args, args, cmd_args)
    model, tokenizer = load_model(model_args)
    return start, dataset, split, examples, eval_examples, model, tokenizer


def run_sft(argv: list[str]) -> int:
    parsed = parse(make_sft_parser(), argv)
    data_args, model_args, cmd_args, args = parsed
    from ..rec.builders import build_sft_dataset

    start, dataset, split, examples, eval_examples, model, tokenizer = _load_inputs(parsed)
    logger.info(f"SFT on {len(examples)} {dataset.name} {split} rows")
    model, metrics = train_sft(
        model,
        tokenizer,
        build_sft_dataset(examples),
        args,
        peft_config=lora_config(model_args),
        eval_dataset=build_sft_dataset(eval_examples) if eval_examples else None,
    )
    return _save_and_report("sft", model, tokenizer, metrics, dataset, split, len(examples), start, parsed)


def run_train(argv: list[str]) -> int:
    parsed = parse(make_train_parser(), argv)
    data_args, model_args, cmd_args, args = parsed
    start, dataset, split, examples, eval_examples, model, tokenizer = _load_inputs(parsed)

    def preference_rows(rows):
        return build_preference_rows(
            rows, dataset, args.num_negatives, cmd_args.negative_strategy, args.seed, model, tokenizer
        )

    train_dataset = preference_rows(examples)
    eval_dataset = preference_rows(eval_examples) if eval_examples else None
    logger.info(
        f"S-DPO on {len(examples)} {dataset.name} {split} rows, {args.num_negatives} {cmd_args.negative_strategy} "
        f"negatives each, beta={args.beta}"
    )
    model, metrics = train_sdpo(
        model, tokenizer, train_dataset, args, peft_config=lora_config(model_args), eval_dataset=eval_dataset
    )
    return _save_and_report("train", model, tokenizer, metrics, dataset, split, len(examples), start, parsed)
