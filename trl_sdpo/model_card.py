"""What a model card says beyond TRL's: that trl-sdpo trained the model, its version, and the S-DPO settings.

TRL writes the card (`trl.trainer.utils.generate_model_card`: the method, its paper and citation, the framework
versions, the tags). These functions add to that card rather than replace it, so that TRL's later changes to its
template still reach our cards: a `trl-sdpo` settings section and a `trl-sdpo` line in the framework versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from . import __version__

# SDPOTrainer's tags. Not the bare `sdpo`: on the Hub it names the models of TRL's unrelated self-distillation trainer.
SDPO_TAGS = ("trl", "softmax-dpo", "trl-sdpo")
SDPO_PAPER = {
    "title": "On Softmax Direct Preference Optimization for Recommendation",
    "id": "2406.09215",
    "citation": (
        "@inproceedings{chen2024softmax,\n"
        "    title   = {{On Softmax Direct Preference Optimization for Recommendation}},\n"
        "    author  = {Yuxin Chen and Junfei Tan and An Zhang and Zhengyi Yang and Leheng Sheng and Enzhi Zhang"
        " and Xiang Wang and Tat-Seng Chua},\n"
        "    booktitle = {Advances in Neural Information Processing Systems},\n"
        "    year    = 2024\n"
        "}"
    ),
}
# What each `ranking_loss` sets the chosen completion against, for a reader of the card
_RANKING_LOSS_SUMMARY = {
    "softmax": "S-DPO: the chosen completion against all k negatives at once",
    "pairwise": "DPO's loss on each (chosen, rejected) pair, averaged per prompt",
    "plackett_luce": "the likelihood of the ranking chosen > rejected[0] > rejected[1] > ...",
}
_FRAMEWORK_VERSIONS = "### Framework versions\n"
# TRL's template renders a model loaded from a local folder (no Hub id) and a model not pushed (no repo id) as `None`
_NO_BASE_MODEL = "a fine-tuned version of [None](https://huggingface.co/None)"
_NO_REPO_ID = 'model="None"'


def sdpo_settings(args: Any, max_negatives: int = 0) -> dict[str, str]:
    """
    The S-DPO settings a model card lists, from an [`SDPOConfig`].

    Args:
        args ([`SDPOConfig`]): The training configuration.
        max_negatives (`int`, *optional*, defaults to `0`): The widest k of the training rows, when `num_negatives`
            is `None` and it is known; `0` when it is not.

    Returns:
        `dict[str, str]`: setting name -> value, in the card's order.
    """
    if args.num_negatives is not None:
        negatives = str(args.num_negatives)
    else:
        negatives = "each row's own" + (f" (up to {max_negatives})" if max_negatives else "")
    loss_types = list(args.loss_type)
    if len(loss_types) > 1 and args.loss_weights is not None:
        loss_types = [f"{name} x {weight}" for name, weight in zip(loss_types, args.loss_weights, strict=True)]
    return {
        "Ranking loss": f"`{args.ranking_loss}` ({_RANKING_LOSS_SUMMARY.get(args.ranking_loss, 'see trl_sdpo.loss')})",
        "Negatives per prompt (k)": negatives,
        "beta": f"{args.beta:g}",
        "loss_type": ", ".join(f"`{name}`" for name in loss_types),
        "Learning rate": f"{args.learning_rate:g}",
    }


def add_trl_sdpo_details(
    card: ModelCard, method: str, settings: dict[str, str], model_name: str | None = None
) -> None:
    """
    Add to a card TRL generated: a `trl-sdpo` section with `settings`, and trl-sdpo's version in the framework list.

    The section goes just above TRL's "Framework versions" (inside its "Training procedure"), or at the end when the
    template has no such heading. A base model or repository TRL could not name (a local folder, a model not pushed)
    is written as such, not as a link to `huggingface.co/None`.

    Args:
        card (`huggingface_hub.ModelCard`): The card, changed in place.
        method (`str`): The training method, e.g. `"S-DPO"`.
        settings (`dict[str, str]`): Rows of the settings table.
        model_name (`str`, *optional*): Used in the quick start when the card has no repository id.
    """
    rows = "\n".join(f"| {name} | {value} |" for name, value in settings.items())
    section = (
        f"### trl-sdpo\n\nTrained with {method} by trl-sdpo {__version__}, the TRL plugin for Softmax-DPO "
        f"(`pip install trl-sdpo`).\n\n| Setting | Value |\n|---|---|\n{rows}\n\n"
    )
    text = card.text
    if _FRAMEWORK_VERSIONS in text:
        head, tail = text.split(_FRAMEWORK_VERSIONS, 1)
        text = f"{head}{section}{_FRAMEWORK_VERSIONS}\n- trl-sdpo: {__version__}\n{tail.lstrip(chr(10))}"
    else:
        text = f"{text.rstrip()}\n\n{section}"
    text = text.replace(_NO_BASE_MODEL, "a fine-tuned version of a local model (no Hub id)")
    if model_name:
        text = text.replace(_NO_REPO_ID, f'model="{model_name}"')
    card.text = text
    tags = list(card.data.tags or [])
    card.data.tags = tags + [tag for tag in ("trl-sdpo",) if tag not in tags]


def add_sdpo_details(card: ModelCard, args: Any, max_negatives: int = 0, model_name: str | None = None) -> None:
    """[`add_trl_sdpo_details`] for an S-DPO run configured by `args` (an [`SDPOConfig`])."""
    add_trl_sdpo_details(card, "S-DPO", sdpo_settings(args, max_negatives), model_name)


def write_model_card(
    output_dir: str,
    *,
    method: str,
    settings: dict[str, str],
    tags: list[str],
    base_model: str | None = None,
    paper: dict[str, str] | None = None,
    hub_model_id: str | None = None,
) -> Path:
    """
    Write `output_dir/README.md` for a model saved without its trainer (the `trl-sdpo sft` and `train` commands):
    TRL's card for `method` plus [`add_trl_sdpo_details`].

    Args:
        output_dir (`str`): The saved model's folder.
        method (`str`): The training method, e.g. `"SFT"` or `"S-DPO"`.
        settings (`dict[str, str]`): Rows of the settings table.
        tags (`list[str]`): The card's tags (TRL adds `generated_from_trainer`).
        base_model (`str`, *optional*): The Hub id of the starting model; `None` for a local folder.
        paper (`dict`, *optional*): `title`, `id` (arXiv) and `citation` of the method's paper.
        hub_model_id (`str`, *optional*): The repository the model is pushed to.

    Returns:
        `Path`: the card's path.
    """
    from trl.trainer.utils import generate_model_card

    paper = paper or {}
    model_name = Path(output_dir).name
    card = generate_model_card(
        base_model=base_model,
        model_name=model_name,
        hub_model_id=hub_model_id,
        dataset_name=None,
        tags=list(tags),
        wandb_url=None,
        trackio_url=None,
        trainer_name=method,
        trainer_citation=paper.get("citation"),
        paper_title=paper.get("title"),
        paper_id=paper.get("id"),
    )
    add_trl_sdpo_details(card, method, settings, model_name)
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path
