"""Model cards say what trained the model: trl-sdpo and its version, the ranking loss, k, beta, the paper.

The card is read back from the file each path writes: `save_model`, a checkpoint, `push_to_hub` (against a fake Hub
API that copies the uploaded folder, so nothing leaves the machine) and the `sft` / `train` commands' own save.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from tiny import make_model, make_tokenizer

from trl_sdpo import SDPOConfig, SDPOTrainer

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ROWS = [
    {"prompt": "hello world, good or bad? Answer:", "chosen": " good", "rejected": [" bad", " moon", " fish"]},
    {"prompt": "a b c d e f: pick one. Answer:", "chosen": " e", "rejected": [" a", " z"]},
]
PAPER_CITATION = "@inproceedings{chen2024softmax,"


class FakeHubApi:
    """`create_repo` and `upload_folder` of `huggingface_hub.HfApi`, writing to a local folder instead of the Hub."""

    def __init__(self, root: Path):
        self.root, self.uploads = root, []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"someone/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.uploads.append({"repo_id": repo_id, **kwargs})
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHubApi:
    import huggingface_hub
    import transformers.trainer

    api = FakeHubApi(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)  # Trainer.init_hf_repo / push_to_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *args, **kwargs: api)  # the sft / train commands
    return api


def make_trainer(output_dir: Path, **overrides) -> SDPOTrainer:
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    settings = dict(report_to=[], save_strategy="no", per_device_train_batch_size=2, max_steps=1, beta=0.5)
    args = SDPOConfig(str(output_dir), **{**settings, **overrides})
    dataset = Dataset.from_list(ROWS)
    return SDPOTrainer(model, copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tokenizer)


def assert_names_trl_sdpo(card_path: Path, beta: str = "0.5", k: str = "each row's own (up to 3)") -> ModelCard:
    card = ModelCard.load(card_path)
    assert f"Trained with S-DPO by trl-sdpo {VERSION}" in card.text
    assert f"- trl-sdpo: {VERSION}" in card.text
    assert "| Ranking loss | `softmax` (S-DPO" in card.text
    assert f"| Negatives per prompt (k) | {k} |" in card.text
    assert f"| beta | {beta} |" in card.text
    assert PAPER_CITATION in card.text
    return card


# -------------------------------------------------------------------------------------------- the trainer
def test_save_model_writes_a_card_naming_trl_sdpo_its_version_and_the_settings(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    trainer.save_model()
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert_names_trl_sdpo(tmp_path / "run" / "README.md")


def test_save_model_to_another_folder_writes_the_card_there(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    trainer.save_model(str(tmp_path / "final"))
    assert_names_trl_sdpo(tmp_path / "final" / "README.md")


def test_the_card_states_num_negatives_when_it_is_set(tmp_path):
    trainer = make_trainer(tmp_path / "run", num_negatives=2, beta=1.0)
    trainer.save_model()
    assert_names_trl_sdpo(tmp_path / "run" / "README.md", beta="1", k="2")


def test_the_card_names_the_ranking_loss_that_was_used(tmp_path):
    trainer = make_trainer(tmp_path / "run", ranking_loss="pairwise")
    trainer.save_model()
    assert (
        "| Ranking loss | `pairwise` (DPO's loss on each (chosen, rejected) pair"
        in (tmp_path / "run/README.md").read_text()
    )


def test_the_card_tags_are_trl_softmax_dpo_and_trl_sdpo_not_the_bare_sdpo_tag(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    trainer.save_model()
    tags = ModelCard.load(tmp_path / "run" / "README.md").data.tags
    assert {"trl", "softmax-dpo", "trl-sdpo"} <= set(tags)
    assert "sdpo" not in tags  # TRL's unrelated self-distillation trainer's tag


def test_a_checkpoint_writes_the_card_naming_trl_sdpo(tmp_path):
    trainer = make_trainer(tmp_path / "run", save_strategy="steps", save_steps=1)
    trainer.train()
    assert (tmp_path / "run" / "checkpoint-1").is_dir()
    assert_names_trl_sdpo(tmp_path / "run" / "README.md")


def test_push_to_hub_uploads_the_model_with_a_card_naming_trl_sdpo(tmp_path, fake_hub):
    trainer = make_trainer(tmp_path / "run", push_to_hub=True, hub_model_id="me/tiny-sdpo")
    trainer.push_to_hub()
    pushed = tmp_path / "hub" / "me" / "tiny-sdpo"
    assert [upload["repo_id"] for upload in fake_hub.uploads] == ["me/tiny-sdpo"]
    assert (pushed / "model.safetensors").is_file()
    card = assert_names_trl_sdpo(pushed / "README.md")
    assert 'pipeline("text-generation", model="me/tiny-sdpo"' in card.text


# ------------------------------------------------------------------------------ the sft / train commands' save
def test_the_train_commands_save_writes_and_pushes_an_s_dpo_card(tmp_path, fake_hub):
    from trl_sdpo.commands.common import card_and_push
    from trl_sdpo.model_card import sdpo_settings

    folder = tmp_path / "sdpo-model"
    tokenizer = make_tokenizer()
    make_model("llama", tokenizer=tokenizer).save_pretrained(folder)
    args = SDPOConfig(
        str(folder), num_negatives=3, beta=1.0, push_to_hub=True, hub_model_id="me/rec-sdpo", report_to=[]
    )
    repo_id = card_and_push(str(folder), args, "S-DPO", sdpo_settings(args), base_model=None, sdpo=True)
    assert repo_id == "me/rec-sdpo"
    assert_names_trl_sdpo(folder / "README.md", beta="1", k="3")
    pushed = tmp_path / "hub" / "me" / "rec-sdpo"
    assert (pushed / "model.safetensors").is_file()
    assert_names_trl_sdpo(pushed / "README.md", beta="1", k="3")


def test_the_sft_commands_save_writes_an_sft_card_without_pushing_by_default(tmp_path, fake_hub):
    from trl import SFTConfig

    from trl_sdpo.commands.common import card_and_push

    folder = tmp_path / "sft-model"
    folder.mkdir()
    args = SFTConfig(str(folder), report_to=[], bf16=False)
    assert card_and_push(str(folder), args, "SFT", {"Data": "4 rows"}, base_model="org/base", sdpo=False) is None
    card = ModelCard.load(folder / "README.md")
    assert f"Trained with SFT by trl-sdpo {VERSION}" in card.text and "| Data | 4 rows |" in card.text
    assert {"sft", "trl-sdpo"} <= set(card.data.tags) and card.data.base_model == "org/base"
    assert fake_hub.uploads == []


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel")
def test_trl_sdpo_train_with_push_to_hub_pushes_the_final_model_and_its_card(tmp_path, fake_hub):
    from trl_sdpo.cli import main

    start, out = tmp_path / "start", tmp_path / "sdpo"
    tokenizer = make_tokenizer()
    make_model("llama", tokenizer=tokenizer).save_pretrained(start)
    tokenizer.save_pretrained(start)
    argv = ["train", "--dataset", "movielens", "--num_candidates", "5", "--max_rows", "2", "--model", str(start)]
    argv += ["--max_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none"]
    argv += ["--max_length", "2048", "--activation_checkpointing", "false", "--num_negatives", "2"]
    assert main([*argv, "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/rec-sdpo"]) == 0
    assert [upload["repo_id"] for upload in fake_hub.uploads] == ["me/rec-sdpo"]
    pushed = tmp_path / "hub" / "me" / "rec-sdpo"
    assert (pushed / "model.safetensors").is_file()
    card = assert_names_trl_sdpo(pushed / "README.md", beta="1", k="2")
    assert "| Data | 2 movielens train rows (trl_sdpo.rec) |" in card.text
