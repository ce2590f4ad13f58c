"""The DPOTrainer compatibility matrix: `SDPOTrainer` is a drop-in for TRL's `DPOTrainer` on text causal LMs.

Written from TRL's DPO trainer tests as a checklist (docs/design.md has the resulting table). For each DPOConfig /
DPOTrainer feature that applies to text causal LMs, either S-DPO at k=1 matches `DPOTrainer` step by step (loss,
rewards, log-probs, token counts, after real optimizer steps) and k>1 trains, or the feature is refused with an error
naming the option. Every architecture runs with the default `prefix_sharing`: attention models through the shared
prompt row, conv/SSM hybrids through one row per completion, chosen by the isolation probe.

The reference is always TRL's own `DPOTrainer` or float64 separate forward passes, never this package.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from datasets import Dataset
from reference import float64_sequence_logp
from test_logprobs import COMPLETIONS, PROMPTS, batch_of, separate_passes
from test_trainer_equivalence import ROWS as EQUIVALENCE_ROWS
from tiny import make_model, make_tokenizer
from tolerances import FP32_ULPS, assert_fp32_close, magnitude
from trl import DPOConfig, DPOTrainer

from trl_sdpo import SDPOConfig, SDPOTrainer, completion_logps, logprobs

# (architecture, attention implementation, whether the default settings run each prompt once)
ARCHITECTURES = [
    ("llama", "sdpa", True),
    ("qwen2", "sdpa", True),
    ("gemma2", "eager", True),  # sliding window 4096: never cuts these rows
    ("gemma3", "sdpa", True),  # sliding window 16: these rows fit (a longer batch falls back, tested below)
    ("lfm2", "sdpa", False),  # short convolutions ignore the mask
    ("nemotron_h", "sdpa", False),  # Mamba2 layers ignore the mask
]
ARCH_IDS = [a for a, _, _ in ARCHITECTURES]
# More hybrids, checked against separate passes only (a Mamba + MoE hybrid, a parallel attention/SSM hybrid, gated
# linear attention)
MORE_HYBRIDS = [("jamba", "sdpa", False), ("falcon_h1", "sdpa", False), ("qwen3_next", "sdpa", False)]

ROWS = [
    *EQUIVALENCE_ROWS,  # the four rows of the k=1 / float64 equivalence tests, and two more for three steps of 2
    {"prompt": "hello world, good or bad? Answer:", "chosen": " good", "rejected": [" bad", " moon", " fish"]},
    {"prompt": "a b c d e f: pick one. Answer:", "chosen": " e", "rejected": [" a", " z", " 9"]},
]

COMMON = dict(
    report_to=[],
    bf16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    per_device_train_batch_size=2,
    per_device_eval_batch_size=3,
    max_steps=3,
    logging_steps=1,
    # Plain SGD: a rounding difference in a gradient moves the next step's parameters by lr times that difference.
    # Adam would turn a near-zero gradient element's rounding into a step of +-lr, and the comparison into noise.
    optim="sgd",
    learning_rate=0.5,
    beta=0.5,
    max_length=None,
    seed=0,
)
STEP_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


def moved(model, scale=0.2, seed=3):
    """The model with its weights moved off the tiny initialisation: there a conv/SSM leak is ~1e-4 nats, invisible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def pair_rows(rows):
    return [{**r, "rejected": r["rejected"][0]} for r in rows]


def k1_rows(rows):
    return [{**r, "rejected": r["rejected"][:1]} for r in rows]


class Recorder:
    """Each training step's loss, from `compute_loss` (Trainer's logged loss is rounded to 4 decimals)."""

    def __init__(self, trainer):
        self.losses, inner = [], trainer.compute_loss

        def compute_loss(*args, **kwargs):
            loss = inner(*args, **kwargs)
            if trainer.model.training:
                self.losses.append(loss.item())
            return loss

        trainer.compute_loss = compute_loss


def build_both(tmp_path, policy, ref, dpo_rows, sdpo_rows, tokenizer, eval_rows=None, sdpo_extra=None, **overrides):
    """A DPOTrainer on `dpo_rows` and an SDPOTrainer on `sdpo_rows`, each from its own copy of the same start.

    `eval_rows(rows)` builds each trainer's eval dataset from its own rows; `sdpo_extra` goes to SDPOTrainer only.
    """
    settings = {**COMMON, **overrides}
    trainers = []
    for name, trainer_class, config_class, rows, extra in (
        ("dpo", DPOTrainer, DPOConfig, dpo_rows, {}),
        ("sdpo", SDPOTrainer, SDPOConfig, sdpo_rows, sdpo_extra or {}),
    ):
        trainers.append(
            trainer_class(
                copy.deepcopy(policy),
                ref_model=None if ref is None else copy.deepcopy(ref),
                args=config_class(str(tmp_path / name), **settings),
                train_dataset=Dataset.from_list(rows),
                eval_dataset=None if eval_rows is None else eval_rows(rows),
                processing_class=tokenizer,
                **extra,
            )
        )
    return trainers


def train_both(tmp_path, policy, ref, rows=ROWS, dpo_rows=None, sdpo_rows=None, tokenizer=None, **overrides):
    """Train DPOTrainer on pairs and SDPOTrainer on k=1 lists from the same start; return both trainers' records."""
    tokenizer = tokenizer or make_tokenizer()
    dpo_rows, sdpo_rows = dpo_rows or pair_rows(rows), sdpo_rows or k1_rows(rows)
    results = []
    for trainer in build_both(tmp_path, policy, ref, dpo_rows, sdpo_rows, tokenizer, **overrides):
        recorder = Recorder(trainer)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "rewards/chosen" in h]
        results.append((trainer, recorder.losses, logs))
    return results


def assert_same_steps(dpo, sdpo):
    """Step by step: loss, TRL's reward and log-prob metrics and the token count agree."""
    (_, dpo_losses, dpo_logs), (_, sdpo_losses, sdpo_logs) = dpo, sdpo
    assert len(dpo_logs) == len(sdpo_logs) > 0 and len(dpo_losses) == len(sdpo_losses) >= len(dpo_logs)
    scale = magnitude(*(h[name] for h in dpo_logs for name in ("logps/chosen", "logps/rejected")))
    for call, (a, b) in enumerate(zip(dpo_losses, sdpo_losses)):  # every forward, micro-batches included
        # A loss's rounding is that of the summed log-probs (their magnitude); a step's parameters carry every
        # earlier step's rounding times lr, hence one FP32_ULPS budget per forward taken.
        assert_fp32_close(b, a, scale=COMMON["beta"] * scale, ulps=FP32_ULPS * (call + 1), msg=f"loss {call}")
    for step, (a, b) in enumerate(zip(dpo_logs, sdpo_logs)):
        ulps = FP32_ULPS * len(dpo_losses)
        for name in STEP_METRICS:
            assert_fp32_close(b[name], a[name], scale=scale, ulps=ulps, msg=f"step {step}: {name}")
        assert b["rewards/accuracies"] == a["rewards/accuracies"]
        assert b["num_tokens"] == a["num_tokens"]  # counted as DPOTrainer counts (each prompt per completion)


# ------------------------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize(
    ("arch", "attn", "shares"), ARCHITECTURES + MORE_HYBRIDS, ids=ARCH_IDS + [a for a, _, _ in MORE_HYBRIDS]
)
def test_default_settings_give_the_log_probs_of_separate_passes(arch, attn, shares, monkeypatch):
    monkeypatch.setattr(logprobs, "_warned", set())
    model = moved(make_model(arch, attn)).eval()
    expected = separate_passes(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logps = completion_logps(model, **batch_of())
    fallbacks = [str(w.message) for w in caught if "Prefix sharing is off" in str(w.message)]
    assert_fp32_close(logps, expected)
    if shares:
        assert not fallbacks and logprobs.prefix_sharing_blocker(model, longest=12) is None
    else:
        assert len(fallbacks) == 1 and "probe" in fallbacks[0]
        # The probe is right: forcing the shared row on this model gives other log-probs for the negatives
        monkeypatch.setattr(logprobs, "_mixer_blocker", lambda *args: None)
        forced = completion_logps(model, **batch_of())
        assert (forced.double() - expected).abs().max() > 1e-2


def test_gemma3_sliding_window_shorter_than_the_row_falls_back(monkeypatch):
    monkeypatch.setattr(logprobs, "_warned", set())
    model = moved(make_model("gemma3")).eval()  # window 16
    prompts = [list(range(5, 19)), PROMPTS[1]]  # 14 prompt tokens + 5 completion tokens > 16
    completions = [COMPLETIONS[0], COMPLETIONS[1]]
    expected = separate_passes(model, prompts, completions)
    with pytest.warns(UserWarning, match="sliding-window"):
        logps = completion_logps(model, **batch_of(prompts, completions))
    assert_fp32_close(logps, expected)


@pytest.mark.parametrize(("arch", "attn", "shares"), ARCHITECTURES, ids=ARCH_IDS)
def test_k1_matches_dpo_trainer_step_by_step(tmp_path, arch, attn, shares):
    tokenizer = make_tokenizer()
    policy = moved(make_model(arch, attn, tokenizer=tokenizer))
    ref = moved(copy.deepcopy(policy), scale=0.05, seed=4)
    dpo, sdpo = train_both(tmp_path, policy, ref, tokenizer=tokenizer)
    assert_same_steps(dpo, sdpo)


@pytest.mark.parametrize(("arch", "attn", "shares"), ARCHITECTURES, ids=ARCH_IDS)
def test_k3_trains(tmp_path, arch, attn, shares):
    tokenizer = make_tokenizer()
    policy = moved(make_model(arch, attn, tokenizer=tokenizer))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = SDPOTrainer(
        policy,
        ref_model=copy.deepcopy(policy),
        args=SDPOConfig(str(tmp_path), **{**COMMON, "max_steps": 2}),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "num_negatives" in h]
    assert [h["num_negatives"] for h in logs] == [3.0, 3.0]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


# ------------------------------------------------------------------------------------- DPOConfig / DPOTrainer


def llama_pair():
    tokenizer = make_tokenizer()
    policy = moved(make_model("llama", tokenizer=tokenizer), scale=0.05)
    return tokenizer, policy, moved(copy.deepcopy(policy), scale=0.05, seed=4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(precompute_ref_log_probs=True, precompute_ref_batch_size=4),
        dict(gradient_accumulation_steps=2),
        dict(max_length=26, truncation_mode="keep_start"),  # 2 of 6 prompts fill it (dropped), others are cut
        dict(pad_to_multiple_of=8),
        dict(gradient_checkpointing=True),
        dict(sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5),  # TR-DPO
        dict(pad_token="<unk>"),
        dict(padding_free=True),  # DPOTrainer 1.16 warns and pads; so does SDPOTrainer (inherited)
    ],
    ids=lambda o: ",".join(o),
)
def test_option_matches_dpo_trainer_step_by_step(tmp_path, overrides):
    tokenizer, policy, ref = llama_pair()
    dpo, sdpo = train_both(tmp_path, policy, ref, tokenizer=tokenizer, **overrides)
    assert_same_steps(dpo, sdpo)


def test_peft_reference_matches_dpo_trainer_step_by_step(tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer, policy, _ = llama_pair()
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    dpo, sdpo = train_both(tmp_path, get_peft_model(policy, config), None, tokenizer=tokenizer)
    assert_same_steps(dpo, sdpo)


def test_model_given_as_a_path_matches_dpo_trainer_step_by_step(tmp_path):
    tokenizer, policy, ref = llama_pair()
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    settings = dict(model_init_kwargs={"dtype": torch.float32})
    dpo, sdpo = train_both(tmp_path, str(tmp_path / "policy"), ref, tokenizer=tokenizer, **settings)
    assert_same_steps(dpo, sdpo)


def test_conversational_rows_match_dpo_trainer_step_by_step(tmp_path):
    tokenizer, policy, ref = llama_pair()
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [[{"role": "assistant", "content": c}] for c in r["rejected"]],
        }
        for r in ROWS
    ]
    dpo, sdpo = train_both(tmp_path, policy, ref, rows=rows, tokenizer=tokenizer)
    assert_same_steps(dpo, sdpo)


# TRL's tool-call conversational format: an assistant turn with `tool_calls` and no `content`, and a `tools` column
TOOL_TEMPLATE = (
    "{% if tools %}<|system|>{{ tools | tojson }}<|end|>{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message.get('tool_calls') %}{{ message['tool_calls'] | tojson }}{% else %}{{ message['content'] }}{% endif %}"
    "<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_rows(tools_as_json):
    def call(city):
        return [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                                         "arguments": {"city": city}}}]}]  # fmt: skip

    rows = []
    for city, other in (("Paris", "Rome"), ("Oslo", "Bern"), ("Lima", "Quito")):
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"weather in {city}?"}],
                "chosen": call(city),
                "rejected": [call(other), [{"role": "assistant", "content": "no idea"}]],
                "tools": json.dumps([WEATHER_TOOL]) if tools_as_json else [WEATHER_TOOL],
            }
        )
    return rows


@pytest.mark.parametrize("tools_as_json", [True, False], ids=["tools-json", "tools-dicts"])
def test_tool_call_rows_tokenize_as_dpo_trainer(tmp_path, tools_as_json):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    policy = make_model("llama", tokenizer=tokenizer)
    rows = tool_rows(tools_as_json)
    dpo, sdpo = build_both(tmp_path, policy, policy, pair_rows(rows), rows, tokenizer)
    for expected, actual in zip(dpo.train_dataset, sdpo.train_dataset):
        assert actual["prompt_ids"] == expected["prompt_ids"]
        assert actual["chosen_ids"] == expected["chosen_ids"]
        assert actual["rejected_ids"][0] == expected["rejected_ids"]
    # The tool schema and the call reached the template: the chosen completion renders the call's JSON
    assert "get_weather" in tokenizer.decode(sdpo.train_dataset[0]["prompt_ids"])
    assert "Paris" in tokenizer.decode(sdpo.train_dataset[0]["chosen_ids"])
    sdpo.train()  # k=2 with tool calls trains


def test_tools_that_are_not_a_list_are_refused_naming_the_row(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TOOL_TEMPLATE
    rows = tool_rows(True)
    rows[1]["tools"] = "{not json"
    with pytest.raises(ValueError, match=r"Row 1 of the train dataset: field `tools` is not valid JSON"):
        SDPOTrainer(
            make_model("llama", tokenizer=tokenizer),
            args=SDPOConfig(str(tmp_path), **{**COMMON, "precompute_ref_log_probs": True}),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def test_num_tokens_counts_as_dpo_trainer_and_distinct_tokens_count_each_prompt_once(tmp_path):
    tokenizer, policy, ref = llama_pair()
    trainer = SDPOTrainer(
        policy,
        ref_model=ref,
        args=SDPOConfig(str(tmp_path), **{**COMMON, "per_device_train_batch_size": 6, "max_steps": 1}),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.train()
    log = next(h for h in trainer.state.log_history if "num_tokens" in h)
    data = trainer.train_dataset
    completions = sum(len(c) + sum(map(len, rs)) for c, rs in zip(data["chosen_ids"], data["rejected_ids"]))
    prompts = [len(p) for p in data["prompt_ids"]]
    assert log["num_tokens"] == sum(4 * p for p in prompts) + completions  # 1 + k = 4 rows per prompt
    assert log["num_tokens_distinct"] == sum(prompts) + completions


@pytest.mark.parametrize("k", [1, 3])
def test_compute_metrics_receives_policy_and_reference_log_probs(tmp_path, k):
    tokenizer, policy, ref = llama_pair()
    received = []

    def compute_metrics(prediction):
        received.append(prediction)
        policy_logps, ref_logps = prediction.predictions
        present = prediction.label_ids.astype(bool)
        rewards = COMMON["beta"] * (policy_logps - ref_logps)
        return {"chosen_reward": float(rewards[:, 0].mean()), "present": float(present.sum())}

    rows = [{**r, "rejected": r["rejected"][: 1 + (i % k)]} for i, r in enumerate(ROWS)]  # k varies when k > 1
    trainer = SDPOTrainer(
        policy,
        ref_model=ref,
        args=SDPOConfig(str(tmp_path), **COMMON),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    metrics = trainer.evaluate()
    assert len(received) == 1
    policy_logps, ref_logps = received[0].predictions
    width = 1 + max(len(r["rejected"]) for r in rows)
    assert policy_logps.shape == ref_logps.shape == received[0].label_ids.shape == (len(rows), width)
    assert metrics["eval_present"] == sum(1 + len(r["rejected"]) for r in rows)
    # Against float64 separate forward passes, row by row (evaluation keeps the dataset order)
    for i, row in enumerate(rows):
        for j, completion in enumerate([row["chosen"], *row["rejected"]]):
            expected = float64_sequence_logp(policy, tokenizer, row["prompt"], completion)
            assert_fp32_close(policy_logps[i, j], expected)
            assert_fp32_close(ref_logps[i, j], float64_sequence_logp(ref, tokenizer, row["prompt"], completion))
        assert (policy_logps[i, 1 + len(row["rejected"]) :] == 0).all()
    assert_fp32_close(metrics["eval_chosen_reward"], metrics["eval_rewards/chosen"], scale=abs(policy_logps).max())


def test_compute_metrics_at_k1_sees_the_rewards_dpo_trainer_logs(tmp_path):
    tokenizer, policy, ref = llama_pair()

    def rewards(prediction):
        policy_logps, ref_logps = prediction.predictions
        return {"margin": float((COMMON["beta"] * (policy_logps - ref_logps) @ [1.0, -1.0]).mean())}

    dpo, sdpo = build_both(
        tmp_path,
        policy,
        ref,
        pair_rows(ROWS),
        k1_rows(ROWS),
        tokenizer,
        Dataset.from_list,
        {"compute_metrics": rewards},
    )
    expected, actual = dpo.evaluate(), sdpo.evaluate()
    scale = magnitude(expected["eval_logps/chosen"], expected["eval_logps/rejected"])
    assert_fp32_close(actual["eval_margin"], expected["eval_rewards/margins"], scale=scale)
    assert_fp32_close(actual["eval_loss"], expected["eval_loss"], scale=COMMON["beta"] * scale)


def test_eval_dataset_dict_matches_dpo_trainer(tmp_path):
    tokenizer, policy, ref = llama_pair()

    def splits(rows):
        return {"a": Dataset.from_list(rows[:3]), "b": Dataset.from_list(rows[3:])}

    results = [
        t.evaluate() for t in build_both(tmp_path, policy, ref, pair_rows(ROWS), k1_rows(ROWS), tokenizer, splits)
    ]
    expected, actual = results
    # TRL 1.16 prefixes only the loss with the split's name; the reward metrics are logged once, unprefixed
    scale = magnitude(expected["eval_logps/chosen"], expected["eval_logps/rejected"])
    names = ["eval_a_loss", "eval_b_loss", *(f"eval_{name}" for name in STEP_METRICS)]
    assert set(names) <= expected.keys() & actual.keys()
    for name in names:
        assert_fp32_close(actual[name], expected[name], scale=scale, msg=name)


# ---------------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("loss_type", ["ipo"]),
        ("loss_type", ["sigmoid", "ipo"]),
        ("label_smoothing", 0.1),
        ("use_weighting", True),
        ("ld_alpha", 0.5),
        ("f_divergence_type", "js_divergence"),
    ],
)
def test_dpo_variants_are_refused_naming_the_option(tmp_path, option, value):
    name = "f_divergence_type" if option == "f_divergence_type" else option
    with pytest.raises(ValueError, match=name):
        SDPOConfig(str(tmp_path), **{option: value})


def test_moe_router_aux_loss_is_refused_naming_the_option(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = make_tokenizer()
    config = AutoConfig.for_model(
        "qwen2_moe",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
    )
    model = AutoModelForCausalLM.from_config(config)
    args = dict(**COMMON, precompute_ref_log_probs=True)
    with pytest.raises(ValueError, match="router_aux_loss_coef=0.0"):
        SDPOTrainer(model, args=SDPOConfig(str(tmp_path), **args), train_dataset=Dataset.from_list(ROWS),
                    processing_class=tokenizer)  # fmt: skip
    trainer = SDPOTrainer(  # without the auxiliary loss, it trains
        model,
        args=SDPOConfig(str(tmp_path), router_aux_loss_coef=0.0, **{**args, "max_steps": 1}),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    trainer.train()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**r, "images": []} for r in ROWS], "image"),  # vision rows: text causal LMs only
        (  # an implicit prompt: TRL's extraction is defined for one pair only
            [{"chosen": r["prompt"] + r["chosen"], "rejected": [r["prompt"] + r["rejected"][0]]} for r in ROWS],
            "missing field `prompt`",
        ),
    ],
    ids=["vision", "implicit-prompt"],
)
def test_rows_dpo_trainer_reads_differently_are_refused(tmp_path, rows, message):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match=message):
        SDPOTrainer(
            make_model("llama", tokenizer=tokenizer),
            args=SDPOConfig(str(tmp_path), **COMMON, precompute_ref_log_probs=True),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def test_reference_columns_computed_once_serve_dpo_and_sdpo(tmp_path):
    """The runner's path: precompute the k=3 reference once, then train k=3 and k=1 (DPO) on the same columns."""
    tokenizer, policy, _ = llama_pair()
    settings = {**COMMON, "precompute_ref_log_probs": True}
    first = SDPOTrainer(
        copy.deepcopy(policy),
        args=SDPOConfig(str(tmp_path / "k3"), **settings),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    prepared = first.train_dataset
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(prepared.column_names)
    # DPO through the shared columns (first negative of each row) equals TRL's DPOTrainer computing its own
    reused = SDPOTrainer(
        copy.deepcopy(policy),
        args=SDPOConfig(str(tmp_path / "k1"), num_negatives=1, **settings),
        train_dataset=prepared,
        processing_class=tokenizer,
    )
    calls = []
    reused.compute_ref_log_probs = lambda *args: calls.append(1)  # must not be needed
    recorder = Recorder(reused)
    reused.train()
    dpo = train_both(tmp_path, policy, None, tokenizer=tokenizer, precompute_ref_log_probs=True)[0]
    sdpo = (reused, recorder.losses, [h for h in reused.state.log_history if "rewards/chosen" in h])
    assert not calls
    assert_same_steps(dpo, sdpo)
