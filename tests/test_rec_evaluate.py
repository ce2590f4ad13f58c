"""Generation and ranking evaluation, metrics and baselines, against fakes whose answers are known and
independent computations."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from tiny import make_model, make_tokenizer
from tolerances import assert_fp32_close

from trl_sdpo.rec.baselines import popularity_baseline, random_baseline
from trl_sdpo.rec.builders import RecExample
from trl_sdpo.rec.dataset import RecDataset, RecRow
from trl_sdpo.rec.evaluate import evaluate_generation, generate_responses, judge_response, match_response
from trl_sdpo.rec.metrics import ranking_metrics, target_rank
from trl_sdpo.rec.ranking import evaluate_ranking, score_candidates


def example(prompt, candidates, target, index=0, candidate_ids=None, split="test"):
    ids = candidate_ids or list(range(len(candidates)))
    row = RecRow(user="u", history=(100, 101, 102), target=ids[candidates.index(target)], split=split, index=index)
    return RecExample(prompt, list(candidates), target, row, ids)


# ---------------------------------------------------------------------------------------------------- metrics


def test_target_rank_counts_ties_against_the_target():
    scores = [0.5, 0.9, 0.5, 0.1]
    assert target_rank(scores, 0) == 3  # 0.9 above, the tied 0.5 counted above too
    assert target_rank(scores, 1) == 1
    assert target_rank(scores, 3) == 4
    assert target_rank([2.0, 2.0, 2.0], 1) == 3


def test_ranking_metrics_on_hand_computed_ranks():
    metrics = ranking_metrics([1, 3, 6, 2])
    assert metrics["hr@1"] == 0.25
    assert metrics["hr@5"] == 0.75
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / 2 + 1 / math.log2(3)) / 4)  # log2(3+1) = 2
    assert metrics["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 6 + 1 / 2) / 4)
    assert metrics["n"] == 4


# ---------------------------------------------------------------------------------------------------- matchers

CANDIDATES = ["Heat", "The Heat", "Fargo", "Star Wars", "Babe"]


@pytest.mark.parametrize(
    "response, paper, strict",
    [
        ("Fargo", ["Fargo"], ["Fargo"]),
        ("I recommend Fargo.", ["Fargo"], ["Fargo"]),
        ("Fargo or Babe", ["Fargo", "Babe"], ["Fargo", "Babe"]),
        ("Nothing here", [], []),
        # A title inside another candidate's title: the paper rule sees both, strict keeps the longer one
        ("The Heat", ["Heat", "The Heat"], ["The Heat"]),
        # ... but a separate occurrence of the shorter one still counts
        ("The Heat, then Heat", ["Heat", "The Heat"], ["The Heat", "Heat"]),
        # Case and spacing: the paper rule is exact, strict normalizes
        ("fargo", [], ["Fargo"]),
        ("Star   Wars", [], ["Star Wars"]),
        # Inside a word: the paper rule matches, strict needs word boundaries
        ("Heathrow", ["Heat"], []),
        ("Babes", ["Babe"], []),
        # The same title twice is one title
        ("Fargo! Fargo!", ["Fargo"], ["Fargo"]),
    ],
)
def test_matchers(response, paper, strict):
    assert match_response(response, CANDIDATES, "paper") == paper
    assert match_response(response, CANDIDATES, "strict") == strict


def test_paper_hit_is_valid_and_contains_the_target():
    # The reference code: exactly one candidate in the response, then `target in response`
    assert judge_response("Fargo", CANDIDATES, "Fargo") == {"matched": "Fargo", "valid": True, "hit": True}
    assert judge_response("Babe", CANDIDATES, "Fargo") == {"matched": "Babe", "valid": True, "hit": False}
    assert judge_response("Fargo, Babe", CANDIDATES, "Fargo") == {"matched": None, "valid": False, "hit": False}
    # A row whose target contains another candidate can never be valid under the paper's rule
    assert not judge_response("The Heat", CANDIDATES, "The Heat")["valid"]
    assert judge_response("The Heat", CANDIDATES, "The Heat", "strict")["hit"]
    assert not judge_response("The Heat", CANDIDATES, "Heat", "strict")["hit"]


def test_unknown_matcher_is_rejected():
    with pytest.raises(ValueError, match="matcher"):
        match_response("Fargo", CANDIDATES, "fuzzy")


# ---------------------------------------------------------------------------------------------------- generation


class FakeGenerator(torch.nn.Module):
    """Answers each prompt with a fixed text chosen by a key it contains; checks the protocol on every call."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.answers = answers
        self.calls: list[int] = []
        self.seen_prompts: list[str] = []

    def generate(self, input_ids, attention_mask, generation_config):
        assert generation_config.do_sample is False and generation_config.num_beams == 1
        assert not self.training
        for mask in attention_mask.tolist():  # left padding: zeros, then ones
            assert mask == sorted(mask)
        self.calls.append(len(input_ids))
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tokenizer.decode([t for t, m in zip(ids, mask) if m])
            self.seen_prompts.append(prompt)
            answer = next(text for key, text in self.answers.items() if key in prompt)
            new = self.tokenizer(answer, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            rows.append(new[: generation_config.max_new_tokens])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        new_tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new_tokens], dim=1)


MOVIES = ["Fargo", "Babe", "Clueless", "Heat", "Casino"]


def generation_examples(conversational=False):
    def prompt(key):
        text = f"Watched: Toy Story. {key}. Candidates: {', '.join(MOVIES)}. Answer:"
        return [{"role": "user", "content": text}] if conversational else text

    return [
        example(prompt("row a"), MOVIES, "Fargo", index=0),  # right
        example(prompt("row b b b b"), MOVIES, "Fargo", index=1),  # a valid wrong answer
        example(prompt("row c c"), MOVIES, "Heat", index=2),  # two candidates: invalid
        example(prompt("row d d d d d d"), MOVIES, "Babe", index=3),  # no candidate: invalid
        example(prompt("row e"), MOVIES, "Casino", index=4),  # lower case: valid only for the strict matcher
    ]


ANSWERS = {
    "row a": " Fargo",
    "row b": " Babe",
    "row c": " Heat or Casino",
    "row d": " I don't know",
    "row e": " casino",
}


@pytest.mark.parametrize("conversational", [False, True])
def test_generation_metrics_on_known_answers(conversational):
    tokenizer = make_tokenizer()
    model = FakeGenerator(tokenizer, ANSWERS)
    result = evaluate_generation(
        model, tokenizer, generation_examples(conversational), batch_size=2, return_records=True, show_progress=False
    )
    assert result["n"] == 5 and result["matcher"] == "paper"
    assert result["hr@1"] == 1 / 5 and result["valid_ratio"] == 2 / 5
    assert result["hr@1/strict"] == 2 / 5 and result["valid_ratio/strict"] == 3 / 5
    assert [r["response"] for r in result["records"]] == [a.strip() for a in ANSWERS.values()]
    assert [r["valid"] for r in result["records"]] == [True, True, False, False, False]
    assert [r["matched"] for r in result["records"]] == ["Fargo", "Babe", None, None, None]
    assert sorted(model.calls, reverse=True) == [2, 2, 1]
    if conversational:  # through the chat template, ending with the generation prompt
        assert all(p.startswith("<|user|>") and p.endswith("<|assistant|>") for p in model.seen_prompts)
    else:
        assert all(p.endswith("Answer:") for p in model.seen_prompts)


def test_strict_matcher_fills_the_headline_metrics_when_asked():
    tokenizer = make_tokenizer()
    model = FakeGenerator(tokenizer, ANSWERS)
    result = evaluate_generation(model, tokenizer, generation_examples(), matcher="strict", show_progress=False)
    assert result["hr@1"] == 2 / 5 and result["valid_ratio"] == 3 / 5 and result["matcher"] == "strict"


def test_generation_restores_padding_side_and_training_mode():
    tokenizer = make_tokenizer()
    model = FakeGenerator(tokenizer, ANSWERS)
    model.train()
    assert tokenizer.padding_side == "right"
    generate_responses(model, tokenizer, [e.prompt for e in generation_examples()], show_progress=False)
    assert tokenizer.padding_side == "right" and model.training


def greedy_one_by_one(model, tokenizer, prompt, max_new_tokens):
    """Greedy decoding of one unpadded prompt with full forward passes, no cache: an independent reference."""
    ids = tokenizer(prompt).input_ids
    new = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        new.append(token)
        if token == tokenizer.eos_token_id:
            break
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_batched_left_padded_generation_matches_one_by_one_greedy_decoding():
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    prompts = [
        "Toy Story, Heat. Answer:",
        "The user has watched Fargo, Babe, Clueless, Twister and Braveheart. Answer:",
        "hello world",
        "Which movie would the user like to watch next? Answer:",
        "a b c",
    ]
    expected = [greedy_one_by_one(model, tokenizer, p, 8) for p in prompts]
    # Settings saved with a checkpoint must not turn the protocol's plain greedy decoding into something else
    model.generation_config.update(do_sample=True, temperature=2.0, top_k=5, repetition_penalty=3.0, min_new_tokens=8)
    for batch_size in (1, 4):
        assert generate_responses(model, tokenizer, prompts, batch_size, 8, show_progress=False) == expected


# ---------------------------------------------------------------------------------------------------- ranking


def independent_scores(model, tokenizer, prompt, titles):
    """Summed float64 log-probs of each title after the prompt, one pass each: `" " + title + EOS` after a string
    prompt (the builders' completion), an assistant message after a conversational one."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt).input_ids
        fulls = [tokenizer(prompt + " " + t + tokenizer.eos_token).input_ids for t in titles]
    else:
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt_ids = prompt_ids["input_ids"]
        fulls = [
            tokenizer.apply_chat_template(
                prompt + [{"role": "assistant", "content": t}], tokenize=True, return_dict=True
            )["input_ids"]
            for t in titles
        ]
    scores = []
    for full in fulls:
        assert full[: len(prompt_ids)] == prompt_ids  # the prompts here tokenize the same alone and joined
        with torch.no_grad():
            log_probs = model(torch.tensor([full])).logits[0].double().log_softmax(-1)
        scores.append(sum(float(log_probs[t - 1, full[t]]) for t in range(len(prompt_ids), len(full))))
    return scores


RANK_PROMPTS = [
    "Watched: Toy Story, Heat. Answer:",
    "The user has watched Fargo, Babe, Clueless, Twister and Braveheart. Which movie next? Answer:",
    "Answer:",
]
RANK_TITLES = [
    ["Fargo", "Babe", "Star Wars", "Apollo 13"],
    ["Casino", "Sabrina"],
    ["Jumanji", "Heat", "Clueless", "Twister", "Batman Forever"],
]


@pytest.mark.parametrize("prefix_sharing", [True, False])
@pytest.mark.parametrize("conversational", [False, True])
def test_score_candidates_matches_separate_forward_passes(prefix_sharing, conversational):
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    model.train()
    prompts = [[{"role": "user", "content": p}] if conversational else p for p in RANK_PROMPTS]
    scores = score_candidates(
        model, tokenizer, prompts, RANK_TITLES, batch_size=2, prefix_sharing=prefix_sharing, show_progress=False,
        candidate_chunk_size=3,
    )  # fmt: skip
    assert model.training  # restored
    for got, prompt, ts in zip(scores, prompts, RANK_TITLES):
        assert_fp32_close(got, independent_scores(model, tokenizer, prompt, ts))  # fp32 against separate passes


def uniform_model(tokenizer):
    """A model that gives every token probability 1/V: a title's score is -(its tokens incl. EOS) * log V."""
    model = make_model("llama", tokenizer=tokenizer)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def test_evaluate_ranking_on_a_model_whose_scores_are_known():
    tokenizer = make_tokenizer()
    model = uniform_model(tokenizer)
    # Titles of clearly different token counts: fewer tokens rank higher
    titles = ["a b c d e f", "a", "a b c", "a b c d e f g h i j"]
    examples = [
        example("Answer:", titles, "a", index=0),  # rank 1
        example("Answer:", titles, "a b c", index=1),  # rank 2
        example("Answer:", titles, "a b c d e f g h i j", index=2),  # rank 4
        example("Answer:", ["x", "y", "a b"], "y", index=3),  # tied with " x" (as many tokens): rank 2
    ]
    result = evaluate_ranking(model, tokenizer, examples, batch_size=3, return_records=True, show_progress=False)
    log_v = math.log(len(tokenizer))
    x_tokens = len(tokenizer("Answer: x" + tokenizer.eos_token).input_ids) - len(tokenizer("Answer:").input_ids)
    assert result["records"][3]["scores"][:2] == pytest.approx([-x_tokens * log_v] * 2)
    assert [r["rank"] for r in result["records"]] == [1, 2, 4, 2]
    assert result["n"] == 4
    assert result["hr@1"] == 1 / 4 and result["hr@5"] == 1.0
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(3)) / 4)
    assert result["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 2) / 4)


def test_evaluate_ranking_names_a_row_whose_target_is_not_a_candidate():
    tokenizer = make_tokenizer()
    bad = RecExample("Answer:", ["a", "b"], "c", RecRow("u", (1, 2, 3), 9, "test", 0), [1, 2])
    with pytest.raises(ValueError, match="Row 0"):
        evaluate_ranking(uniform_model(tokenizer), tokenizer, [bad], show_progress=False)


# ---------------------------------------------------------------------------------------------------- baselines


def many_rows(n_rows=2000, n_candidates=20):
    return [
        example("p", [f"t{j}" for j in range(n_candidates)], f"t{i % n_candidates}", index=i) for i in range(n_rows)
    ]


def test_random_baseline_is_near_chance_and_reproducible():
    examples = many_rows()
    result = random_baseline(examples, seed=0)
    assert result["n"] == 2000
    assert 0.03 < result["hr@1"] < 0.07  # 1/20, standard error 0.005
    assert 0.20 < result["hr@5"] < 0.30  # 5/20
    assert random_baseline(examples, seed=0) == result
    assert random_baseline(examples, seed=1) != result


def test_random_baseline_ranks_a_row_the_same_whatever_rows_come_with_it():
    examples = many_rows(50)
    alone = [random_baseline([e], seed=3)["mrr"] for e in examples]
    together = random_baseline(examples[::-1], seed=3)["mrr"]
    assert together == pytest.approx(sum(alone) / len(alone))


def test_popularity_baseline_ranks_by_train_target_counts_then_item_id():
    titles = {i: f"item {i}" for i in range(1, 8)}
    train_targets = [5, 5, 5, 3, 3, 7, 7, 1]  # popularity: 5 > 3 = 7 > 1 > (2, 4, 6 unseen)
    rows = [RecRow("u", (1, 2, 3), t, "train", i) for i, t in enumerate(train_targets)]
    rows += [RecRow("u", (1, 2, 3), 5, "valid", 0)]  # not counted: only train rows are
    dataset = RecDataset("toy", titles, rows)
    assert Counter(train_targets) == dataset.target_counts("train")

    def ex(candidate_ids, target, index):
        names = [titles[i] for i in candidate_ids]
        return example("p", names, titles[target], index=index, candidate_ids=candidate_ids)

    examples = [
        ex([2, 5, 4], 5, 0),  # most popular: rank 1
        ex([7, 3, 1], 7, 1),  # 3 and 7 tie on count, smaller id first: 3, 7 -> rank 2
        ex([6, 2, 4, 1], 6, 2),  # 1 first, then unseen by id: 2, 4, 6 -> rank 4
    ]
    result = popularity_baseline(dataset, examples)
    expected = ranking_metrics([1, 2, 4])
    assert result == expected


def test_memorizer_ranks_by_overlap_with_the_training_lists_of_each_candidate():
    from trl_sdpo.rec.baselines import memorizer_ranks

    # Training rows: target 1 had list {1..5}, target 7 had {6..10}, target 3 had {3, 20, 21, 22, 23}.
    train_lists = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [3, 20, 21, 22, 23]]
    train_targets = [1, 7, 3]

    def ex(candidate_ids, target, index):
        return example("p", [f"i{c}" for c in candidate_ids], f"i{target}", index=index, candidate_ids=candidate_ids)

    examples = [
        # Overlap of {1, 2, 3, 4, 30}: with target 1's list 4 items (3 besides 1); with target 3's list 1 (0 besides 3);
        # 2, 4, 30 were never targets (-1). Target 1 -> rank 1; target 3 -> rank 2.
        ex([30, 4, 3, 2, 1], 1, 0),
        ex([30, 4, 3, 2, 1], 3, 1),
        # No candidate was ever a training target: every score is -1, the rank is the seeded tie-break.
        ex([40, 41, 42], 41, 2),
    ]
    ranks = memorizer_ranks(train_lists, train_targets, examples, seed=0)
    assert ranks[:2] == [1, 2] and 1 <= ranks[2] <= 3
    assert memorizer_ranks(train_lists, train_targets, examples, seed=0) == ranks  # deterministic
    # Over many all-tied rows the tie-break is uniform: mean rank (1 + 3) / 2 = 2 within sampling error.
    tied = [ex([40, 41, 42], 41, i) for i in range(3000)]
    mean = sum(memorizer_ranks(train_lists, train_targets, tied)) / 3000
    assert abs(mean - 2.0) < 4 * math.sqrt(2 / 3 / 3000)  # sd of a uniform rank on {1, 2, 3} is sqrt(2/3)
    with pytest.raises(ValueError, match="3 training lists but 2 targets"):
        memorizer_ranks(train_lists, train_targets[:2], examples)
