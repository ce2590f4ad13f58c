"""The `trl-sdpo` command line, run in-process through `trl_sdpo.cli.main` on tiny models and small slices."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from tiny import make_model, make_tokenizer
from tolerances import assert_fp32_close

from trl_sdpo.cli import COMMANDS, main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LASTFM = SHARED / "data" / "lastfm"
needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel (not installed)"
)
needs_lastfm = pytest.mark.skipif(not LASTFM.is_dir(), reason=f"LastFM data not found at {LASTFM}")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama and its tokenizer saved like any Hugging Face checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tokenizer()
    make_model("llama", tokenizer=tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# Short prompts (5 candidates, few rows) keep each model run to seconds.
SMALL = ["--dataset", "movielens", "--num_candidates", "5", "--seed", "0"]
TINY_TRAINING = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "2",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
]
TINY_TRAINING += ["--max_length", "2048", "--activation_checkpointing", "false", "--report_to", "none"]


# ---------------------------------------------------------------------------------------------------------- help
def test_top_level_help_lists_every_command_with_an_example(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("data", "sft", "train", "eval", "demo"):
        assert f"\n  {name} " in out
    assert "trl-sdpo demo" in out and "examples:" in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_help_shows_its_flags_with_help_text(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: trl-sdpo {command}")
    expected = {
        "sdpo": ["--dataset_name", "--model_name_or_path", "--num_negatives", "--use_peft", "--load_in_4bit"],
        "data": ["--export", "--leak_check", "--sampler", "--report"],
        "sft": ["--model", "--use_peft", "--learning_rate", "--completion_only_loss", "--report"],
        "train": ["--model", "--num_negatives", "--beta", "--negative_strategy", "--report"],
        "eval": ["--model", "--split", "--max_new_tokens", "--report"],
        "demo": ["--train_rows", "--eval_rows", "--sft_steps", "--eval_split", "--report", "--study_dir"],
        "experiment": ["--config", "--preset", "--split", "--methods", "--seeds", "--dry_run"],
        "results": ["study_dirs", "--output", "--n_boot"],
    }[command]
    for flag in expected:
        assert flag in out, flag


def test_unknown_command_fails_with_the_list_of_commands(capsys):
    assert main(["fit"]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err


def test_train_defaults_are_the_papers_beta_and_negatives():
    from trl_sdpo.commands.training import make_train_parser

    *_, config = make_train_parser().parse_args_and_config([])
    assert (config.beta, config.num_negatives) == (1.0, 3)


# ---------------------------------------------------------------------------------------------------------- data
@needs_recbole
def test_data_export_writes_reference_format_json(tmp_path):
    out = tmp_path / "ml-valid.json"
    assert main(["data", "--dataset", "movielens", "--split", "valid", "--max_rows", "7", "--export", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 7
    for row in rows:
        assert set(row) == {"historyList", "itemList", "trueSelection"}
        history = row["historyList"].split("::")
        assert 3 <= len(history) <= 10 and all(history)
        assert len(row["itemList"]) == 20 and row["trueSelection"] in row["itemList"]
    # The toolkit's own validator of the reference format accepts it.
    from trl_sdpo.rec.loaders import load_sdpo_json

    assert load_sdpo_json(out) == rows


@needs_lastfm
def test_data_export_sdpo_compat_reproduces_the_reference_file_byte_for_byte(tmp_path):
    out = tmp_path / "lastfm-val.json"
    argv = ["data", "--dataset", "lastfm", "--data-dir", str(LASTFM), "--split", "valid", "--sampler", "sdpo-compat"]
    assert main([*argv, "--export", str(out)]) == 0
    assert out.read_bytes() == (LASTFM / "sdpo_format" / "lastfm-val.json").read_bytes()


@needs_lastfm
def test_data_leak_check_report_flags_the_compat_lists(tmp_path, capsys):
    report = tmp_path / "leak.json"
    argv = ["data", "--dataset", "lastfm", "--data_dir", str(LASTFM), "--sampler", "sdpo-compat", "--leak-check"]
    assert main([*argv, "--report", str(report)]) == 0
    result = json.loads(report.read_text())["leak_check"]
    assert result["split"] == "valid" and result["sampler"] == "sdpo-compat"
    assert result["hr@1"] > 0.9  # the reference lists give the target away (README of the data)
    assert "LEAK" in capsys.readouterr().out


@needs_recbole
def test_data_leak_check_report_on_the_default_sampler_is_near_chance(tmp_path):
    report = tmp_path / "leak.json"
    assert main(["data", "--dataset", "movielens", "--split", "test", "--leak-check", "--report", str(report)]) == 0
    result = json.loads(report.read_text())["leak_check"]
    assert result["split"] == "test" and abs(result["hr@1"] - 1 / 20) < 0.02


@needs_recbole
def test_data_summary_prints_counts_and_a_sample_prompt(capsys, tmp_path):
    report = tmp_path / "summary.json"
    assert main(["data", *SMALL, "--split", "valid", "--max_rows", "3", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "sample prompt" in out and "Answer:" in out
    assert json.loads(report.read_text())["num_rows"] == 3


def test_missing_data_dir_is_an_error_naming_what_to_pass(capsys):
    assert main(["data", "--dataset", "lastfm"]) == 1
    assert "--data-dir" in capsys.readouterr().err


def test_missing_model_path_is_an_error_saying_what_to_pass(capsys, tmp_path):
    argv = ["eval", "--model", str(tmp_path / "no-such-model"), "--max_rows", "2", "--no_baselines"]
    assert main(argv) == 1
    assert "no-such-model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- sft, train, eval
@needs_recbole
def test_sft_train_eval_chain_on_a_tiny_model(tiny_model_dir, tmp_path):
    sft_dir, sdpo_dir = tmp_path / "sft", tmp_path / "sdpo"
    sft_report, train_report, eval_report = (tmp_path / f"{n}.json" for n in ("sft", "train", "eval"))

    argv = ["sft", *SMALL, "--max_rows", "4", "--model", tiny_model_dir, *TINY_TRAINING, "--use_peft"]
    assert main([*argv, "--output_dir", str(sft_dir), "--report", str(sft_report)]) == 0
    assert (sft_dir / "config.json").is_file()  # LoRA merged: a plain checkpoint
    sft = json.loads(sft_report.read_text())
    assert sft["num_rows"] == 4 and sft["train"]["train_loss"] > 0

    argv = ["train", *SMALL, "--max_rows", "4", "--model", str(sft_dir), *TINY_TRAINING, "--num_negatives", "2"]
    assert main([*argv, "--output_dir", str(sdpo_dir), "--report", str(train_report)]) == 0
    train = json.loads(train_report.read_text())
    assert train["settings"]["SDPOArguments"]["num_negatives"] == 2
    assert train["settings"]["SDPOArguments"]["beta"] == 1.0
    # At the first step the policy is the reference: every reward is 0 and the loss is log(1 + k).
    first = next(entry for entry in train["log_history"] if "loss" in entry)
    # (0 up to the rounding of the summed log-probs: the reference pass may batch the rows differently)
    assert_fp32_close(first["rewards/chosen"], 0.0, scale=abs(first["logps/chosen"]))
    assert_fp32_close(first["loss"], math.log(3), scale=abs(first["logps/chosen"]) + abs(first["logps/rejected"]))

    argv = ["eval", *SMALL, "--max_rows", "3", "--model", str(sdpo_dir), "--max_new_tokens", "4"]
    assert main([*argv, "--report", str(eval_report)]) == 0
    result = json.loads(eval_report.read_text())
    assert result["split"] == "valid" and result["num_rows"] == 3
    assert result["generation"]["n"] == 3 and 0 <= result["generation"]["valid_ratio"] <= 1
    assert result["ranking"]["n"] == 3 and result["ranking"]["hr@1"] <= result["ranking"]["hr@5"]
    assert set(result["baselines"]) == {"random", "popular"}


@needs_recbole
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_demo_runs_end_to_end_on_a_tiny_model(lora, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--model",
        tiny_model_dir,
        "--output_dir",
        str(out),
        "--num_candidates",
        "5",
        "--max_length",
        "2048",
    ]
    argv += ["--train_rows", "4", "--eval_rows", "3", "--sft_steps", "1", "--sdpo_steps", "2", "--batch_size", "2"]
    argv += ["--study_dir", str(tmp_path / "no-study")]
    assert main(argv + ["--sdpo_learning_rate", "1e-2"] + (["--use_peft"] if lora else [])) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == ["base", "sft", "s-dpo"]
    assert report["num_eval_rows"] == 3
    for metrics in report["stages"].values():
        assert {"generation", "ranking"} <= set(metrics)
    # S-DPO starts from the SFT model and uses it as the reference: at the first step every reward is 0 and the
    # loss is log(1 + k) with k = 3 negatives.
    first, second = [entry for entry in report["training"]["s-dpo"]["log_history"] if "loss" in entry]
    assert_fp32_close(first["loss"], math.log(4), scale=abs(first["logps/chosen"]) + abs(first["logps/rejected"]))
    # ... and the reference stays the SFT model while the policy moves: rewards are no longer all 0.
    assert second["rewards/margins"] != 0.0
    printed = capsys.readouterr().out
    assert "ValidRatio" in printed and "popular (baseline)" in printed
    assert report["machine"]["cpu_model"] in printed and "torch threads" in printed  # the machine beside the time
    # The row-by-row line, recounted here from the per-row ranks of the report
    before, after = (report["stages"][s]["ranking"]["ranks"] for s in ("sft", "s-dpo"))
    better, worse = sum(b < a for a, b in zip(before, after)), sum(b > a for a, b in zip(before, after))
    assert f"row by row on the same 3 rows: the target ranks higher in {better}, lower in {worse}," in printed
    # No committed study to show: one line says where the demo looked, and the demo's own job is done all the same
    assert f"not shown: no test runs in {tmp_path / 'no-study'} (--study_dir)" in printed
    if importlib.util.find_spec("matplotlib"):
        assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_prints_the_committed_experiment_table_only_when_test_runs_exist(tmp_path):
    from test_rec_study import write_run

    from trl_sdpo.commands.demo import reproduction_summary

    assert reproduction_summary(tmp_path / "absent") is None
    write_run(tmp_path, "valid", "sdpo", 0, [1, 2, 3, 4])
    assert reproduction_summary(tmp_path) is None  # selection runs only: no final table yet
    for seed, ranks in enumerate([[1, 2, 3, 4], [1, 1, 3, 4], [2, 2, 2, 2]]):
        write_run(tmp_path, "test", "sdpo", seed, ranks, preset="cpu")
    write_run(tmp_path, "test", "dpo", 0, [1, 2, 3, 4], preset="cpu")  # a study half done: no table yet
    assert "not finished: 2 of its test runs are still missing (e.g. dpo seed 1)" in reproduction_summary(tmp_path)
    for seed in (1, 2):
        write_run(tmp_path, "test", "dpo", seed, [1, 2, 3, 4], preset="cpu")
    summary = reproduction_summary(tmp_path)
    # No training log, no held-out rows, 4 rows: nothing can be decided
    assert "Claim check (S-DPO > DPO > SFT-continued" in summary
    assert "Not tested: no part of the claim could be decided by these runs." in summary
    # Preference stages whose training margins stayed tiny: the verdict says the claim was not tested, not refuted
    small = [{"step": step, "rewards/margins": 0.05} for step in (1, 2, 3, 4)]
    for seed in (0, 1, 2):
        write_run(tmp_path, "test", "dpo", seed, [1, 2, 3, 4], preset="cpu", log_history=small)
        write_run(
            tmp_path,
            "test",
            "sdpo",
            seed,
            [[1, 2, 3, 4], [1, 1, 3, 4], [2, 2, 2, 2]][seed],
            preset="cpu",
            log_history=small,
        )
    summary = reproduction_summary(tmp_path)
    assert "preset 'cpu', test split, 4 rows" in summary and "seeds [0, 1, 2]" in summary
    # ranking HR@1 per seed 1/4, 2/4, 0/4: mean 0.25, sample std 0.25
    assert "| sdpo | 3 |" in summary and "0.2500 ± 0.2500" in summary
    assert "Not tested: the preference stage did not move the model" in summary and "does not hold" not in summary
    assert "; run on Test CPU 9000, AVX-512" in summary and "in fp32" not in summary  # runs that predate `precision`


def test_the_committed_experiment_table_names_the_precision_of_its_lm_runs(tmp_path):
    from test_rec_study import MACHINE, write_run

    from trl_sdpo.commands.demo import reproduction_summary

    avx2 = {**MACHINE, "cpu_model": "Slow CPU", "avx512": False, "cpu_flags": ["avx2"], "load_average": [9.0, 9, 9]}
    for seed in (0, 1):
        write_run(tmp_path, "test", "sdpo", seed, [1, 2, 3, 4], preset="study", precision="fp32", machine=avx2)
        write_run(tmp_path, "test", "popular", seed, [2, 2, 2, 2], preset="study")  # baselines: no precision
    summary = reproduction_summary(tmp_path)
    # one machine line for both LM runs (their load is not part of it); the baselines' machine is not named
    assert "; LM runs on Slow CPU, AVX2, no AVX-512, 2 CPUs (2 torch threads), no GPU, in fp32):" in summary


def test_the_committed_experiment_table_needs_a_shared_model_once(tmp_path):
    """The study evaluates the base model and the one SFT model every seed starts from (`sft_seed`) once, under seed
    0: their absence at seed 1 does not make the study unfinished; a preference method's absent seed does."""
    from test_rec_study import write_run

    from trl_sdpo.commands.demo import reproduction_summary
    from trl_sdpo.rec.study import missing_runs

    write_run(tmp_path, "test", "base", 0, [3, 3, 3, 3], preset="study", seed_independent=True)
    write_run(tmp_path, "test", "sft", 0, [2, 2, 2, 2], preset="study")
    for seed in (0, 1):
        # as `run_settings` records it: `sft_seed` only where it differs from the run's seed
        config = {"model": "tiny", **({"sft_seed": 0} if seed else {})}
        write_run(tmp_path, "test", "sdpo", seed, [1, 2, 3, 4], preset="study", config=config)
    write_run(tmp_path, "test", "dpo", 0, [1, 2, 3, 4], preset="study")
    assert "not finished: 1 of its test runs are still missing (e.g. dpo seed 1)" in reproduction_summary(tmp_path)
    write_run(tmp_path, "test", "dpo", 1, [1, 2, 3, 4], preset="study", config={"model": "tiny", "sft_seed": 0})
    summary = reproduction_summary(tmp_path)
    assert "| sft | 1 |" in summary and "| sdpo | 2 |" in summary and "seeds [0, 1]" in summary
    # Each seed trained its own SFT model (no `sft_seed` recorded): SFT's seed 1 is missing
    for method in ("sdpo", "dpo"):
        write_run(tmp_path, "test", method, 1, [1, 2, 3, 4], preset="study")
    runs = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("test/*/*.json"))]
    assert missing_runs(runs) == [("sft", 1)]


def test_the_committed_experiment_table_reads_a_replicated_studys_seed_0_from_the_study_it_extends(tmp_path):
    """A replicated study's folder lacks the seed-0 runs that the study it extends already holds (the same
    training): the demo's table reads them from there, says so, and names the replicated study's own preset."""
    from test_rec_study import write_run

    from trl_sdpo.commands.demo import reproduction_summary

    study, extended = tmp_path / "replicated", tmp_path / "fp32"
    same = {"model": "tiny", "lr": 1e-4}  # the settings borrowing checks: the same training at every seed
    for seed in (1, 2):
        for method in ("sdpo", "dpo"):
            write_run(study, "test", method, seed, [1, 2, 3, 4], preset="study-replicated", config=same)
    for method in ("sdpo", "dpo"):
        write_run(extended, "test", method, 0, [2, 2, 2, 2], preset="study", config=same)
    assert "seeds [1, 2]" in reproduction_summary(study)  # alone: the seeds it has, and the table says which
    assert reproduction_summary(extended, study) is not None  # the other way round: its own runs, nothing borrowed
    summary = reproduction_summary(study, extended)
    assert "preset 'study-replicated'" in summary and "seeds [0, 1, 2]" in summary
    assert f"; 2 seed-0 runs read from {extended}):" in summary
    # ranking HR@1 per seed 0/4 (seed 0, borrowed), 1/4, 1/4
    assert "| sdpo | 3 |" in summary and "0.1667 ± 0.1443" in summary
    assert reproduction_summary(tmp_path / "absent", extended) is None


def test_demo_refuses_an_absent_seed0_folder_before_its_job(tmp_path, capsys):
    """The table is printed after the job: a mistyped --study_seed0_dir is reported before anything runs."""
    out = tmp_path / "out"
    argv = ["demo", "--output_dir", str(out), "--study_seed0_dir", str(tmp_path / "absent")]
    assert main(argv) == 1
    assert f"--study_seed0_dir {tmp_path / 'absent'} is not a folder." in capsys.readouterr().err
    assert not out.exists()


def test_demo_help_states_the_committed_studys_sizes():
    """The demo's help text says what the full experiment was (SFT rows, preference rows, test rows, seeds) in words;
    the committed run JSONs record it. A study re-run at other sizes must not leave the help text behind."""
    import re

    from trl_sdpo.commands.demo import DESCRIPTION, REPRODUCTION_DIR
    from trl_sdpo.rec.study import load_study
    from trl_sdpo.rec.study.config import PREFERENCE_KINDS

    study = Path(__file__).resolve().parents[1] / REPRODUCTION_DIR
    if not study.is_dir():
        pytest.skip(f"no committed study at {study} (studies/ is in a clone of the repository, not in the sdist)")
    runs = [run for run in load_study(study) if run["split"] == "test"]
    preference = [run for run in runs if run["kind"] in PREFERENCE_KINDS]
    stated = re.search(
        r"([\d,]+) SFT rows, ([\d,]+) preference rows, ([\d,]+) test rows, (\d+) seeds", " ".join(DESCRIPTION.split())
    )
    assert stated, "the demo's help text no longer states the study's sizes in the expected words"
    sft_rows, preference_rows, test_rows, seeds = (int(group.replace(",", "")) for group in stated.groups())
    assert {run["config"]["sft"]["start_rows"] for run in preference} == {sft_rows}
    assert {run["config"]["method"]["settings"]["train_rows"] for run in preference} == {preference_rows}
    assert {run["metrics"]["ranking"]["n"] for run in runs} == {test_rows}
    assert len({run["seed"] for run in preference}) == seeds
