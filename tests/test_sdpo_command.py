"""`trl-sdpo sdpo`: S-DPO on the user's own preference file and model folder, run in-process through `cli.main`.

Training runs take a tiny model saved like any checkpoint and a JSONL written here; bad inputs must end in one
`trl-sdpo sdpo: error: ...` line that names the row, the field or the flag, with no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from test_model_card import VERSION, FakeHubApi
from tiny import make_model, make_tokenizer
from transformers import AutoModelForCausalLM

from trl_sdpo.cli import CommandError, main
from trl_sdpo.commands.args import PreferenceDataArguments
from trl_sdpo.commands.sdpo import load_preference_dataset

ROWS = [
    {"prompt": "hello world, good or bad? Answer:", "chosen": " good", "rejected": [" bad", " moon"]},
    {"prompt": "a b c d e f: pick one. Answer:", "chosen": " e", "rejected": [" a", " z", " 9"]},
]
TINY_TRAINING = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1"]
TINY_TRAINING += ["--save_strategy", "no", "--report_to", "none", "--activation_checkpointing", "false"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer, saved as a local model folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tokenizer()
    make_model("llama", tokenizer=tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def the_error_line(capsys) -> str:
    """The one `trl-sdpo sdpo: error:` line of stderr (progress bars may share stderr), after checking there is one."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("trl-sdpo sdpo: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0].removeprefix("trl-sdpo sdpo: error: ")


def card_text(folder: Path) -> str:
    return ModelCard.load(folder / "README.md").text


# -------------------------------------------------------------------------------------------------------- help
def test_help_lists_trls_script_flags_for_data_model_loading_and_quantization(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sdpo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trl-sdpo sdpo")
    for flag in ("--dataset_name", "--dataset_test_split", "--model_name_or_path", "--attn_implementation"):
        assert flag in out, flag
    for flag in ("--use_peft", "--lora_r", "--load_in_4bit", "--load_in_8bit", "--num_negatives", "--ranking_loss"):
        assert flag in out, flag


# ---------------------------------------------------------------------------------------------------- training
def test_trains_a_local_model_on_a_jsonl_and_saves_the_model_with_its_card(model_dir, tmp_path):
    data, out = write_jsonl(tmp_path / "prefs.jsonl", ROWS), tmp_path / "out"
    argv = ["sdpo", "--model_name_or_path", str(model_dir), "--dataset_name", str(data), *TINY_TRAINING]
    argv += ["--beta", "1.0", "--num_negatives", "2", "--learning_rate", "1e-3", "--output_dir", str(out)]
    assert main(argv) == 0
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(trained[name], value) for name, value in initial.items())
    assert (out / "tokenizer.json").is_file()
    text = card_text(out)
    assert f"Trained with S-DPO by trl-sdpo {VERSION}" in text
    assert "| beta | 1 |" in text and "| Negatives per prompt (k) | 2 |" in text


def test_trains_from_a_config_file_whose_values_flags_override(model_dir, tmp_path):
    data, out = write_jsonl(tmp_path / "prefs.jsonl", ROWS), tmp_path / "out"
    recipe = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "output_dir": str(out)}
    recipe |= {"beta": 2.0, "num_negatives": 1, "max_steps": 1, "per_device_train_batch_size": 2}
    recipe |= {"save_strategy": "no", "report_to": "none", "activation_checkpointing": False}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["sdpo", "--config", str(tmp_path / "recipe.yaml"), "--beta", "0.5"]) == 0
    assert (out / "model.safetensors").is_file()
    text = card_text(out)
    assert "| beta | 0.5 |" in text  # the flag
    assert "| Negatives per prompt (k) | 1 |" in text  # the file


def test_push_to_hub_uploads_the_final_model_and_its_card(model_dir, tmp_path, monkeypatch):
    import transformers.trainer

    api = FakeHubApi(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    data, out = write_jsonl(tmp_path / "prefs.jsonl", ROWS), tmp_path / "out"
    argv = ["sdpo", "--model_name_or_path", str(model_dir), "--dataset_name", str(data), *TINY_TRAINING]
    assert main([*argv, "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/tiny-sdpo"]) == 0
    pushed = tmp_path / "hub" / "me" / "tiny-sdpo"
    assert [upload["repo_id"] for upload in api.uploads] == ["me/tiny-sdpo"]  # once: not by save_model as well
    assert (pushed / "model.safetensors").is_file()
    assert f"Trained with S-DPO by trl-sdpo {VERSION}" in card_text(pushed)


# -------------------------------------------------------------------------------------------------------- data
def data_args(name, **changes) -> PreferenceDataArguments:
    return PreferenceDataArguments(dataset_name=str(name), **changes)


def test_a_jsonl_file_is_the_train_split_with_rejected_lists(tmp_path):
    dataset, _ = load_preference_dataset(data_args(write_jsonl(tmp_path / "p.jsonl", ROWS)))
    assert list(dataset) == ["train"] and dataset["train"]["rejected"] == [r["rejected"] for r in ROWS]


def test_a_csv_with_rejected1_to_k_columns_gets_rejected_lists_without_the_empty_ones(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected1,rejected2,rejected3\nQ1,a,b,c,d\nQ2,e,f,g,\n")
    dataset, _ = load_preference_dataset(data_args(path))
    assert dataset["train"]["rejected"] == [["b", "c", "d"], ["f", "g"]]
    assert "rejected1" not in dataset["train"].column_names


def test_a_folder_of_parquet_files_is_split_by_file_name(tmp_path):
    from datasets import Dataset

    (tmp_path / "data").mkdir()
    Dataset.from_list(ROWS).to_parquet(tmp_path / "data" / "train.parquet")
    Dataset.from_list(ROWS[:1]).to_parquet(tmp_path / "data" / "test.parquet")
    dataset, test_split = load_preference_dataset(data_args(tmp_path / "data"))
    assert (len(dataset["train"]), len(dataset["test"]), test_split) == (2, 1, "test")


def test_a_test_split_given_as_a_file_is_loaded_as_the_test_split(tmp_path):
    train, test = write_jsonl(tmp_path / "t.jsonl", ROWS), write_jsonl(tmp_path / "e.jsonl", ROWS[:1])
    dataset, test_split = load_preference_dataset(data_args(train, dataset_test_split=str(test)))
    assert test_split == "test" and dataset["test"]["chosen"] == [ROWS[0]["chosen"]]


def test_a_folder_mixing_file_types_is_refused_naming_them(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.csv").write_text("prompt,chosen,rejected1\nQ,a,b\n")
    with pytest.raises(CommandError, match=r"mixes file types \(csv, json\)"):
        load_preference_dataset(data_args(tmp_path))


def test_a_file_of_another_type_is_refused_naming_the_types_read(tmp_path):
    (tmp_path / "p.txt").write_text("prompt chosen rejected\n")
    with pytest.raises(CommandError, match=r"p.txt is not a .csv, .json, .jsonl, .parquet file"):
        load_preference_dataset(data_args(tmp_path / "p.txt"))


def test_a_hub_id_missing_from_the_local_cache_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match=r"--dataset_name 'nobody-here/no-such-dataset' is not a local file"):
        load_preference_dataset(data_args("nobody-here/no-such-dataset"))


# ------------------------------------------------------------------------------- bad inputs: one error line each
def run_with(model_dir, tmp_path, rows, *flags) -> int:
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    argv = ["sdpo", "--model_name_or_path", str(model_dir), "--dataset_name", str(data), *TINY_TRAINING]
    return main([*argv, "--output_dir", str(tmp_path / "out"), *flags])


def chat(prompt_roles=("user",), chosen_role="assistant") -> dict:
    prompt = [{"role": role, "content": "pick one"} for role in prompt_roles]
    reply = [{"role": "assistant", "content": "no"}]
    return {"prompt": prompt, "chosen": [{"role": chosen_role, "content": "yes"}], "rejected": [reply]}


def test_beta_zero_ends_in_one_error_line_naming_beta(model_dir, tmp_path, capsys):
    assert run_with(model_dir, tmp_path, ROWS, "--beta", "0") == 1
    assert the_error_line(capsys).startswith("`beta` must be positive, got 0.0")


def test_a_prompt_ending_on_an_assistant_turn_ends_in_one_error_line_naming_the_row(model_dir, tmp_path, capsys):
    rows = [chat(), chat(prompt_roles=("user", "assistant"))]
    assert run_with(model_dir, tmp_path, rows) == 1
    assert the_error_line(capsys).startswith("Row 1: field `prompt` ends on an assistant turn")


def test_a_chosen_user_turn_ends_in_one_error_line_naming_the_row(model_dir, tmp_path, capsys):
    assert run_with(model_dir, tmp_path, [chat(), chat(), chat(chosen_role="user")]) == 1
    assert the_error_line(capsys).startswith("Row 2: `chosen[0]` has role 'user'")


def test_a_misspelt_role_ends_in_one_error_line_naming_the_row(model_dir, tmp_path, capsys):
    assert run_with(model_dir, tmp_path, [chat(chosen_role="asistant")]) == 1
    assert the_error_line(capsys).startswith("Row 0: `chosen[0]` has role 'asistant', which is not one of")


def test_a_max_length_that_drops_every_row_ends_in_one_error_line(model_dir, tmp_path, capsys):
    assert run_with(model_dir, tmp_path, ROWS, "--max_length", "3") == 1
    assert the_error_line(capsys).startswith("The train dataset: every one of its 2 rows has a prompt of at least")


def test_a_missing_model_ends_in_one_error_line_naming_the_flag(tmp_path, capsys):
    data = write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    assert main(["sdpo", "--dataset_name", str(data), *TINY_TRAINING, "--output_dir", str(tmp_path / "o")]) == 1
    assert the_error_line(capsys).startswith("--model_name_or_path is required")


def test_a_missing_dataset_ends_in_one_error_line_naming_the_flag(model_dir, tmp_path, capsys):
    argv = ["sdpo", "--model_name_or_path", str(model_dir), *TINY_TRAINING, "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 1
    assert the_error_line(capsys).startswith("--dataset_name is required")


def test_eval_without_an_evaluation_split_ends_in_one_error_line(model_dir, tmp_path, capsys):
    assert run_with(model_dir, tmp_path, ROWS, "--eval_strategy", "steps", "--eval_steps", "1") == 1
    assert the_error_line(capsys).startswith("--eval_strategy steps needs an evaluation split")
