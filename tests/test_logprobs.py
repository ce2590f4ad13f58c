"""`completion_logps` against separate forward passes of each prompt+completion, computed here independently."""

import copy
import warnings

import pytest
import torch
from tiny import make_model
from tolerances import FP32_EPS, FP32_ULPS, assert_fp32_close
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from trl.trainer.utils import add_fused_lm_head

from trl_sdpo import logprobs
from trl_sdpo.collator import pad_multi_completion
from trl_sdpo.logprobs import add_completion_logps_head, completion_logps

# Three prompts of different lengths with 3, 1 and 2 completions of different lengths (k varies, so the batch holds
# absent completions), one of them a single token.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [40, 41, 42, 43, 44]]
COMPLETIONS = [
    [[20, 21, 22], [23], [24, 25, 26, 27, 28]],
    [[30, 31, 32, 33]],
    [[50, 51], [52, 53, 54, 55, 56, 57]],
]
ARCH_ATTN = [
    ("llama", "sdpa"),
    ("llama", "eager"),
    ("qwen2", "sdpa"),
    ("qwen2", "eager"),
    ("mistral", "sdpa"),
    ("mistral", "eager"),
    ("gemma", "sdpa"),
    ("gemma", "eager"),
    ("gemma2", "eager"),
    ("gpt2", "sdpa"),
    ("gpt2", "eager"),
]


def batch_of(prompts=PROMPTS, completions=COMPLETIONS):
    return pad_multi_completion(prompts, completions, pad_token_id=0, num_completions=3)


def weights_for(shape, seed=1):
    # Distinct weights per completion, so a gradient that mixes completions up shows
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def separate_passes(model, prompts=PROMPTS, completions=COMPLETIONS):
    """(B, 3) float64 sums from one plain forward per prompt+completion, log-softmax in float64.

    A token is scored from the logits one position earlier, so with an empty prompt the first token is not scored.
    """
    result = torch.zeros((len(prompts), 3), dtype=torch.float64)
    for i, (prompt, comps) in enumerate(zip(prompts, completions)):
        for j, completion in enumerate(comps):
            log_probs = model(torch.tensor([prompt + completion])).logits[0].double().log_softmax(-1)
            first = 0 if prompt else 1
            scored = [log_probs[len(prompt) + t - 1, completion[t]] for t in range(first, len(completion))]
            result = result.index_put((torch.tensor(i), torch.tensor(j)), torch.stack(scored).sum())
    return result


def value_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    logps = compute()
    (logps * weights_for(logps.shape).to(logps.dtype)).sum().backward()
    grads = {name: p.grad.detach().double().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach().double(), grads


def assert_grads_close(grads, expected, rel=FP32_ULPS * FP32_EPS):
    # Norm-wise: fp32 rounding is relative to the size of the whole computation (see tolerances.py).
    assert grads.keys() == expected.keys()
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_expected = torch.cat([g.flatten() for g in expected.values()])
    error = ((flat - flat_expected).norm() / flat_expected.norm()).item()
    assert error < rel, f"relative gradient error {error:.2e}"
    for name in grads:  # no tensor may hide a large error inside a small global norm
        assert (grads[name] - expected[name]).abs().max() <= rel * flat_expected.abs().max(), name


@pytest.mark.parametrize("prefix_sharing", [True, False], ids=["shared", "rows"])
@pytest.mark.parametrize(("arch", "attn"), ARCH_ATTN, ids=[f"{a}-{i}" for a, i in ARCH_ATTN])
def test_matches_separate_forward_passes(arch, attn, prefix_sharing):
    # eval() only switches off dropout (GPT-2 has some); gradients flow the same
    model = make_model(arch, attn).eval()
    expected, expected_grads = value_and_grads(model, lambda: separate_passes(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback may be taken for these models
        logps, grads = value_and_grads(
            model, lambda: completion_logps(model, **batch_of(), prefix_sharing=prefix_sharing)
        )
    assert logps.shape == (3, 3)
    assert_fp32_close(logps, expected)
    assert_grads_close(grads, expected_grads)


def test_shared_prefix_mask_and_positions():
    # prompt [a b], completions [c] and [d e], then one padding slot (the other prompt's row is longer)
    layout = logprobs._shared_prefix_layout(
        [[1, 2], [1, 2, 3, 4, 5, 6]], {(0, 0): [3], (0, 2): [4, 5], (1, 0): [7]}, n=3, mask_dtype=None
    )
    o, x = True, False
    expected = torch.tensor(
        [  # keys: a  b  c  d  e  pad pad
            [o, x, x, x, x, x, x],  # a
            [o, o, x, x, x, x, x],  # b
            [o, o, o, x, x, x, x],  # c sees the prompt and itself
            [o, o, x, o, x, x, x],  # d does not see c
            [o, o, x, o, o, x, x],  # e
            [x, x, x, x, x, o, x],  # padding sees itself only: never a fully masked query
            [x, x, x, x, x, x, o],
        ]
    )
    assert torch.equal(layout.attention_mask[0, 0], expected)
    assert layout.position_ids[0].tolist() == [0, 1, 2, 2, 3, 0, 0]
    assert layout.input_ids[0].tolist()[:5] == [1, 2, 3, 4, 5]
    # scored: c from b (flat 1), d from b (1), e from d (3); owners are flat (B * N) completion indices
    assert layout.positions[:3].tolist() == [1, 1, 3] and layout.targets[:3].tolist() == [3, 4, 5]
    assert layout.owners[:3].tolist() == [0, 2, 2]
    additive = logprobs._shared_prefix_layout([[1, 2]], {(0, 0): [3]}, n=1, mask_dtype=torch.float32).attention_mask
    assert additive.dtype == torch.float32 and additive.max() == 0 and additive.min() == torch.finfo(torch.float32).min


def test_absent_completions_are_zero_and_never_computed():
    model = make_model("llama").eval()
    prompts = PROMPTS + [[60, 61, 62, 63, 64, 65, 66, 67, 68]]
    completions = COMPLETIONS + [[]]  # a prompt with no completion at all
    batch = pad_multi_completion(prompts, completions, pad_token_id=0, num_completions=3)
    assert logprobs.prefix_sharing_blocker(model) is None  # runs the isolation probe now: its forward is not counted
    shapes = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    logps = completion_logps(model, **batch)
    assert (logps[1, 1:] == 0).all() and (logps[2, 2] == 0).all() and (logps[3] == 0).all()
    # one row per prompt that has a completion, exactly as wide as its longest prompt + all its completions
    assert shapes == [(3, max(len(p) + sum(map(len, cs)) for p, cs in zip(PROMPTS, COMPLETIONS)))]
    shapes.clear()
    completion_logps(model, **batch, prefix_sharing=False)
    assert shapes == [(6, max(len(p) + len(c) for p, cs in zip(PROMPTS, COMPLETIONS) for c in cs))]


def test_plain_path_equals_shared_path_on_a_random_batch():
    model = make_model("qwen2").eval()
    gen = torch.Generator().manual_seed(0)
    lengths = lambda n, lo, hi: torch.randint(lo, hi, (n,), generator=gen).tolist()  # noqa: E731
    ids = lambda n: torch.randint(3, 300, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [ids(n) for n in lengths(4, 1, 30)]
    completions = [[ids(c) for c in lengths(k, 1, 9)] for k in lengths(4, 1, 6)]
    batch = pad_multi_completion(prompts, completions, pad_token_id=0)
    shared, shared_grads = value_and_grads(model, lambda: completion_logps(model, **batch))
    rows, rows_grads = value_and_grads(model, lambda: completion_logps(model, **batch, prefix_sharing=False))
    assert_fp32_close(shared, rows)
    assert_grads_close(shared_grads, rows_grads)


def test_empty_prompt_scores_completion_tokens_after_the_first():
    model = make_model("llama").eval()
    prompts, completions = [[], [12, 13]], [[[20, 21, 22], [23, 24]], [[30, 31]]]
    expected = separate_passes(model, prompts, completions)
    batch = pad_multi_completion(prompts, completions, pad_token_id=0, num_completions=3)
    for prefix_sharing in (True, False):
        assert_fp32_close(completion_logps(model, **batch, prefix_sharing=prefix_sharing), expected)


def _ignores_custom_masks(module, query, key, value, attention_mask, **kwargs):
    # Like flash-attention kernels: causal within the row, padding handled by the row layout, no arbitrary mask
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


AttentionInterface.register("test_ignores_custom_masks", _ignores_custom_masks)


def test_attention_without_custom_masks_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(logprobs, "_warned", set())
    model = make_model("llama", "test_ignores_custom_masks").eval()
    expected = separate_passes(model)
    with pytest.warns(UserWarning, match="test_ignores_custom_masks") as record:
        first = completion_logps(model, **batch_of())
        second = completion_logps(model, **batch_of())
    assert len([w for w in record if "Prefix sharing is off" in str(w.message)]) == 1
    assert_fp32_close(first, expected)
    torch.testing.assert_close(second, first, atol=0, rtol=0)  # the same call twice: same kernels, same order


def test_flash_attention_falls_back():
    model = make_model("llama").eval()
    model.config._attn_implementation = "flash_attention_2"
    blocker = logprobs.prefix_sharing_blocker(model, 10)
    assert blocker is not None and "flash_attention_2" in blocker


def test_sliding_window_shorter_than_the_sequence_falls_back(monkeypatch):
    monkeypatch.setattr(logprobs, "_warned", set())
    model = make_model("mistral").eval()
    model.config.sliding_window = 4
    expected = separate_passes(model)
    with pytest.warns(UserWarning, match="sliding-window"):
        logps = completion_logps(model, **batch_of())
    assert_fp32_close(logps, expected)


def test_chunked_lm_head_gives_the_same_result(monkeypatch):
    model = make_model("gemma2", "eager").eval()  # also exercises the final-logit softcapping
    full, full_grads = value_and_grads(model, lambda: completion_logps(model, **batch_of()))
    monkeypatch.setattr(logprobs, "LOGITS_BUDGET", 7)  # less than one row of the (300) vocabulary: 1 row per chunk
    chunked, chunked_grads = value_and_grads(model, lambda: completion_logps(model, **batch_of()))
    monkeypatch.setattr(logprobs, "LOGITS_BUDGET", 1000)  # 3 rows per chunk, the last one shorter
    blocks = []
    model.lm_head.register_forward_hook(lambda module, args, out: blocks.append(out.shape))
    rows, rows_grads = value_and_grads(model, lambda: completion_logps(model, **batch_of()))
    assert len(blocks) == 2 * 7 and all(shape[0] <= 3 for shape in blocks)  # 21 scored tokens; recomputed once
    with torch.no_grad():
        assert_fp32_close(completion_logps(model, **batch_of()), full)
    assert_fp32_close(chunked, full)
    assert_fp32_close(rows, full)
    assert_grads_close(chunked_grads, full_grads)
    assert_grads_close(rows_grads, full_grads)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    model = make_model("llama").eval()
    expected, expected_grads = value_and_grads(model, lambda: completion_logps(model, **batch_of()))
    # `gradient_checkpointing_enable`, not transformers 5's `activation_checkpointing_enable`: 4.56 lacks the latter
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.train()  # checkpointing is only active in training mode; the tiny llama has no dropout
    logps, grads = value_and_grads(model, lambda: completion_logps(model, **batch_of()))
    assert_fp32_close(logps, expected)
    assert_grads_close(grads, expected_grads)


def test_peft_lora_matches_the_adapted_model():
    from peft import LoraConfig, get_peft_model

    model = make_model("llama").eval()
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    expected, expected_grads = value_and_grads(peft_model, lambda: separate_passes(peft_model))
    logps, grads = value_and_grads(peft_model, lambda: completion_logps(peft_model, **batch_of()))
    assert any("lm_head.lora_" in name for name in grads) and all("lora_" in name for name in grads)
    assert_fp32_close(logps, expected)
    assert_grads_close(grads, expected_grads)
    # The adapter is live: without it the log-probs differ
    with peft_model.disable_adapter():
        assert not torch.allclose(completion_logps(peft_model, **batch_of()).double(), logps, atol=1e-3)


def test_prompt_learning_peft_is_not_supported():
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(make_model("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(NotImplementedError, match="prompt-learning"):
        completion_logps(peft_model, **batch_of())


@pytest.mark.parametrize("mode", ["bf16-weights", "autocast"])
def test_bf16_runs_and_stays_close(mode):
    model = make_model("llama").eval()
    expected = separate_passes(model)
    if mode == "bf16-weights":
        model = model.to(torch.bfloat16)
        context = torch.autocast("cpu", enabled=False)
    else:
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    with context:
        logps, grads = value_and_grads(model, lambda: completion_logps(model, **batch_of()))
    assert logps.dtype == torch.float64 and torch.isfinite(logps).all()  # float32 out, doubled by the helper
    assert all(torch.isfinite(g).all() for g in grads.values())
    # bf16 keeps 8 significant bits (eps = 2**-7): rtol 0.02 is under 3 bf16 eps of the value, atol 0.1 covers the
    # rounding of the ~10-magnitude terms near zero; fp32 bugs (a wrong mask) are still far outside.
    torch.testing.assert_close(logps, expected, atol=0.1, rtol=0.02)


def test_coexists_with_trls_fused_lm_head_in_either_order():
    for trl_first in (True, False):
        model = make_model("llama").eval()
        if trl_first:
            add_fused_lm_head(model)
        add_completion_logps_head(model)
        add_completion_logps_head(model)  # idempotent: no second layer
        if not trl_first:
            add_fused_lm_head(model)
        expected = separate_passes(model)
        assert_fp32_close(completion_logps(model, **batch_of()), expected)
        # TRL's own call still works on the same model
        ids = torch.tensor([PROMPTS[0] + COMPLETIONS[0][0]])
        labels = ids.clone()
        labels[:, : len(PROMPTS[0])] = -100
        trl_logps = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum()
        assert_fp32_close(trl_logps, expected[0, 0])
        # and so does the plain forward
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 300)


def test_deep_copy_of_a_patched_model_uses_its_own_weights():
    model = make_model("llama").eval()
    add_completion_logps_head(model)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in copied.parameters():
            p.mul_(1.5)
    ids = torch.tensor([PROMPTS[0]])
    assert not torch.allclose(copied(ids).logits, model(ids).logits)
    assert_fp32_close(completion_logps(copied, **batch_of()), separate_passes(copied))


def test_deep_copy_after_trls_patch_uses_its_own_weights():
    # The demo's path: ranking patches the model, an SFT trainer adds TRL's fused head on top (a closure over this
    # instance's forward), then the SFT model is deep-copied as the S-DPO reference.
    model = make_model("llama").eval()
    add_completion_logps_head(model)
    add_fused_lm_head(model)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in copied.parameters():
            p.mul_(1.5)
    fresh = make_model("llama").eval()
    with torch.no_grad():
        for p in fresh.parameters():
            p.mul_(1.5)
    expected = separate_passes(fresh)
    assert_fp32_close(completion_logps(copied, **batch_of()), expected)


def test_left_padded_masks_are_rejected_naming_the_row():
    batch = batch_of()
    batch["prompt_attention_mask"][1] = batch["prompt_attention_mask"][1].flip(0)
    with pytest.raises(ValueError, match=r"prompt_attention_mask.*row \(1,\)"):
        completion_logps(make_model("llama"), **batch)


def test_isolation_probe_runs_once_in_eval_mode_and_restores_training_flags():
    model = make_model("lfm2")  # training mode; LFM2's convolution ignores the mask
    model.model.layers[0].eval()  # a module the user left in eval mode stays there
    calls = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: calls.append(m.training))
    reason = logprobs.prefix_sharing_blocker(model)
    assert reason is not None and "conv" in reason  # the layer types are named
    assert logprobs.prefix_sharing_blocker(model) == reason  # cached: no second probe
    assert calls == [False]  # ran once, in eval mode (no dropout difference between the two probe rows)
    assert model.training and model.model.embed_tokens.training and not model.model.layers[0].training
    # A new attention implementation or dtype is probed again
    model.to(torch.bfloat16)
    logprobs.prefix_sharing_blocker(model)
    assert len(calls) == 2
