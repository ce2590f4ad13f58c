"""Multi-process checks of `SDPOTrainer`, launched by `tests/test_distributed.py`.

`torchrun --nproc_per_node 2 tests/distributed_checks.py OUT_DIR` runs every check in 2 processes (gloo, CPU) and has
rank 0 save the results to `OUT_DIR/results-2.pt`; the test calls `run_checks(OUT_DIR)` in its own process for the
1-process results and compares the two, and both with float64 forward passes. One launch runs every check because
starting processes (imports) costs more than the checks on tiny models.

Each check keeps the *global* batch fixed (4 rows): per-device batch = 4 / processes, so 1 and 2 processes see the
same rows in the same steps.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import Dataset, load_dataset  # noqa: E402
from tiny import make_model, make_tokenizer  # noqa: E402

from trl_sdpo import SDPOConfig, SDPOTrainer  # noqa: E402

GLOBAL_BATCH = 4
NEGATIVES = [" no", " red", " cat", " bad", " moon"]
WORDS = ["Heat", "Fargo", "Babe", "Muse", "Blur", "Pulp", "Oasis", "Casino", "Sabrina", "Jumanji", "Clueless"]
# k = 1, 2, 3, 4, 1, ... so the two processes' batches (and the padded last batch) hold different k.
ROWS = [
    {"prompt": f"Question {i}: is {w} good? Answer:", "chosen": " yes", "rejected": NEGATIVES[: 1 + i % 4]}
    for i, w in enumerate(WORDS)
]
TRAIN_ROWS = ROWS[:8]
# 7 and 5 rows with 2 rows per process per batch: the last batch of each is padded by the distributed sampler.
PRECOMPUTE_TRAIN, PRECOMPUTE_EVAL = ROWS[:7], ROWS[6:]


def _args(out_dir: Path, name: str, world: int, **overrides) -> SDPOConfig:
    values = dict(
        output_dir=str(out_dir / f"{name}-{world}"),
        report_to=[],
        bf16=False,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        per_device_eval_batch_size=GLOBAL_BATCH // world,
        max_steps=3,
        optim="sgd",  # Adam's first step is lr * sign(grad): rounding flips the sign of near-zero gradients
        learning_rate=0.5,
        logging_steps=1,
        save_strategy="no",
        beta=1.0,
        seed=0,
        max_length=None,
        disable_tqdm=True,
    )
    values.update(overrides)
    return SDPOConfig(**values)


def _unwrapped_params(trainer: SDPOTrainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def check_training(out_dir: Path, world: int, prefix_sharing: bool) -> dict[str, torch.Tensor]:
    """Parameters after 3 SGD steps on rows of different k (DDP averages the per-process gradients)."""
    model = make_model("llama", seed=0)
    trainer = SDPOTrainer(
        model,
        ref_model=copy.deepcopy(model),
        args=_args(out_dir, f"train-prefix{int(prefix_sharing)}", world, prefix_sharing=prefix_sharing),
        train_dataset=Dataset.from_list(TRAIN_ROWS),
        processing_class=make_tokenizer(),
    )
    trainer.train()
    return _unwrapped_params(trainer)


def _stored(dataset: Dataset) -> dict[str, list]:
    return {key: list(dataset[key]) for key in ("prompt", "ref_chosen_logps", "ref_rejected_logps")}


def check_precompute(out_dir: Path, world: int, source: str) -> dict[str, dict[str, list]]:
    """The reference log-probs `precompute_ref_log_probs=True` stores, for a train and an eval dataset."""
    if source == "memory":
        train, evaluation = Dataset.from_list(PRECOMPUTE_TRAIN), Dataset.from_list(PRECOMPUTE_EVAL)
    else:
        files = {}
        for name, rows in (("train", PRECOMPUTE_TRAIN), ("eval", PRECOMPUTE_EVAL)):
            files[name] = out_dir / f"{name}-{world}.jsonl"
            if PartialState().is_main_process:
                files[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
        PartialState().wait_for_everyone()
        with PartialState().main_process_first():
            loaded = load_dataset("json", data_files={k: str(v) for k, v in files.items()}, cache_dir=str(out_dir))
        train, evaluation = loaded["train"], loaded["eval"]
    trainer = SDPOTrainer(
        make_model("qwen2", seed=0),
        args=_args(out_dir, f"precompute-{source}", world, precompute_ref_log_probs=True, max_steps=1),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=make_tokenizer(),
    )
    stored = {"train": _stored(trainer.train_dataset), "eval": _stored(trainer.eval_dataset)}
    trainer.train()  # the stored columns reach the loss through the collator, under DDP too
    return stored


def check_evaluation(out_dir: Path, world: int, num_rows: int) -> dict[str, float]:
    """`evaluate()` metrics with a reference that differs from the policy (so rewards are not all 0)."""
    trainer = SDPOTrainer(
        make_model("llama", seed=0),
        ref_model=make_model("llama", seed=1),
        args=_args(out_dir, f"eval{num_rows}", world),
        train_dataset=Dataset.from_list(TRAIN_ROWS),  # required by DPOTrainer, not used here
        eval_dataset=Dataset.from_list(ROWS[:num_rows]),
        processing_class=make_tokenizer(),
    )
    return {k: v for k, v in trainer.evaluate().items() if not k.endswith(("_runtime", "_per_second"))}


def run_checks(out_dir: str | Path) -> dict:
    """Every check, in this process's world (1 process, or each rank of a launch); the results of rank 0."""
    out_dir = Path(out_dir)
    world = PartialState().num_processes
    return {
        "world": world,
        "train": {prefix: check_training(out_dir, world, prefix) for prefix in (True, False)},
        "precompute": {source: check_precompute(out_dir, world, source) for source in ("memory", "files")},
        "eval": {n: check_evaluation(out_dir, world, n) for n in (7, 8)},
    }


if __name__ == "__main__":
    torch.set_num_threads(1)  # one core per process on a 2-core machine
    # Without `cpu=True` (`use_cpu`, `ACCELERATE_USE_CPU=1`, `accelerate launch --cpu`) accelerate does not join
    # torchrun's processes on a machine without GPU: each would train alone on the whole dataset.
    state = PartialState(cpu=True)
    if state.num_processes != int(os.environ.get("WORLD_SIZE", "1")):
        raise RuntimeError(f"{state.num_processes} accelerate processes for WORLD_SIZE={os.environ.get('WORLD_SIZE')}")
    out = Path(sys.argv[1])
    results = run_checks(out)
    if PartialState().is_main_process:
        torch.save(results, out / f"results-{results['world']}.pt")
    state.wait_for_everyone()
    state.destroy_process_group()
