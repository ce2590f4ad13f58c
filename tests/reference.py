"""Independent reference computations that tests compare the library against."""

import torch


def float64_sequence_logp(model, tokenizer, prompt, completion):
    """Log-prob of `completion` (+EOS) after `prompt` from one plain forward pass, in float64."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].double()
    logprobs = logits.log_softmax(-1)
    return sum(logprobs[t - 1, full[t]].item() for t in range(len(prompt_ids), len(full)))
