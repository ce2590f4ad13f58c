"""Is bf16 autocast safe for this project's numbers? Two measurements on the embedded SmolLM2-135M-Instruct.

    python benchmarks/bf16_check.py      # ~5 min on 2 AVX-512 cores (first run adds the ~40 s GGUF conversion)

1. Log-probs: the summed log-probs of the 1+k completions of real MovieLens S-DPO rows (k=3, chat-form prompts, 20
   candidates), `completion_logps` in fp32 and under `torch.autocast("cpu", bfloat16)` (the weights stay fp32, the
   log-softmax runs in fp32 in either case), on the same batch. The difference is stated against bf16's rounding at
   that magnitude: bf16 keeps 8 significant bits (eps = 2**-7 = 0.0078), so one rounding of a value of size |x| is up
   to |x| * 2**-8; a sum of a title's ~10 token log-probs, each from a chain of bf16 matrix products, can differ by
   a few of those. Also: how many rows keep the order of their 4 completions, and the largest change in a
   difference of two completions (what the loss and the ranking evaluation see).
2. Training: S-DPO (k=3, beta 1, lr 1e-4 so that a dozen steps move the model, batch 4, reference precomputed)
   from the same start on the same rows in the same order, in fp32 and in bf16; loss, reward margins and reward
   accuracy at every step, side by side (JSON and PNG).

Writes `benchmarks/results/bf16-check.json` and `benchmarks/results/bf16-check.png`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def logprob_comparison(model, tokenizer, rows) -> dict:
    import torch

    from trl_sdpo import completion_logps
    from trl_sdpo.collator import pad_multi_completion
    from trl_sdpo.data import tokenize_completions

    prompts, completions = [], []
    for row in rows:
        prompt_ids, ids = tokenize_completions(tokenizer, row["prompt"], [row["chosen"], *row["rejected"]])
        prompts.append(prompt_ids)
        completions.append(ids)
    batch = pad_multi_completion(prompts, completions, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        fp32 = completion_logps(model, **batch).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = completion_logps(model, **batch).double()
    difference = (bf16 - fp32).abs()
    magnitude = fp32.abs()
    pair = lambda x: x[:, :1] - x[:, 1:]  # noqa: E731  chosen minus each negative
    return {
        "rows": len(rows),
        "completions": int(fp32.numel()),
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "completion_tokens_mean": sum(len(c) for cs in completions for c in cs) / fp32.numel(),
        "logp_fp32_mean": fp32.mean().item(),
        "max_abs_difference": difference.max().item(),
        "mean_abs_difference": difference.mean().item(),
        "max_relative_difference": (difference / magnitude).max().item(),
        "bf16_half_ulp_at_largest_magnitude": magnitude.max().item() * 2**-8,
        "max_abs_difference_of_chosen_minus_negative": (pair(bf16) - pair(fp32)).abs().max().item(),
        "rows_with_the_same_order_of_completions": int(
            (bf16.argsort(dim=1) == fp32.argsort(dim=1)).all(dim=1).sum().item()
        ),
        "fp32": fp32.tolist(),
        "bf16": bf16.tolist(),
    }


def training_curves(model_dir: str, tokenizer, rows, steps: int, out: Path) -> dict:
    import torch

    from trl_sdpo import SDPOConfig
    from trl_sdpo.rec.machine import precision_kwargs
    from trl_sdpo.rec.models import load_model_and_tokenizer
    from trl_sdpo.rec.training import precompute_reference, train_sdpo

    curves = {}
    for precision in ("fp32", "bf16"):
        model, _ = load_model_and_tokenizer(model_dir, dtype=torch.float32)  # the same start for both
        args = SDPOConfig(
            output_dir=str(out / precision),
            per_device_train_batch_size=4,
            max_steps=steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            beta=1.0,
            num_negatives=3,
            max_length=512,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            gradient_checkpointing=False,
            precompute_ref_log_probs=True,
            disable_tqdm=True,
            seed=0,
            data_seed=0,
            **precision_kwargs(precision == "bf16"),
        )
        start = time.perf_counter()
        prepared = precompute_reference(model, tokenizer, rows, args)
        _, metrics = train_sdpo(model, tokenizer, prepared, args)
        log = [h for h in metrics["log_history"] if "rewards/margins" in h]
        curves[precision] = {
            "seconds": round(time.perf_counter() - start, 1),
            **{key: [h[key] for h in log] for key in ("loss", "rewards/margins", "rewards/accuracies")},
        }
    return curves


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("loss", "rewards/margins", "rewards/accuracies")
    fig, axes = plt.subplots(1, len(keys), figsize=(12, 3.2))
    for ax, key in zip(axes, keys):
        for precision, style in (("fp32", "-o"), ("bf16", "--x")):
            values = curves[precision][key]
            ax.plot(range(1, len(values) + 1), values, style, label=precision, markersize=4)
        ax.set_title(key)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.suptitle("S-DPO k=3 on SmolLM2-135M-Instruct, same start and rows: fp32 vs bf16 autocast")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="S-DPO rows in the log-prob comparison")
    parser.add_argument("--steps", type=int, default=12, help="training steps of each precision")
    args = parser.parse_args()

    from trl_sdpo.rec.builders import build_examples, build_preference_dataset
    from trl_sdpo.rec.loaders import load_dataset_by_name
    from trl_sdpo.rec.machine import describe_machine, machine_info, package_versions
    from trl_sdpo.rec.models import default_model_dir, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer()  # converts and caches the GGUF model on the first run
    dataset = load_dataset_by_name("movielens")
    examples = build_examples(dataset, "train", num_candidates=20, conversational=True, max_rows=4 * args.steps)
    rows = build_preference_dataset(examples, num_negatives=3, strategy="random", seed=0, dataset=dataset)
    report = {"log_probs": logprob_comparison(model, tokenizer, rows.select(range(args.rows)))}
    del model
    report["training"] = training_curves(str(default_model_dir()), tokenizer, rows, args.steps, Path("/tmp/bf16"))
    info = machine_info()
    report.update(machine=info, machine_line=describe_machine(info), versions=package_versions())
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bf16-check.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report["training"], HERE / "results" / "bf16-check.png")
    summary = {k: v for k, v in report["log_probs"].items() if k not in ("fp32", "bf16")}
    print(json.dumps(summary, indent=1))
    print({p: {k: v[-1] if isinstance(v, list) else v for k, v in c.items()} for p, c in report["training"].items()})
    print(report["machine_line"])


if __name__ == "__main__":
    main()
