"""What the subcommands share: parsing, loading rows and models, LoRA, evaluation and the JSON report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from trl import TrlParser

from .args import ModelArguments, RecRowsArguments

logger = logging.getLogger("trl_sdpo.cli")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flag defaults shown, and the description's examples kept line by line."""


def make_parser(command: str, description: str, dataclass_types: list, **defaults: Any) -> TrlParser:
    """A `TrlParser` over `dataclass_types` with a short usage line (argparse would otherwise list every flag)."""
    parser = TrlParser(
        dataclass_types,
        prog=f"trl-sdpo {command}",
        usage=f"trl-sdpo {command} [flags]   (also: --config FILE.yaml)",
        description=description,
        formatter_class=_HelpFormatter,
    )
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def parse(parser: TrlParser, argv: list[str]) -> tuple:
    return parser.parse_args_and_config(argv)


def cpu_training_defaults() -> dict[str, Any]:
    """
    bf16 where it is native, fp32 elsewhere (`--bf16 false` forces fp32). TRL turns bf16 on by default, which
    `TrainingArguments` rejects on a CPU unless `use_cpu` is set; on a CPU with AVX512_BF16 or AMX it is ~2x faster.
    """
    from ..rec.machine import precision_kwargs

    return precision_kwargs("auto")


def setup_logging() -> None:
    logging.basicConfig(format="%(message)s", level=logging.INFO, stream=sys.stdout, force=False)
    logger.setLevel(logging.INFO)


# ----------------------------------------------------------------------------------------------------------- data
def load_rec_dataset(data_args: RecRowsArguments):
    """The dataset named by `--dataset` / `--data_dir` (rec's loaders raise errors naming what is missing)."""
    from ..rec.loaders import load_dataset_by_name

    return load_dataset_by_name(data_args.dataset, data_dir=data_args.data_dir, min_history=data_args.min_history)


def build_rec_examples(dataset, data_args: RecRowsArguments, split: str, seed: int, max_rows: int | None = None):
    """Rows of `split` with candidates and prompts, as `rec.builders.RecExample`s."""
    from ..rec.builders import build_examples

    return build_examples(
        dataset,
        split,
        num_candidates=data_args.num_candidates,
        sampler=data_args.sampler,
        seed=seed,
        conversational=data_args.conversational,
        paraphrase=data_args.paraphrase,
        max_rows=max_rows if max_rows is not None else data_args.max_rows,
    )


# ---------------------------------------------------------------------------------------------------------- model
def load_model(model_args: ModelArguments):
    """(model, tokenizer) from `--model`, or the embedded SmolLM2-135M-Instruct when it is not given."""
    import torch

    from ..rec.models import load_model_and_tokenizer

    dtype = getattr(torch, model_args.dtype)
    return load_model_and_tokenizer(model_args.model_name_or_path, cache_dir=model_args.model_cache_dir, dtype=dtype)


def lora_config(model_args: ModelArguments):
    """The LoRA adapter of `--use_peft`, or None for full fine-tuning."""
    if not model_args.use_peft:
        return None
    from ..rec.training import causal_lm_lora

    return causal_lm_lora(
        model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
    )


def save_model(model, tokenizer, output_dir: str, merge: bool = True) -> None:
    """Save a model that `--model output_dir` loads again: merged weights (or the adapter) plus the tokenizer."""
    from ..rec.training import plain_model

    model = plain_model(model, merge)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    logger.info(f"Saved the model to {output_dir}")


def card_and_push(
    output_dir: str, args, method: str, settings: dict[str, str], base_model: str | None, sdpo: bool
) -> str | None:
    """
    Write the model card of a model [`save_model`] saved and, with `args.push_to_hub`, upload its folder.

    The `sft` and `train` commands save the model themselves (LoRA merged), not through the trainer, whose
    `push_to_hub` would upload its own output instead; so the push is done here, as `Trainer.push_to_hub` does it
    (the repository `args.hub_model_id`, or the folder's name under the user's namespace).

    Args:
        output_dir (`str`): The saved model's folder.
        args: The run's `SFTConfig` / `SDPOConfig` (`push_to_hub`, `hub_model_id`, `hub_token`, ...).
        method (`str`): `"SFT"` or `"S-DPO"`, for the card.
        settings (`dict[str, str]`): The card's settings table.
        base_model (`str` or `None`): The starting model's Hub id (`None` for a local folder or the embedded model).
        sdpo (`bool`): Whether the card names the S-DPO paper and tags.

    Returns:
        `str` or `None`: the repository id pushed to.
    """
    from ..model_card import SDPO_PAPER, SDPO_TAGS, write_model_card

    tags = list(SDPO_TAGS) if sdpo else ["trl", "sft", "trl-sdpo"]
    repo_id = None
    if args.push_to_hub:
        import huggingface_hub

        api = huggingface_hub.HfApi()
        name = args.hub_model_id or Path(output_dir).absolute().name
        repo_id = api.create_repo(name, token=args.hub_token, private=args.hub_private_repo, exist_ok=True).repo_id
    card = write_model_card(
        output_dir,
        method=method,
        settings=settings,
        tags=tags,
        base_model=base_model,
        paper=SDPO_PAPER if sdpo else None,
        hub_model_id=repo_id,
    )
    logger.info(f"Wrote the model card {card}")
    if repo_id is not None:
        api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message="End of training",
            token=args.hub_token,
            revision=args.hub_revision,
            ignore_patterns=["_*", "checkpoint-*"],  # as Trainer.push_to_hub
        )
        logger.info(f"Pushed {output_dir} to the Hub repository {repo_id}")
    return repo_id


def hub_base_model(model_args: ModelArguments) -> str | None:
    """`--model` when it names a Hub model, for the card; `None` for a local folder or the embedded default."""
    name = model_args.model_name_or_path
    return name if name and not Path(name).exists() else None


# ----------------------------------------------------------------------------------------------------- evaluation
def evaluate_model(model, tokenizer, examples, eval_args, show_progress: bool = True) -> dict[str, Any]:
    """Generation (HR@1, ValidRatio) and ranking (HR@1, HR@5, NDCG@5, MRR) metrics of one model on `examples`."""
    from ..rec.evaluate import evaluate_generation
    from ..rec.ranking import evaluate_ranking

    was_training = model.training
    model.eval()
    results: dict[str, Any] = {}
    if eval_args.generation:
        generation = evaluate_generation(
            model,
            tokenizer,
            examples,
            batch_size=eval_args.batch_size,
            max_new_tokens=eval_args.max_new_tokens,
            return_records=eval_args.save_responses,
            show_progress=show_progress,
        )
        results["generation"] = generation
    if eval_args.ranking:
        ranking = evaluate_ranking(
            model,
            tokenizer,
            examples,
            batch_size=eval_args.batch_size,
            return_records=True,
            show_progress=show_progress,
        )
        # The target's rank in every row, so that two models evaluated on the same rows compare row by row.
        ranking["ranks"] = [record["rank"] for record in ranking.pop("records")]
        results["ranking"] = ranking
    model.train(was_training)
    return results


def evaluate_baselines(dataset, examples, seed: int) -> dict[str, dict]:
    from ..rec.baselines import popularity_baseline, random_baseline

    return {"random": random_baseline(examples, seed=seed), "popular": popularity_baseline(dataset, examples)}


# --------------------------------------------------------------------------------------------------------- report
def settings(*args_objects) -> dict[str, Any]:
    """The parsed arguments of a run, for its report (TRL configs through their own `to_dict`)."""
    out: dict[str, Any] = {}
    for obj in args_objects:
        out[type(obj).__name__] = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    return out


def write_report(path: str | None, report: dict[str, Any]) -> None:
    """Write `report` as JSON to `path` (parent folders created); nothing when `path` is None."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"Report written to {path}")
