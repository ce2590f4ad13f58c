"""Time one S-DPO training step for three ways of computing the 1+k completion log-probs.

    python benchmarks/bench_logprobs.py --quick      # P=300, C=12, k in {7, 15}
    python benchmarks/bench_logprobs.py              # P in {150, 300, 600}, k in {1, 3, 7, 15}

A step is the policy forward + backward and the reference forward (no optimizer step: it costs the same for every
method), with the loss `trl_sdpo.sdpo_loss` and gradient checkpointing on (DPOConfig's default). Methods:

- `a_full_logits`: 1+k rows of prompt+completion, `model(...).logits` then log-softmax and gather over every
  position (the S-DPO paper's code).
- `b_trl_fused`: the same rows through TRL's `add_fused_lm_head` (`model(..., labels=..., fused_lm_head=True)`).
- `c_shared_prefix`: `trl_sdpo.completion_logps(..., prefix_sharing=True)`: one row per prompt.

Each (method, P, k) runs in its own subprocess so that its peak memory is its own: on CUDA
`torch.cuda.max_memory_allocated` during the steps minus what was allocated before them; on CPU the process's peak
resident set size (`ru_maxrss`) minus the resident size before the first step (models, weights and the Python
runtime are excluded from both). `--quick` on CPU times 2 steps after a short warm-up and leaves out (b) at k=15;
on CUDA it runs all three methods at both k with the full protocol. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("a_full_logits", "b_trl_fused", "c_shared_prefix")
RESULTS = Path(__file__).resolve().parent / "results"


def smollm2_135m_config():
    from transformers import LlamaConfig

    # SmolLM2-135M's shape; the weights are random (the speed does not depend on them)
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def make_batch(prompt_len: int, completion_len: int, k: int, batch: int, vocab: int, seed: int = 0):
    import torch

    from trl_sdpo.collator import pad_multi_completion

    gen = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [ids(prompt_len) for _ in range(batch)]
    completions = [[ids(completion_len) for _ in range(1 + k)] for _ in range(batch)]
    return pad_multi_completion(prompts, completions, pad_token_id=0)


def rows_of(batch):
    """1+k right-padded prompt+completion rows per prompt, as the paper's code and TRL's collator lay them out."""
    import torch

    prompt, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    comp, comp_mask = batch["completion_input_ids"], batch["completion_attention_mask"]
    b, n, _ = comp.shape
    input_ids = torch.cat([prompt.unsqueeze(1).expand(-1, n, -1), comp], dim=2).flatten(0, 1)
    attention = torch.cat([prompt_mask.unsqueeze(1).expand(-1, n, -1), comp_mask], dim=2).flatten(0, 1)
    completion_mask = torch.cat([torch.zeros_like(prompt_mask).unsqueeze(1).expand(-1, n, -1), comp_mask], dim=2)
    labels = input_ids.masked_fill(completion_mask.flatten(0, 1) == 0, -100)
    return input_ids, attention, labels, (b, n)


def logps_full_logits(model, batch):
    import torch

    input_ids, attention, labels, shape = rows_of(batch)
    input_ids, attention, labels = (t.to(model.device) for t in (input_ids, attention, labels))
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits.float()
    labels = labels[:, 1:]
    mask = labels != -100
    per_token = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1).view(shape)


def logps_trl_fused(model, batch):
    input_ids, attention, labels, shape = rows_of(batch)
    input_ids, attention, labels = (t.to(model.device) for t in (input_ids, attention, labels))
    out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(-1).view(shape)


def logps_shared_prefix(model, batch):
    from trl_sdpo import completion_logps

    return completion_logps(model, **{k: v.to(model.device) for k, v in batch.items()}, prefix_sharing=True)


def worker(args) -> dict:
    import torch
    from transformers import LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from trl_sdpo import sdpo_loss

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = smollm2_135m_config()
    config.num_hidden_layers = args.layers or config.num_hidden_layers  # fewer layers: CI smoke runs only
    config._attn_implementation = "sdpa"
    policy = LlamaForCausalLM(config).to(device).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if args.gradient_checkpointing:  # DPOConfig's default, as in a real run
        policy.activation_checkpointing_enable({"use_reentrant": False})
    if args.method == "b_trl_fused":
        add_fused_lm_head(policy)
        add_fused_lm_head(reference)
    compute = {"a_full_logits": logps_full_logits, "b_trl_fused": logps_trl_fused}.get(
        args.method, logps_shared_prefix
    )
    batch = make_batch(args.prompt_len, args.completion_len, args.k, args.batch, config.vocab_size)
    # A CPU step's first run costs no more than the next ones (measured); a short warm-up prompt initializes the
    # kernels and thread pools at a fraction of a step's cost
    warmup_batch = make_batch(
        args.warmup_prompt_len or args.prompt_len, args.completion_len, args.k, args.batch, config.vocab_size
    )

    def step(batch):
        policy_logps = compute(policy, batch)
        with torch.no_grad():
            ref_logps = compute(reference, batch)
        losses, _, _ = sdpo_loss(policy_logps[:, 0], policy_logps[:, 1:], ref_logps[:, 0], ref_logps[:, 1:], 1.0)
        losses.mean().backward()
        policy.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    else:
        base_memory = current_rss()
    for _ in range(args.warmup):
        step(warmup_batch)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss()
    rows_tokens = args.batch * (1 + args.k) * (args.prompt_len + args.completion_len)
    shared_tokens = args.batch * (args.prompt_len + (1 + args.k) * args.completion_len)
    return {
        "method": args.method,
        "P": args.prompt_len,
        "C": args.completion_len,
        "k": args.k,
        "batch": args.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": args.gradient_checkpointing,
        "layers": config.num_hidden_layers,
        "warmup_prompt_len": args.warmup_prompt_len or args.prompt_len,
        "times_s": times,
        "median_s": statistics.median(times),
        "step_memory_mib": (peak - base_memory) / 2**20,
        "peak_memory_mib": peak / 2**20,
        "tokens": shared_tokens if args.method == "c_shared_prefix" else rows_tokens,
        "token_ratio_limit": rows_tokens / shared_tokens,
    }


def machine() -> str:
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return f"{model}, {os.cpu_count()} CPU cores"


def _cell(run: dict | None, fmt: str) -> str:
    return fmt.format(**run) if run else "-"


def table(results: list[dict]) -> str:
    """Markdown table: one line per (P, k); speed-ups are (a) or (b) time over (c) time."""
    runs = {(r["P"], r["k"], r["method"]): r for r in results}
    lines = [
        "| P | k | tokens rows / shared (limit) | (a) s | (b) s | (c) s | (c) vs (a) | (c) vs (b) "
        "| step memory MiB (a) / (b) / (c) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p, k in sorted({(r["P"], r["k"]) for r in results}):
        a, b, c = (runs.get((p, k, m)) for m in METHODS)
        any_run = a or b or c
        rows_tokens = any_run["batch"] * (1 + k) * (p + any_run["C"])
        shared_tokens = any_run["batch"] * (p + (1 + k) * any_run["C"])
        speedups = [f"{x['median_s'] / c['median_s']:.1f}x" if x and c else "-" for x in (a, b)]
        memory = " / ".join(_cell(x, "{step_memory_mib:.0f}") for x in (a, b, c))
        times = " | ".join(_cell(x, "{median_s:.1f}") for x in (a, b, c))
        lines.append(
            f"| {p} | {k} | {rows_tokens} / {shared_tokens} ({rows_tokens / shared_tokens:.1f}x) | {times} "
            f"| {speedups[0]} | {speedups[1]} | {memory} |"
        )
    return "\n".join(lines)


def run_worker(args, p: int, k: int, method: str) -> dict | None:
    command = [sys.executable, __file__, "--worker", "--method", method, "--prompt-len", str(p), "--k", str(k)]
    command += ["--completion-len", str(args.completion_len), "--batch", str(args.batch)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--warmup-prompt-len", str(args.warmup_prompt_len)] if args.warmup_prompt_len else []
    command += ["--threads", str(args.threads)] if args.threads else []
    command += [] if args.gradient_checkpointing else ["--no-gradient-checkpointing"]
    command += ["--cpu"] if args.cpu else []
    command += ["--layers", str(args.layers)] if args.layers else []
    proc = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:  # e.g. killed for memory: reported, the others still run
        print(f"P={p} k={k} {method}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="P=300, C=12, k in {7, 15}; on CPU without (b) at k=15, and 2 timed steps after a short warm-up",
    )
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[150, 300, 600])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 7, 15])
    parser.add_argument("--completion-len", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2, help="prompts per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--warmup-prompt-len", type=int, help="prompt length of the warm-up steps (default: P)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="keep all activations (DPOConfig turns gradient checkpointing on by default)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cpu", action="store_true", help="ignore CUDA even when present")
    parser.add_argument(
        "--layers", type=int, help="transformer layers (default: SmolLM2-135M's 30; fewer for smoke runs)"
    )
    parser.add_argument(
        "--output", type=Path, help="JSON file (default: benchmarks/results/<quick|full>-<device>.json)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if args.quick and device == "cpu":
        # The targets' configurations only, and 2 timed steps: (b) at k=15 alone takes about as long as the rest
        # together on 2 CPU cores, and a full 1 + 5 steps of (a) and (b) would take half an hour
        configs = [(300, 7, m) for m in METHODS] + [(300, 15, "a_full_logits"), (300, 15, "c_shared_prefix")]
        configs = [c for c in configs if c[2] in args.methods]
        args.steps, args.warmup_prompt_len = 2, args.warmup_prompt_len or 32
    elif args.quick:
        configs = [(300, k, m) for k in (7, 15) for m in args.methods]
    else:
        configs = [(p, k, m) for p in args.prompt_lens for k in args.ks for m in args.methods]
    output = args.output or RESULTS / f"{'quick' if args.quick else 'full'}-{device}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine() if device == "cpu" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "results": [],
    }
    for p, k, method in configs:
        result = run_worker(args, p, k, method)
        if result is not None:
            report["results"].append(result)
            print(
                f"P={p} k={k} {method}: median {result['median_s']:.2f} s over {len(result['times_s'])} steps, "
                f"step memory {result['step_memory_mib']:.0f} MiB",
                flush=True,
            )
        output.write_text(json.dumps(report, indent=2) + "\n")  # after each run, so a stopped run keeps its part
    print(f"\nMachine: {report['machine']}, torch {report['torch']}")
    print(table(report["results"]))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
