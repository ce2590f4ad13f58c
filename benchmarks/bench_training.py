"""Per-row cost of every stage of the recommendation studies, the paths they used before and the cheaper ones now.

    python benchmarks/bench_training.py            # every case, ~15 min on 2 AVX-512 cores
    python benchmarks/bench_training.py --quick    # 1 warm-up + 2 timed steps, 8 eval rows

SmolLM2-135M's real shape (random weights: the speed does not depend on them) with its real tokenizer, on real
MovieLens-100K rows as the studies build them (chat-form prompts, 20 candidates, ~270 prompt tokens), the `cpu`
preset's settings (4 rows a step, max_length 512, lr 1e-5, full fine-tuning, no activation checkpointing). Each case
runs in its own subprocess through the same trainer and evaluation functions the experiment runner calls, so that
its peak memory (resident set growth after the model is built) is its own. A training step is the whole optimizer
step as `Trainer` runs it (forward, backward, optimizer); the median of the timed steps, divided by the rows in it.

Cases ("before" = the `cpu` preset's committed runs; "now" = the runner's defaults):

- SFT row: TRL's `SFTTrainer` fp32 (before) | `CompletionSFTTrainer` (LM head on completion positions) fp32 | bf16.
- S-DPO k=3 row: reference forward every step fp32 (before) | bf16 | precomputed reference fp32 | bf16 (now).
- DPO row: TRL's `DPOTrainer` fp32 (before) | `SDPOTrainer` k=1 shared prefix, reference every step, fp32 |
  precomputed fp32 | precomputed bf16 (now).
- Reference pass row: the one-off precomputation, per row (shared by DPO and S-DPO of a seed).
- Ranking-evaluation row (20 candidates scored by log-prob) and generation row (greedy, 20 new tokens: random
  weights never stop early, so this is an upper bound) in fp32 and bf16.

Writes `benchmarks/results/training-<machine>.json` and prints the markdown table of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (case, stage, path, precision); the first case of each stage is the "before" it is compared with
CASES = [
    ("sft-trl-fp32", "SFT row", "TRL SFTTrainer (full logits on CPU)", "fp32"),
    ("sft-head-fp32", "SFT row", "CompletionSFTTrainer", "fp32"),
    ("sft-head-bf16", "SFT row", "CompletionSFTTrainer", "bf16"),
    ("sdpo-ref-fp32", "S-DPO k=3 row", "reference forward every step", "fp32"),
    ("sdpo-ref-bf16", "S-DPO k=3 row", "reference forward every step", "bf16"),
    ("sdpo-pre-fp32", "S-DPO k=3 row", "precomputed reference", "fp32"),
    ("sdpo-pre-bf16", "S-DPO k=3 row", "precomputed reference", "bf16"),
    ("dpo-trl-fp32", "DPO row", "TRL DPOTrainer (pairs, reference every step)", "fp32"),
    ("dpo-shared-fp32", "DPO row", "SDPOTrainer k=1, reference every step", "fp32"),
    ("dpo-pre-fp32", "DPO row", "SDPOTrainer k=1, precomputed reference", "fp32"),
    ("dpo-pre-bf16", "DPO row", "SDPOTrainer k=1, precomputed reference", "bf16"),
    ("reference-fp32", "reference pass row (once per seed)", "precompute, k=3", "fp32"),
    ("reference-bf16", "reference pass row (once per seed)", "precompute, k=3", "bf16"),
    ("rank-fp32", "ranking-evaluation row", "evaluate_ranking, batch 8", "fp32"),
    ("rank-bf16", "ranking-evaluation row", "evaluate_ranking, batch 8", "bf16"),
    ("gen-fp32", "generation row", "evaluate_generation, batch 8", "fp32"),
    ("gen-bf16", "generation row", "evaluate_generation, batch 8", "bf16"),
]
BATCH = 4  # rows per optimizer step, as the `cpu` preset


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _rows(num_rows: int, split: str):
    from trl_sdpo.rec.builders import build_examples
    from trl_sdpo.rec.loaders import load_dataset_by_name

    dataset = load_dataset_by_name("movielens")
    return dataset, build_examples(dataset, split, num_candidates=20, conversational=True, max_rows=num_rows, seed=0)


def _model(tokenizer):
    import torch
    from bench_logprobs import smollm2_135m_config
    from transformers import LlamaForCausalLM

    config = smollm2_135m_config()
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self.start)

    return StepTimer()


# The `cpu` preset's committed runs used transformers' default AdamW (foreach); the runner now uses the fused kernel
BEFORE = {"sft-trl-fp32", "sdpo-ref-fp32", "dpo-trl-fp32"}


def _args(config_class, out: str, bf16: bool, steps: int, optim: str = "adamw_torch", **extra):
    from trl_sdpo.rec.machine import precision_kwargs

    return config_class(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        max_length=512,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        activation_checkpointing=False,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=0,
        optim=optim,
        **precision_kwargs(bf16),
        **extra,
    )


def worker(args) -> dict:
    import tempfile

    import torch
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from trl_sdpo import CompletionSFTTrainer, SDPOConfig, SDPOTrainer
    from trl_sdpo.rec.builders import build_preference_dataset, build_sft_dataset
    from trl_sdpo.rec.evaluate import evaluate_generation
    from trl_sdpo.rec.machine import FAST_OPTIMIZER
    from trl_sdpo.rec.ranking import evaluate_ranking
    from trl_sdpo.rec.study.models import default_tokenizer
    from trl_sdpo.rec.training import precompute_reference, reference_copy

    case = args.case
    bf16 = case.endswith("bf16")
    # "now" cases train as the runner does (fused AdamW); "before" cases as the committed runs did
    optim = "adamw_torch" if case in BEFORE or not args.fused_adamw else FAST_OPTIMIZER
    steps = args.warmup + args.steps
    tokenizer = default_tokenizer()
    model = _model(tokenizer)
    out = tempfile.mkdtemp()
    before = current_rss()
    result: dict = {"case": case}

    if case.startswith(("rank", "gen")):
        _, examples = _rows(args.eval_rows, "valid")
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            evaluate = evaluate_ranking if case.startswith("rank") else evaluate_generation
            kwargs = {} if case.startswith("rank") else {"max_new_tokens": 20}
            evaluate(model, tokenizer, examples[:8], batch_size=8, show_progress=False, **kwargs)  # warm-up
            start = time.perf_counter()
            evaluate(model, tokenizer, examples, batch_size=8, show_progress=False, **kwargs)
            elapsed = time.perf_counter() - start
        result.update(per_row_s=elapsed / len(examples), rows=len(examples))
    else:
        dataset, examples = _rows(BATCH * steps, "train")
        if case.startswith("sft"):
            trainer_class = SFTTrainer if case.startswith("sft-trl") else CompletionSFTTrainer
            trainer = trainer_class(
                model=model,
                args=_args(SFTConfig, out, bf16, steps, optim),
                train_dataset=build_sft_dataset(examples),
                processing_class=tokenizer,
            )
        else:
            rows = build_preference_dataset(examples, num_negatives=3, strategy="random", seed=0, dataset=dataset)
            if case.startswith("reference"):
                config = _args(SDPOConfig, out, bf16, steps, optim, precompute_ref_log_probs=True)
                start = time.perf_counter()
                precompute_reference(model, tokenizer, rows, config)
                elapsed = time.perf_counter() - start
                result.update(per_row_s=elapsed / len(rows), rows=len(rows))
                trainer = None
            elif case.startswith("dpo-trl"):
                pairs = rows.map(lambda row: {"rejected": row["rejected"][0]})
                config = _args(DPOConfig, out, bf16, steps, optim, beta=1.0, loss_type=["sigmoid"])
                trainer = DPOTrainer(
                    model, ref_model=reference_copy(model), args=config, train_dataset=pairs,
                    processing_class=tokenizer,
                )  # fmt: skip
            else:
                k = 1 if case.startswith("dpo") else 3
                precomputed = "-pre-" in case
                config = _args(
                    SDPOConfig,
                    out,
                    bf16,
                    steps,
                    optim,
                    beta=1.0,
                    num_negatives=k,
                    precompute_ref_log_probs=precomputed,
                )
                if precomputed:  # as the runner: computed once (not timed here), then read by the trainer
                    rows = precompute_reference(model, tokenizer, rows, config)
                ref = None if precomputed else reference_copy(model)
                trainer = SDPOTrainer(
                    model, ref_model=ref, args=config, train_dataset=rows, processing_class=tokenizer
                )
        if trainer is not None:
            timer = _step_timer()
            trainer.add_callback(timer)
            before = current_rss()
            trainer.train()
            timed = timer.durations[args.warmup :]
            result.update(per_row_s=statistics.median(timed) / BATCH, step_s=[round(d, 2) for d in timer.durations])
    result["peak_memory_mib"] = max(0, peak_rss() - before) / 2**20
    return result


def run_case(args, case: str) -> dict | None:
    command = [sys.executable, __file__, "--worker", "--case", case, "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--eval-rows", str(args.eval_rows)]
    command += ["--fused-adamw"] if args.fused_adamw else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(f"{case}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[len("RESULT ") :])


def table(results: dict[str, dict]) -> str:
    lines = [
        "| stage | path | precision | s per row | vs the stage's first line | peak memory MiB |",
        "|---|---|---|---|---|---|",
    ]
    first: dict[str, float] = {}
    for case, stage, path, precision in CASES:
        if case not in results:
            continue
        r = results[case]
        if r is None:
            lines.append(f"| {stage} | {path} | {precision} | failed | - | - |")
            continue
        first.setdefault(stage, r["per_row_s"])
        ratio = first[stage] / r["per_row_s"]
        lines.append(
            f"| {stage} | {path} | {precision} | {r['per_row_s']:.2f} | {ratio:.2f}x | {r['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def targets(results: dict[str, dict], preference_steps: int = 16, preference_rows: int = 64) -> dict[str, float]:
    """The speed-up targets: per-row ratios, and the `cpu` preset's preference stage (16 steps of 4 rows a method)."""
    r = {case: v["per_row_s"] for case, v in results.items() if v}
    out = {
        "sdpo_k3_row": r["sdpo-ref-fp32"] / r["sdpo-pre-bf16"],
        "dpo_row_vs_trl_fp32": r["dpo-trl-fp32"] / r["dpo-pre-bf16"],
        "sft_row": r["sft-trl-fp32"] / r["sft-head-bf16"],
        "ranking_row": r["rank-fp32"] / r["rank-bf16"],
        "generation_row": r["gen-fp32"] / r["gen-bf16"],
    }
    rows = preference_steps * BATCH
    before = rows * (r["sft-trl-fp32"] + r["dpo-trl-fp32"] + r["sdpo-ref-fp32"])
    # now: sft-continued, dpo and sdpo at the new defaults, plus the reference pass over the rows once
    now = rows * (r["sft-head-bf16"] + r["dpo-pre-bf16"] + r["sdpo-pre-bf16"]) + preference_rows * r["reference-bf16"]
    out["preference_stage"] = before / now
    out["preference_stage_before_s"], out["preference_stage_now_s"] = before, now
    return {k: round(v, 2) for k, v in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps, 8 eval rows")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--cases", nargs="+", default=[c[0] for c in CASES])
    parser.add_argument(
        "--fused-adamw", action=argparse.BooleanOptionalAction, default=True,
        help="train the 'now' cases with fused AdamW, as the runner does (the 'before' cases always use the default)",
    )  # fmt: skip
    parser.add_argument("--merge", help="results JSON of an earlier run: its cases not run now are kept")
    parser.add_argument("--output", help="results JSON (default: benchmarks/results/training-<cpu>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    if args.quick:
        args.steps, args.eval_rows = 2, 8

    from trl_sdpo.rec.machine import describe_machine, machine_info, package_versions

    results = {}
    for case in args.cases:
        start = time.perf_counter()
        results[case] = run_case(args, case)
        print(f"{case}: {results[case] and round(results[case]['per_row_s'], 3)} s/row "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    if args.merge:
        results = {**json.loads(Path(args.merge).read_text())["results"], **results}
        results = {case: results.get(case) for case, *_ in CASES if case in results}
    info = machine_info()
    report = {
        "machine": info,
        "machine_line": describe_machine(info),
        "versions": package_versions(),
        "settings": {
            "batch": BATCH,
            "steps": args.steps,
            "warmup": args.warmup,
            "eval_rows": args.eval_rows,
            "fused_adamw_now": args.fused_adamw,
            "merged_from": args.merge,
            "cases_run_now": args.cases,
        },  # fmt: skip
        "results": results,
        "targets": targets(results) if all(results.get(c[0]) for c in CASES) else None,
    }
    name = "".join(ch if ch.isalnum() else "-" for ch in info["cpu_model"]).strip("-").lower()
    path = Path(args.output) if args.output else HERE / "results" / f"training-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{report['machine_line']}\n\n{table(results)}\n\ntargets: {report['targets']}\nwritten to {path}")


if __name__ == "__main__":
    main()
