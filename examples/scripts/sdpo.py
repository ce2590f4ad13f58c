# /// script
# dependencies = [
#     "trl-sdpo",
#     "peft",
# ]
# ///

"""
S-DPO training in the shape of TRL's `trl/scripts/dpo.py`: the same arguments (`ScriptArguments`, `SDPOConfig`,
`ModelConfig`), one `accelerate launch` for 1 to N processes. Multi-process launching, the effective batch and the
memory of DDP, FSDP2 and DeepSpeed ZeRO: docs/distributed.md.

Data: a dataset from the Hub (`--dataset_name org/name`) or a local `.json`, `.jsonl` or `.parquet` file or folder of
them (`--dataset_name path/to/train.jsonl`), with `prompt`, `chosen` and either `rejected` (a list) or the S-DPO
reference code's `rejected1 ... rejectedK` columns (merged into the list). A local file is the `train` split; give
`--dataset_test_split` the path of another file to evaluate on it.

# One process (CPU or one GPU), settings from a recipe; flags override it
```bash
python examples/scripts/sdpo.py --config examples/scripts/sdpo_recipe.yaml
```

# 4 GPUs, DDP (effective batch = 4 per device x 4 processes x 4 accumulation = 64 rows)
```bash
accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml \
    examples/scripts/sdpo.py --config examples/scripts/sdpo_recipe.yaml
```

# LoRA (the reference is the adapter-disabled model: no second copy of the weights)
```bash
accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml \
    examples/scripts/sdpo.py --config examples/scripts/sdpo_recipe.yaml \
    --use_peft --lora_r 16 --lora_alpha 32 --learning_rate 1e-4
```
"""

import argparse


def load_preference_dataset(script_args):
    """
    The train and test splits named by `script_args`, with `rejected1..rejectedK` columns merged into `rejected`.

    Args:
        script_args (`trl.ScriptArguments`): `dataset_name` is a Hub id or a local file/folder; `dataset_config`,
            `dataset_train_split` and `dataset_test_split` as in TRL's scripts (a local file's split is `train`).

    Returns:
        `datasets.DatasetDict`: the splits, each with `prompt`, `chosen` and a `rejected` list.
    """
    from pathlib import Path

    from datasets import DatasetDict, load_dataset

    from trl_sdpo.data import merge_rejected_columns

    def builder(path: Path) -> str:
        suffixes = {p.suffix for p in path.glob("*")} if path.is_dir() else {path.suffix}
        return "parquet" if ".parquet" in suffixes else "json"

    name, test_split = script_args.dataset_name, script_args.dataset_test_split
    if Path(name).exists():
        files = {"train": name}
        if Path(test_split).exists():
            files["test"], script_args.dataset_test_split = test_split, "test"
        dataset = load_dataset(builder(Path(name)), data_files=files)
    else:
        dataset = load_dataset(name, name=script_args.dataset_config)
    return DatasetDict(
        {
            split: merge_rejected_columns(data) if "rejected" not in data.column_names else data
            for split, data in dataset.items()
        }
    )


def main(script_args, training_args, model_args):
    import torch
    import transformers
    from accelerate.logging import get_logger
    from packaging.version import Version
    from trl import get_peft_config, get_quantization_config

    from trl_sdpo import SDPOTrainer

    logger = get_logger(__name__)

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_preference_dataset(script_args)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"eval_strategy={training_args.eval_strategy!r} but the dataset has no split "
                f"{script_args.dataset_test_split!r} (splits: {list(dataset)})."
            )
        eval_dataset = dataset[script_args.dataset_test_split]
    logger.info(f"{len(dataset[script_args.dataset_train_split])} training rows")

    trainer = SDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )

    if script_args.ignore_bias_buffers:
        # torch distributed hack (as TRL's dpo.py): DDP cannot broadcast boolean buffers
        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")

    # Every process takes part (FSDP and ZeRO-3 gather the sharded weights); only the main process writes.
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)

    # Finish the trackers and destroy the process group (as TRL's scripts), once every process is done: only the
    # main process writes the model, the others would otherwise tear the group down under it.
    trainer.accelerator.wait_for_everyone()
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from trl import ModelConfig, ScriptArguments, TrlParser

    from trl_sdpo import SDPOConfig

    return TrlParser((ScriptArguments, SDPOConfig, ModelConfig), prog=prog)


if __name__ == "__main__":
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(fail_with_unknown_args=False)
    main(script_args, training_args, model_args)
