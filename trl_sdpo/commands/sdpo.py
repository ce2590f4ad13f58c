"""`trl-sdpo sdpo`: S-DPO on your own preference data, in the shape of TRL's `trl dpo` (`trl/scripts/dpo.py`).

TRL's CLI cannot be extended by plugins, so this package carries the script: the same three argument classes
(`ScriptArguments`, here [`SDPOConfig`], `ModelConfig`), `--config recipe.yaml`, one process or `accelerate launch`.
`trl-sdpo train` stays the recommendation path (it builds its rows from MovieLens, LastFM or Goodreads).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .args import ModelLoadArguments, PreferenceDataArguments, SDPOArguments
from .common import make_parser, parse, setup_logging

logger = logging.getLogger("trl_sdpo.cli")

DESCRIPTION = """\
S-DPO on your own preference data, with the flags of TRL's `trl dpo`: trl.ScriptArguments (the data),
trl_sdpo.SDPOConfig (every DPOConfig / TrainingArguments flag, plus --num_negatives, --ranking_loss,
--prefix_sharing) and trl.ModelConfig (--attn_implementation, --dtype, LoRA with --use_peft, 4/8-bit with
--load_in_4bit / --load_in_8bit). Flags override the values of --config FILE.yaml.

Data (--dataset_name): a local .json/.jsonl/.csv/.parquet file or folder, or a Hub dataset id (read from the local
cache when offline). Each row: `prompt`, `chosen`, and `rejected` as a list of k completions, all strings or all
chat-message lists; or the S-DPO reference code's `rejected1 ... rejectedK` columns, merged into the list.
The reference model is --model_name_or_path loaded again (with --use_peft: the model with the adapter disabled).
The final model (the adapter alone with --use_peft) and its README.md card go to --output_dir; --push_to_hub
uploads them.

examples:
  trl-sdpo sdpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name prefs.jsonl \\
      --beta 1.0 --num_negatives 3 --learning_rate 1e-5 --output_dir Qwen2.5-0.5B-SDPO
  trl-sdpo sdpo --config examples/scripts/sdpo_recipe.yaml --use_peft --lora_r 16
  accelerate launch --num_processes 4 -m trl_sdpo.cli sdpo --config recipe.yaml
"""

# The `datasets` builder of each local file type
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def make_sdpo_parser():
    return make_parser("sdpo", DESCRIPTION, [PreferenceDataArguments, SDPOArguments, ModelLoadArguments])


# ---------------------------------------------------------------------------------------------------------- data
def _builder(path: Path) -> str:
    """The `datasets` builder of a local file or folder, refusing a type it cannot read or a folder of mixed ones."""
    from ..cli import CommandError

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    builders = {_BUILDERS[p.suffix.lower()] for p in files if p.suffix.lower() in _BUILDERS}
    if len(builders) == 1:
        return builders.pop()
    kinds = ", ".join(sorted(_BUILDERS))
    if not builders:
        what = f"the folder {path} holds no" if path.is_dir() else f"{path} is not a"
        raise CommandError(f"--dataset_name: {what} {kinds} file.")
    raise CommandError(
        f"--dataset_name: the folder {path} mixes file types ({', '.join(sorted(builders))}); keep one."
    )


def _with_rejected_lists(dataset, split: str):
    """`rejected1..rejectedK` columns merged into a `rejected` list; other rows as they are (the trainer checks them)."""
    from datasets import IterableDataset

    from ..cli import CommandError
    from ..data import merge_rejected_columns

    columns = dataset.column_names or []
    numbered = [c for c in columns if c.startswith("rejected") and c[len("rejected") :].isdigit()]
    if "rejected" in columns or not numbered:
        return dataset
    if isinstance(dataset, IterableDataset):
        raise CommandError(
            f"Split {split!r} has rejected1..rejectedK columns, which are merged into a `rejected` list only without "
            "--dataset_streaming."
        )
    return merge_rejected_columns(dataset)


def load_preference_dataset(script_args: PreferenceDataArguments) -> tuple[Any, str]:
    """
    The splits named by `script_args`, with `rejected1..rejectedK` columns merged into `rejected`.

    Args:
        script_args ([`PreferenceDataArguments`]): `dataset_name` is a local file or folder, or a Hub id;
            `dataset_config`, `dataset_streaming` as in TRL's scripts. A local file is the `train` split;
            a `dataset_test_split` that is the path of a file is loaded as the split `test`.

    Returns:
        `tuple[DatasetDict, str]`: the splits, and the name of the evaluation split.

    Raises:
        CommandError: naming the flag, for a missing or unreadable dataset.
    """
    from datasets import DatasetDict, IterableDatasetDict, load_dataset

    from ..cli import CommandError

    name, test_split = script_args.dataset_name, script_args.dataset_test_split
    if not name:
        raise CommandError(
            "--dataset_name is required: a local .json/.jsonl/.csv/.parquet file or folder, or a Hub dataset id."
        )
    streaming = script_args.dataset_streaming
    path = Path(name)
    if path.exists():
        if path.is_dir():
            dataset = load_dataset(_builder(path), data_dir=str(path), streaming=streaming)
        else:
            files = {"train": str(path)}
            if test_split and Path(test_split).is_file():
                if _builder(Path(test_split)) != _builder(path):
                    raise CommandError("--dataset_test_split: a file of the same type as --dataset_name is expected.")
                files["test"], test_split = test_split, "test"
            dataset = load_dataset(_builder(path), data_files=files, streaming=streaming)
    else:
        try:
            dataset = load_dataset(name, name=script_args.dataset_config, streaming=streaming)
        except (OSError, ValueError) as error:  # datasets' not-found errors are FileNotFoundError/ConnectionError
            raise CommandError(
                f"--dataset_name {name!r} is not a local file or folder, and loading it as a Hub dataset failed "
                f"(offline, it must be in the local cache): {error}"
            ) from None
    splits = {split: _with_rejected_lists(data, split) for split, data in dataset.items()}
    kind = IterableDatasetDict if streaming else DatasetDict
    return kind(splits), test_split


# -------------------------------------------------------------------------------------------------------- command
def _hub_dataset_id(name: str) -> str | None:
    # The card links `huggingface.co/datasets/<name>`: only a Hub id makes that link.
    return None if Path(name).exists() else name


def main(script_args: PreferenceDataArguments, training_args, model_args) -> int:
    """Train S-DPO as `script_args`, `training_args` and `model_args` say; save (or push) the model and its card."""
    import torch
    from trl import get_peft_config, get_quantization_config

    from ..cli import CommandError
    from ..trainer import SDPOTrainer

    if not model_args.model_name_or_path:
        raise CommandError("--model_name_or_path is required: a Hub model id or a local model folder.")
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    dataset, test_split = load_preference_dataset(script_args)
    train_split = script_args.dataset_train_split
    if train_split not in dataset:
        raise CommandError(f"--dataset_train_split {train_split!r} is not a split of the dataset ({list(dataset)}).")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if test_split not in dataset:
            strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)  # an enum
            raise CommandError(
                f"--eval_strategy {strategy} needs an evaluation split, and --dataset_test_split "
                f"{test_split!r} is neither a split of the dataset ({list(dataset)}) nor a file."
            )
        eval_dataset = dataset[test_split]

    trainer = SDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[train_split],
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    if script_args.ignore_bias_buffers:
        # As TRL's scripts: DDP cannot broadcast boolean buffers
        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # Every process takes part (FSDP and ZeRO-3 gather the sharded weights); only the main one writes. push_to_hub
    # saves the model itself: calling save_model first would, with push_to_hub set, upload twice.
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=_hub_dataset_id(script_args.dataset_name))
        trainer.accelerator.print(
            f"Model and card saved to {training_args.output_dir}, pushed to {trainer.hub_model_id}"
        )
    else:
        trainer.save_model(training_args.output_dir)
        trainer.accelerator.print(f"Model and card saved to {training_args.output_dir}")
    # Finish the trackers and destroy the process group once every process is done (as TRL's scripts)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return 0


def run(command: str, argv: list[str]) -> int:
    script_args, training_args, model_args = parse(make_sdpo_parser(), argv)
    setup_logging()
    return main(script_args, training_args, model_args)
