"""Prompt templates and the SFT / S-DPO dataset builders."""

import random
from collections import Counter

import pytest

from trl_sdpo.data import validate_dataset
from trl_sdpo.rec import (
    TEMPLATES,
    RecDataset,
    RecRow,
    build_examples,
    build_preference_dataset,
    build_prompt,
    build_sft_dataset,
    format_completion,
)

HISTORY = ["Heat", "Alien", "Fargo"]
CANDIDATES = ["Brazil", "Jaws", "Babe {0}", "Clerks"]


def toy_dataset(num_items=60, rows=40) -> RecDataset:
    rng = random.Random(0)
    items = {i: f"Title {i}" for i in range(num_items)}
    data = []
    for split in ("train", "valid"):
        for index in range(rows):
            history = tuple(rng.sample(range(num_items), 4))
            target = rng.choice([i for i in range(num_items) if i not in history])
            data.append(RecRow(f"u{index}", history, target, split, index))
    return RecDataset("movielens", items, data)


@pytest.fixture(scope="module")
def dataset():
    return toy_dataset()


# --- prompts ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_every_template_lists_history_then_candidates_in_order_and_ends_with_answer(template):
    prompt = build_prompt(HISTORY, CANDIDATES, template=template, kind="movie")
    assert prompt.endswith("\nAnswer:")
    positions = [prompt.index(t) for t in HISTORY + CANDIDATES]
    assert positions == sorted(positions)
    assert "movie" in prompt and "{" not in prompt.replace("Babe {0}", "")


def test_conversational_prompt_is_one_user_message_without_the_answer_line():
    standard = build_prompt(HISTORY, CANDIDATES)
    messages = build_prompt(HISTORY, CANDIDATES, conversational=True)
    assert messages == [{"role": "user", "content": standard.removesuffix("\nAnswer:")}]


def test_paraphrase_needs_an_rng_and_uses_several_templates():
    with pytest.raises(ValueError, match="needs `rng`"):
        build_prompt(HISTORY, CANDIDATES, template=None)
    rng = random.Random(0)
    prompts = {build_prompt(HISTORY, CANDIDATES, template=None, rng=rng) for _ in range(50)}
    assert len(prompts) == len(TEMPLATES)
    with pytest.raises(ValueError, match="must be in"):
        build_prompt(HISTORY, CANDIDATES, template=len(TEMPLATES))


def test_completion_is_the_title_after_a_space_or_an_assistant_message():
    assert format_completion("Jaws") == " Jaws"
    assert format_completion("Jaws", conversational=True) == [{"role": "assistant", "content": "Jaws"}]


# --- examples ----------------------------------------------------------------------------------------------------------


def test_examples_show_the_row_and_its_candidates(dataset):
    examples = build_examples(dataset, "valid", num_candidates=8)
    assert len(examples) == 40
    for example in examples:
        row = example.row
        assert example.target == dataset.items[row.target]
        assert example.candidates == [dataset.items[i] for i in example.candidate_ids]
        assert example.candidates[example.target_position] == example.target
        assert all(f"- {t}\n" in example.prompt for t in example.candidates)
        assert example.prompt.index(dataset.items[row.history[0]]) < example.prompt.index("Candidates:")
        assert "watched these movies" in example.prompt  # the dataset name picks the item kind


def test_max_rows_is_a_seeded_subset_in_source_order(dataset):
    subset = [e.row.index for e in build_examples(dataset, "valid", num_candidates=8, max_rows=10, seed=1)]
    assert len(subset) == 10 and subset == sorted(subset)
    assert subset == [e.row.index for e in build_examples(dataset, "valid", num_candidates=8, max_rows=10, seed=1)]
    assert subset != list(range(10))


def test_paraphrased_examples_are_reproducible(dataset):
    first = [e.prompt for e in build_examples(dataset, "valid", num_candidates=8, paraphrase=True)]
    assert first == [e.prompt for e in build_examples(dataset, "valid", num_candidates=8, paraphrase=True)]
    assert len({p.split("\n")[0][:20] for p in first}) > 2


# --- SFT ---------------------------------------------------------------------------------------------------------------


def test_sft_dataset_has_prompt_and_target_completion(dataset):
    examples = build_examples(dataset, "train", num_candidates=8, max_rows=5)
    sft = build_sft_dataset(examples)
    assert sft.column_names == ["prompt", "completion"]
    assert sft["prompt"] == [e.prompt for e in examples]
    assert sft["completion"] == [" " + e.target for e in examples]


def test_conversational_sft_dataset_uses_messages(dataset):
    examples = build_examples(dataset, "train", num_candidates=8, max_rows=5, conversational=True)
    row = build_sft_dataset(examples)[0]
    assert row["prompt"] == [{"role": "user", "content": examples[0].prompt[0]["content"]}]
    assert row["completion"] == [{"role": "assistant", "content": examples[0].target}]


# --- preference datasets -----------------------------------------------------------------------------------------------


def check_negatives(preference, examples, k):
    for row, example in zip(preference, examples):
        assert row["chosen"] == " " + example.target
        titles = [r.removeprefix(" ") for r in row["rejected"]]
        assert len(titles) == len(set(titles)) == k
        assert example.target not in titles
        assert set(titles) <= set(example.candidates)
    assert validate_dataset(preference, num_negatives=k) == "standard"


def test_random_negatives_come_from_the_row_candidates_and_are_seeded(dataset):
    examples = build_examples(dataset, "train", num_candidates=10)
    preference = build_preference_dataset(examples, num_negatives=3, seed=5)
    check_negatives(preference, examples, 3)
    assert preference["rejected"] == build_preference_dataset(examples, num_negatives=3, seed=5)["rejected"]
    assert preference["rejected"] != build_preference_dataset(examples, num_negatives=3, seed=6)["rejected"]
    # fixed per row: the same row gets the same negatives inside a different selection of rows
    assert build_preference_dataset(examples[3:], num_negatives=3, seed=5)["rejected"] == preference["rejected"][3:]


def test_random_negatives_cover_every_wrong_candidate_evenly(dataset):
    examples = build_examples(dataset, "train", num_candidates=4)
    chosen_slots = Counter()
    for seed in range(150):
        (row,) = build_preference_dataset(examples[:1], num_negatives=1, seed=seed)["rejected"]
        chosen_slots[row[0]] += 1
    assert len(chosen_slots) == 3 and min(chosen_slots.values()) > 25


def test_popular_negatives_are_the_most_frequent_train_targets(dataset):
    examples = build_examples(dataset, "valid", num_candidates=10)
    preference = build_preference_dataset(examples, num_negatives=2, strategy="popular", dataset=dataset)
    check_negatives(preference, examples, 2)
    frequency = Counter(r.target for r in dataset.rows if r.split == "train")
    ids = {t: i for i, t in dataset.items.items()}
    for row, example in zip(preference, examples):
        wrong = [i for i in example.candidate_ids if i != example.row.target]
        top = sorted((frequency[i] for i in wrong), reverse=True)[:2]  # frequencies: equal counts may swap items
        assert sorted((frequency[ids[t.strip()]] for t in row["rejected"]), reverse=True) == top


def test_model_negatives_are_the_wrong_candidates_the_model_scores_highest(dataset, monkeypatch):
    def fake_scores(model, tokenizer, prompts, candidates, batch_size=8, **kwargs):
        assert model == "model" and tokenizer == "tokenizer" and len(prompts) == len(candidates)
        return [[float(int(t.split()[1])) for t in titles] for titles in candidates]  # "Title 57" scores 57

    monkeypatch.setattr("trl_sdpo.rec.ranking.score_candidates", fake_scores)
    examples = build_examples(dataset, "valid", num_candidates=10)
    preference = build_preference_dataset(examples, 3, strategy="model", model="model", tokenizer="tokenizer")
    check_negatives(preference, examples, 3)
    for row, example in zip(preference, examples):
        wrong = sorted((i for i in example.candidate_ids if i != example.row.target), reverse=True)[:3]
        assert row["rejected"] == [f" Title {i}" for i in wrong]


def test_conversational_preference_rows_pass_the_core_validator(dataset):
    examples = build_examples(dataset, "train", num_candidates=6, conversational=True, max_rows=5)
    preference = build_preference_dataset(examples, num_negatives=2)
    assert validate_dataset(preference, num_negatives=2) == "conversational"
    assert preference[0]["chosen"] == [{"role": "assistant", "content": examples[0].target}]


def test_duplicate_titles_never_become_a_rejected_equal_to_chosen():
    # items 0 and 1 share a title; the target is 0 and item 1 is always a candidate (the only other choices)
    items = {0: "Same", 1: "Same", 2: "Other", 3: "Third"}
    row = RecRow("", (), 0, "train", 0)
    dataset = RecDataset("d", items, [row])
    examples = build_examples(dataset, "train", num_candidates=4)
    preference = build_preference_dataset(examples, num_negatives=2)
    assert sorted(preference[0]["rejected"]) == [" Other", " Third"]
    with pytest.raises(ValueError, match=r"Example 0 \(train row 0\): only 2 candidates .* num_negatives=3"):
        build_preference_dataset(examples, num_negatives=3)


def test_strategy_requirements_are_explained(dataset):
    examples = build_examples(dataset, "train", num_candidates=6, max_rows=2)
    with pytest.raises(ValueError, match="needs `dataset`"):
        build_preference_dataset(examples, strategy="popular")
    with pytest.raises(ValueError, match="needs `model` and `tokenizer`"):
        build_preference_dataset(examples, strategy="model")
    with pytest.raises(ValueError, match="Unknown negative strategy"):
        build_preference_dataset(examples, strategy="hard")
