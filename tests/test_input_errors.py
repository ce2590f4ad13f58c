"""Inputs that cannot be meant are refused before training, with an error naming the row, the field or the argument.

Each would otherwise go wrong late or silently: conversational rows with wrong roles would train, a dataset that
`max_length` empties would fail inside torch's sampler, and a model built from a config would fail with a Hub error
about an empty repo id.
"""

from __future__ import annotations

import copy

import pytest
from datasets import Dataset
from tiny import make_model, make_tokenizer

from trl_sdpo import SDPOConfig, SDPOTrainer
from trl_sdpo.data import validate_row


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def chat_row(**changes) -> dict:
    row = {"prompt": [user("pick one")], "chosen": [assistant("yes")], "rejected": [[assistant("no")]]}
    return {**row, **changes}


def config(tmp_path, **overrides) -> SDPOConfig:
    settings = dict(report_to=[], save_strategy="no", per_device_train_batch_size=2, max_steps=1)
    return SDPOConfig(str(tmp_path), **{**settings, **overrides})


# ------------------------------------------------------------------------------------------------ roles
def test_a_well_formed_conversational_row_passes():
    assert validate_row(chat_row(), 0, None, None) == "conversational"


def test_a_completion_with_a_tool_call_and_its_result_passes():
    call = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}
    chosen = [call, {"role": "tool", "content": "42"}, assistant("It is 42.")]
    assert validate_row(chat_row(chosen=chosen), 0, None, None) == "conversational"


def test_a_prompt_ending_on_an_assistant_turn_is_refused_naming_the_row():
    row = chat_row(prompt=[user("pick one"), assistant("yes")])
    with pytest.raises(ValueError, match=r"^Row 4: field `prompt` ends on an assistant turn"):
        validate_row(row, 4, None, None)


def test_a_chosen_completion_with_role_user_is_refused():
    with pytest.raises(ValueError, match=r"^Row 2: `chosen\[0\]` has role 'user'; a completion is the assistant's"):
        validate_row(chat_row(chosen=[user("yes")]), 2, None, None)


def test_a_rejected_completion_with_role_user_is_refused_naming_its_index():
    row = chat_row(rejected=[[assistant("no")], [user("maybe")]])
    with pytest.raises(ValueError, match=r"^Row 0: `rejected\[1\]\[0\]` has role 'user'"):
        validate_row(row, 0, None, None)


def test_a_user_turn_after_the_first_turn_of_a_completion_is_refused():
    row = chat_row(chosen=[assistant("yes"), user("and?")])
    with pytest.raises(ValueError, match=r"^Row 0: `chosen\[1\]` has role 'user'; a completion holds assistant turns"):
        validate_row(row, 0, None, None)


def test_a_misspelt_role_is_refused_naming_the_message_and_the_known_roles():
    row = chat_row(chosen=[{"role": "asistant", "content": "yes"}])
    with pytest.raises(ValueError, match=r"^Row 0: `chosen\[0\]` has role 'asistant', which is not one of system, "):
        validate_row(row, 0, None, None)


def test_a_misspelt_role_in_the_prompt_is_refused():
    row = chat_row(prompt=[{"role": "usr", "content": "pick one"}])
    with pytest.raises(ValueError, match=r"^Row 0: `prompt\[0\]` has role 'usr'"):
        validate_row(row, 0, None, None)


def test_the_trainer_refuses_a_bad_role_before_training_naming_the_row(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    rows = [chat_row(), chat_row(prompt=[user("pick one"), assistant("yes")])]
    with pytest.raises(ValueError, match=r"^Row 1: field `prompt` ends on an assistant turn"):
        SDPOTrainer(
            model,
            copy.deepcopy(model),
            args=config(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


# ----------------------------------------------------------------------------------------------- max_length
def test_a_dataset_that_max_length_empties_is_refused_with_the_count_and_prompt_lengths(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    prompts = ["hello world, good or bad? Answer:", "a b c d e f: pick one. Answer:"]
    rows = [{"prompt": p, "chosen": " good", "rejected": [" bad"]} for p in prompts]
    lengths = sorted(len(tokenizer(p)["input_ids"]) for p in prompts)
    max_length = lengths[0]  # every prompt fills max_length: keep_start leaves no completion token anywhere
    with pytest.raises(ValueError) as error:
        SDPOTrainer(
            model,
            copy.deepcopy(model),
            args=config(tmp_path, max_length=max_length),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    message = str(error.value)
    assert message.startswith(
        f"The train dataset: every one of its 2 rows has a prompt of at least max_length={max_length}"
    )
    assert f"its prompts are {lengths[0]} to {lengths[1]} tokens long" in message


def test_a_dataset_that_max_length_only_shortens_still_trains(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    short, long = " e", " hello world good bad yes no red green"
    rows = [{"prompt": "a b c d e f: pick one. Answer:", "chosen": short, "rejected": [long]}] * 2
    prompt_length = len(tokenizer(rows[0]["prompt"])["input_ids"])
    trainer = SDPOTrainer(
        model,
        copy.deepcopy(model),
        args=config(tmp_path, max_length=prompt_length + 2),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == 2


# ------------------------------------------------------------------------------------ a model without a name
def test_a_model_built_from_a_config_without_ref_model_is_refused_saying_what_to_pass(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    assert model.config._name_or_path == ""  # built from a config: nothing DPOTrainer could load a reference from
    rows = [{"prompt": "pick one. Answer:", "chosen": " e", "rejected": [" a"]}]
    with pytest.raises(ValueError, match=r"has no name or path .* Pass `ref_model=` .* or train a LoRA adapter"):
        SDPOTrainer(model, args=config(tmp_path), train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def test_a_model_built_from_a_config_without_processing_class_is_refused_saying_what_to_pass(tmp_path):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    rows = [{"prompt": "pick one. Answer:", "chosen": " e", "rejected": [" a"]}]
    with pytest.raises(ValueError, match=r"has no name or path .* Pass `processing_class=`"):
        SDPOTrainer(model, copy.deepcopy(model), args=config(tmp_path), train_dataset=Dataset.from_list(rows))


def test_a_model_built_from_a_config_with_a_lora_adapter_needs_no_ref_model(tmp_path):
    from peft import LoraConfig

    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    rows = [{"prompt": "pick one. Answer:", "chosen": " e", "rejected": [" a"]}]
    trainer = SDPOTrainer(
        model,
        args=config(tmp_path),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.ref_model is None  # the reference is the model with the adapter disabled
