"""Tiny models and a tokenizer built in-process: no download, no file from a hub.

Every test that needs a model or a tokenizer takes them from here.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

_CORPUS = [
    "The user has watched the following movies before: Toy Story, Heat, Casino, Sabrina, Jumanji.",
    "Given the candidates: Fargo, Babe, Clueless, Twister, Braveheart, Apollo 13, Star Wars, Batman Forever.",
    "Which movie would the user like to watch next? Answer: The Godfather",
    "Recommend one artist from the list. Answer: Radiohead, Coldplay, Muse, Blur, Oasis, Pulp, Madonna",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ' \" ( ) -",
    "hello world good bad yes no red green blue cat dog bird fish sun moon star",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@functools.cache
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocabulary ~300) with pad, eos and a small chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", num_key_value_heads=2, **_COMMON),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, **_COMMON),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=None, **_COMMON),
    "gemma": dict(model_type="gemma", num_key_value_heads=2, head_dim=8, **_COMMON),
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=8, sliding_window=4096, **_COMMON),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=512),
    # Gemma 3: a sliding-window layer then a global one; the window (16) is shorter than some test rows, so those
    # batches take the rows layout and the others the shared row
    "gemma3": dict(
        model_type="gemma3_text",
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        **_COMMON,
    ),
    # Hybrids whose sequence mixers ignore the attention mask: a short convolution (LFM2), a Mamba2 layer (Nemotron-H)
    "lfm2": dict(model_type="lfm2", num_key_value_heads=2, layer_types=["conv", "full_attention"], **_COMMON),
    "nemotron_h": dict(
        model_type="nemotron_h",
        num_key_value_heads=2,
        hybrid_override_pattern="M*",
        mamba_num_heads=4,
        mamba_head_dim=8,
        ssm_state_size=8,
        n_groups=1,
        chunk_size=16,
        **_COMMON,
    ),
    "jamba": dict(
        model_type="jamba",
        num_key_value_heads=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        mamba_d_state=8,
        mamba_dt_rank=4,
        router_aux_loss_coef=0.0,
        **_COMMON,
    ),
    "falcon_h1": dict(
        model_type="falcon_h1",
        num_key_value_heads=2,
        mamba_d_ssm=32,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_d_state=8,
        mamba_n_groups=1,
        mamba_chunk_size=16,
        **_COMMON,
    ),
    "qwen3_next": dict(
        model_type="qwen3_next",
        num_key_value_heads=2,
        head_dim=8,
        layer_types=["linear_attention", "full_attention"],
        linear_num_value_heads=2,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        **_COMMON,
    ),
}


def make_model(
    arch: str = "llama",
    attn_implementation: str = "sdpa",
    seed: int = 0,
    vocab_size: int | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
):
    """A randomly initialized tiny causal LM of the given family, in fp32, in eval mode off (training mode)."""
    from transformers import AutoConfig

    tokenizer = tokenizer or make_tokenizer()
    spec = dict(CONFIGS[arch])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size or len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model
