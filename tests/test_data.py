"""Input validation, column merging, tokenization and collation of multi-negative rows."""

import copy
import logging

import pytest
import torch
from datasets import Dataset
from tiny import make_model, make_tokenizer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from trl_sdpo import DataCollatorForMultiNegativePreference, SDPOConfig, SDPOTrainer, merge_rejected_columns

GOOD = {"prompt": "Pick one. Answer:", "chosen": " Heat", "rejected": [" Fargo", " Babe"]}
MSG = [{"role": "user", "content": "Pick one."}]


def build(rows, tmp_path, **config):
    model = make_model("llama")
    args = SDPOConfig(str(tmp_path), report_to=[], bf16=False, gradient_checkpointing=False, **config)
    return SDPOTrainer(
        model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=make_tokenizer(),
    )


# Bad rows that a datasets.Dataset can hold (Arrow refuses to mix types within a column before we see them).
TRAINER_CASES = {
    "a pair dataset (rejected a string)": (
        [{**GOOD, "rejected": " Fargo"}] * 2,
        r"Row 0: field `rejected` must be a list",
    ),
    "empty list": ([GOOD, {**GOOD, "rejected": []}], r"Row 1: field `rejected` is an empty list"),
    "missing element": ([GOOD, {**GOOD, "rejected": [" Fargo", None]}], r"Row 1: `rejected\[1\]` must be a string"),
    "identical to chosen": (
        [GOOD, GOOD, {**GOOD, "rejected": [" Fargo", " Heat"]}],
        r"Row 2: `rejected\[1\]` is identical to `chosen`",
    ),
    "no prompt column": ([{k: v for k, v in GOOD.items() if k != "prompt"}], r"missing field `prompt`"),
}


@pytest.mark.parametrize("case", list(TRAINER_CASES))
def test_bad_rows_raise_when_the_trainer_is_built(tmp_path, case):
    rows, message = TRAINER_CASES[case]
    with pytest.raises(ValueError, match=message):
        build(rows, tmp_path)


@pytest.mark.parametrize(
    "row, message",
    [
        ({**GOOD, "rejected": " Fargo"}, r"Row 7: field `rejected` must be a list"),
        ({**GOOD, "rejected": []}, r"Row 7: field `rejected` is an empty list"),
        ({**GOOD, "rejected": [" Fargo", 3]}, r"Row 7: `rejected\[1\]` must be a string"),
        ({**GOOD, "rejected": [" Fargo", " Heat"]}, r"Row 7: `rejected\[1\]` is identical to `chosen`"),
        ({**GOOD, "prompt": MSG}, r"Row 7: `prompt` is list but `chosen` is str"),
        (
            {"prompt": MSG, "chosen": [{"role": "assistant", "content": "a"}], "rejected": ["b"]},
            r"Row 7: `rejected\[0\]` must be a non-empty list of messages with `role` and `content`",
        ),
        ({"prompt": "x", "chosen": "y"}, r"Row 7: missing field `rejected`"),
    ],
)
def test_validate_row_cases(row, message):
    from trl_sdpo.data import validate_row

    with pytest.raises(ValueError, match=message):
        validate_row(row, 7, None, None)


def test_mixed_standard_and_conversational_rows_raise(tmp_path):
    conversational = {
        "prompt": MSG,
        "chosen": [{"role": "assistant", "content": "Heat"}],
        "rejected": [[{"role": "assistant", "content": "Fargo"}]],
    }
    from trl_sdpo.data import validate_dataset

    with pytest.raises(ValueError, match=r"Row 1: this row is in conversational format but earlier rows are standard"):
        validate_dataset([GOOD, conversational])


def test_fewer_negatives_than_num_negatives_raises(tmp_path):
    rows = [GOOD, {**GOOD, "rejected": [" Fargo"]}]
    with pytest.raises(ValueError, match=r"Row 1: field `rejected` has 1 completions but `num_negatives=2`"):
        build(rows, tmp_path, num_negatives=2)


def test_rows_dropped_for_length_are_counted(tmp_path, caplog):
    long_prompt = {**GOOD, "prompt": "Pick one of these many many films please. " * 10 + "Answer:"}
    with caplog.at_level(logging.WARNING, logger="trl_sdpo.trainer"):
        trainer = build([GOOD, long_prompt, GOOD], tmp_path, max_length=30)
    assert len(trainer.train_dataset) == 2
    assert "dropped 1 of 3 rows" in caplog.text


def test_rows_truncated_for_length_are_counted(tmp_path, caplog):
    long_answer = {**GOOD, "chosen": " Heat" * 30}
    with caplog.at_level(logging.WARNING, logger="trl_sdpo.trainer"):
        trainer = build([GOOD, long_answer], tmp_path, max_length=40)
    assert len(trainer.train_dataset) == 2
    assert "1 of 2 rows exceed max_length=40 and will be truncated" in caplog.text


def test_merge_rejected_columns_in_numeric_order():
    dataset = Dataset.from_list(
        [
            {"prompt": "p", "chosen": "c", **{f"rejected{i}": f"r{i}" for i in (1, 2, 10)}},
            {"prompt": "q", "chosen": "d", "rejected1": "s1", "rejected2": "", "rejected10": "s10"},
        ]
    )
    merged = merge_rejected_columns(dataset)
    assert merged.column_names == ["prompt", "chosen", "rejected"]
    assert merged["rejected"] == [["r1", "r2", "r10"], ["s1", "s10"]]


@pytest.mark.parametrize("max_length", [None, 8, 12])
def test_collator_k1_keep_start_matches_trl_pair_collator(max_length):
    examples = [
        {"prompt_ids": [1, 2, 3, 4, 5], "chosen_ids": [6, 7, 8], "rejected_ids": [[9, 10, 11, 12, 13]]},
        {"prompt_ids": [14, 15], "chosen_ids": [16], "rejected_ids": [[17, 18]]},
    ]
    ours = DataCollatorForMultiNegativePreference(pad_token_id=0, max_length=max_length)(examples)
    trl = DataCollatorForPreference(pad_token_id=0, max_length=max_length)(
        [{**e, "rejected_ids": e["rejected_ids"][0]} for e in examples]
    )
    # Rebuild TRL's (2B, T) rows from our prompt + completion tensors and compare token by token.
    rebuilt_ids, rebuilt_completion = [], []
    for j in range(2):  # chosen rows first, then rejected rows, as TRL stacks them
        for i in range(2):
            p = ours["prompt_input_ids"][i][ours["prompt_attention_mask"][i].bool()].tolist()
            c = ours["completion_input_ids"][i, j][ours["completion_attention_mask"][i, j].bool()].tolist()
            rebuilt_ids.append(p + c)
            rebuilt_completion.append([0] * len(p) + [1] * len(c))
    for r, (ids, comp) in enumerate(zip(rebuilt_ids, rebuilt_completion)):
        n = int(trl["attention_mask"][r].sum())
        assert trl["input_ids"][r, :n].tolist() == ids
        assert trl["completion_mask"][r, :n].tolist() == comp


def test_collator_pads_variable_k_and_takes_first_negatives():
    examples = [
        {
            "prompt_ids": [1, 2],
            "chosen_ids": [3],
            "rejected_ids": [[4], [5, 6], [7]],
            "ref_chosen_logps": -1.0,
            "ref_rejected_logps": [-2.0, -3.0, -4.0],
        },
        {
            "prompt_ids": [8],
            "chosen_ids": [9, 10],
            "rejected_ids": [[11]],
            "ref_chosen_logps": -5.0,
            "ref_rejected_logps": [-6.0, 0.0, 0.0],
        },
    ]
    out = DataCollatorForMultiNegativePreference(pad_token_id=0, num_negatives=2)(examples)
    assert out["completion_input_ids"].shape == (2, 3, 2)
    assert out["rejected_mask"].tolist() == [[True, True], [True, False]]
    assert out["completion_input_ids"][0, 2].tolist() == [5, 6]
    assert out["completion_attention_mask"][1, 2].tolist() == [0, 0]
    torch.testing.assert_close(out["ref_rejected_logps"], torch.tensor([[-2.0, -3.0], [-6.0, 0.0]]))


def test_keep_end_keeps_a_shared_prompt():
    out = DataCollatorForMultiNegativePreference(pad_token_id=0, max_length=5, truncation_mode="keep_end")(
        [{"prompt_ids": [1, 2, 3, 4], "chosen_ids": [5, 6], "rejected_ids": [[7, 8, 9]]}]
    )
    assert out["prompt_input_ids"].tolist() == [[3, 4]]  # cut by what the longest completion needs
    assert out["completion_input_ids"][0].tolist() == [[5, 6, 0], [7, 8, 9]]
