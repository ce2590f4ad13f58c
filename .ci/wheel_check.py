"""The built wheel, installed outside the repository, works: CI's wheel leg (`.ci/run`).

    python .ci/wheel_check.py compare TREE_WHEEL SDIST_WHEEL  # the two wheels hold the same files, byte for byte
    python .ci/wheel_check.py smoke                          # in the wheel's environment, from a folder outside

`compare` checks that the wheel built from the sdist equals the one built from the source tree (file names and
contents; the `RECORD` is compared as the set of its lines). `smoke` imports `trl_sdpo` (it must come from the
environment, not from a checkout), checks `__version__` against the installed metadata, trains two steps of
`SDPOTrainer` on a tiny model and tokenizer built in-process (nothing is downloaded), runs `trl-sdpo --help` and
`trl-sdpo experiment --help`, and trains through `trl-sdpo sdpo` as a user would: a local model folder and a JSONL
of rows with `rejected` lists, once with flags and once with `--config`, each output folder holding the model and a
README.md card naming trl-sdpo; a bad flag (`--beta 0`) ends in one error line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def _contents(path: str) -> dict[str, str]:
    with zipfile.ZipFile(path) as wheel:
        files = {}
        for name in wheel.namelist():
            data = wheel.read(name)
            if name.endswith(".dist-info/RECORD"):
                files[name] = "\n".join(sorted(data.decode().splitlines()))
            else:
                files[name] = hashlib.sha256(data).hexdigest()
        return files


def compare(tree_wheel: str, sdist_wheel: str) -> int:
    tree, sdist = _contents(tree_wheel), _contents(sdist_wheel)
    problems = [f"only in the wheel built from the tree: {name}" for name in sorted(tree.keys() - sdist.keys())]
    problems += [f"only in the wheel built from the sdist: {name}" for name in sorted(sdist.keys() - tree.keys())]
    problems += [f"differs: {name}" for name in sorted(tree.keys() & sdist.keys()) if tree[name] != sdist[name]]
    for problem in problems:
        print(f"wheel check failed: {problem}", file=sys.stderr)
    if not problems:
        print(f"the wheel built from the sdist equals the one built from the tree ({len(tree)} files)")
    return 1 if problems else 0


def _tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["Which movie next? Answer: Heat, Fargo, Babe, Casino, Sabrina, Jumanji"] * 8, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


def smoke() -> int:
    from importlib import metadata

    import trl_sdpo

    location = Path(trl_sdpo.__file__).resolve()
    print(f"trl_sdpo {trl_sdpo.__version__} from {location}")
    assert "site-packages" in location.parts, f"trl_sdpo was not imported from an installed wheel: {location}"
    installed = metadata.version("trl-sdpo")
    assert trl_sdpo.__version__ == installed, f"__version__ {trl_sdpo.__version__} != installed metadata {installed}"

    import torch
    from datasets import Dataset

    from trl_sdpo import SDPOConfig, SDPOTrainer

    torch.manual_seed(0)
    model, tokenizer = _tiny_model_and_tokenizer()
    rows = [
        {"prompt": "Which movie next? Answer:", "chosen": " Heat", "rejected": [" Fargo", " Babe"]},
        {"prompt": "Which movie next? Answer:", "chosen": " Casino", "rejected": [" Sabrina"]},
    ]
    with tempfile.TemporaryDirectory() as out:
        args = SDPOConfig(
            out, max_steps=2, per_device_train_batch_size=2, logging_steps=1, report_to=[], save_strategy="no"
        )
        # The reference is explicit: DPOTrainer would load one from the model's `name_or_path`, which is empty here
        reference = copy.deepcopy(model)
        before = {name: param.detach().clone() for name, param in model.named_parameters()}
        dataset = Dataset.from_list(rows)
        trainer = SDPOTrainer(model, reference, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(losses) == 2, trainer.state.log_history
    assert all(torch.isfinite(torch.tensor(losses))), losses
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[name], after[name].detach()) for name in before), "no parameter changed"
    print(f"SDPOTrainer trained 2 steps: losses {losses}")

    for argv in (["trl-sdpo", "--help"], ["trl-sdpo", "experiment", "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (argv, result.stdout, result.stderr)
        print(f"{' '.join(argv)}: ok ({len(result.stdout.splitlines())} lines)")

    _smoke_sdpo_command(rows)
    return 0


def _smoke_sdpo_command(rows: list[dict]) -> None:
    """`trl-sdpo sdpo` on a local model folder and a JSONL, with flags and with `--config`, from a scratch folder."""
    model, tokenizer = _tiny_model_and_tokenizer()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model.save_pretrained(scratch / "model")
        tokenizer.save_pretrained(scratch / "model")
        (scratch / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        common = {"max_steps": 1, "per_device_train_batch_size": 2, "save_strategy": "no", "report_to": "none"}
        common |= {"activation_checkpointing": False, "beta": 1.0}
        flags = ["--model_name_or_path", "model", "--dataset_name", "prefs.jsonl", "--output_dir", "out-flags"]
        for name, value in common.items():
            flags += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
        # JSON is YAML: the recipe needs no YAML writer
        recipe = {"model_name_or_path": "model", "dataset_name": "prefs.jsonl", "output_dir": "out-config", **common}
        (scratch / "recipe.yaml").write_text(json.dumps(recipe))
        for argv, out in (
            (["trl-sdpo", "sdpo", *flags], "out-flags"),
            (["trl-sdpo", "sdpo", "--config", "recipe.yaml"], "out-config"),
        ):
            result = subprocess.run(argv, capture_output=True, text=True, cwd=scratch)
            assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
            saved = {p.name for p in (scratch / out).iterdir()}
            assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= saved, saved
            card = (scratch / out / "README.md").read_text()
            assert "trl-sdpo" in card and "| beta | 1 |" in card, card
            print(f"{' '.join(argv)}: ok (saved {', '.join(sorted(saved))})")
        result = subprocess.run(
            ["trl-sdpo", "sdpo", *flags, "--beta", "0"], capture_output=True, text=True, cwd=scratch
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("trl-sdpo sdpo: error:")]
        assert result.returncode == 1 and len(errors) == 1 and "`beta`" in errors[0], result.stderr[-3000:]
        print(f"trl-sdpo sdpo --beta 0: one error line: {errors[0]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["compare"] and len(argv) == 3:
        return compare(argv[1], argv[2])
    if argv == ["smoke"]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return smoke()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
