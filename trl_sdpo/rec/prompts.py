"""
Prompt templates for next-item recommendation, written for this project.

A prompt lists the user's recent items (oldest first) and the candidates, asks for one title, and in standard form
ends with `"Answer:"`; the completion is the target title after one space (`format_completion`). In conversational
form the prompt is one user message without the `"Answer:"` line (the assistant turn plays its part) and the
completion is an assistant message holding the title alone.

Template 0 is the default. `template=None` with an `rng` picks one of the templates per row (paraphrase
augmentation, as the paper's pipeline does with its own templates).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

ANSWER = "Answer:"

# kind -> (singular, plural, what a user did with one)
KINDS = {
    "item": ("item", "items", "interacted with"),
    "movie": ("movie", "movies", "watched"),
    "artist": ("artist", "artists", "listened to"),
    "book": ("book", "books", "read"),
}
DATASET_KINDS = {"movielens": "movie", "lastfm": "artist", "goodreads": "book"}

# Fields: {history} / {candidates} one title a line, {history_inline} / {candidates_inline} quoted and comma
# separated, {kind}, {kinds}, {verb}. The "Answer:" line is added for standard prompts.
TEMPLATES = (
    "The user has recently {verb} these {kinds}, oldest first:\n{history}\n"
    "Candidates:\n{candidates}\n"
    "Which candidate is the user most likely to choose next? Reply with its exact title only.",
    "Here are the last {kinds} a person {verb}, in order: {history_inline}.\n"
    "From these options, pick the one they are most likely to want next: {candidates_inline}.\n"
    "Give only its title.",
    "Recent history ({kinds} {verb}, oldest to newest):\n{history}\n\n"
    "Options:\n{candidates}\n\n"
    "Name the single option this user will pick next.",
    "Predict the next {kind} for a user who has {verb}:\n{history}\n"
    "Choose one of:\n{candidates}\n"
    "Write just the title.",
    "A user's {kinds}, from earliest to latest: {history_inline}.\n"
    "Possible next {kinds}: {candidates_inline}.\n"
    "Which one comes next? Answer with one title from the possible {kinds}.",
    "You are a recommender system. Given the {kinds} a user has {verb} ({history_inline}), select the best next "
    "{kind} from these candidates: {candidates_inline}.\nRespond with the title only.",
)
DEFAULT_TEMPLATE = 0


def build_prompt(
    history_titles: Sequence[str],
    candidate_titles: Sequence[str],
    template: int | None = DEFAULT_TEMPLATE,
    conversational: bool = False,
    rng: random.Random | None = None,
    kind: str = "item",
) -> str | list[dict[str, str]]:
    """
    The prompt for one row.

    Args:
        history_titles (`Sequence[str]`): The user's recent item titles, oldest first.
        candidate_titles (`Sequence[str]`): The candidate titles, in the order shown.
        template (`int` or `None`, *optional*, defaults to `0`):
            Index into `TEMPLATES`; `None` picks one with `rng`.
        conversational (`bool`, *optional*, defaults to `False`):
            Return `[{"role": "user", "content": ...}]` (no "Answer:" line) instead of a string ending with "Answer:".
        rng (`random.Random`, *optional*): Picks the template when `template` is `None`.
        kind (`str`, *optional*, defaults to `"item"`): What the items are: a key of `KINDS`.

    Returns:
        `str` or `list[dict]`: the prompt.
    """
    if template is None:
        if rng is None:
            raise ValueError("`template=None` picks a random paraphrase and needs `rng` (a `random.Random`).")
        template = rng.randrange(len(TEMPLATES))
    if not 0 <= template < len(TEMPLATES):
        raise ValueError(f"`template` must be in [0, {len(TEMPLATES)}) or None, got {template}.")
    if kind not in KINDS:
        raise ValueError(f"Unknown item kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if not candidate_titles:
        raise ValueError("A prompt needs at least one candidate title.")
    singular, plural, verb = KINDS[kind]
    body = TEMPLATES[template].format(
        history="\n".join(f"- {t}" for t in history_titles) or "(none yet)",
        candidates="\n".join(f"- {t}" for t in candidate_titles),
        history_inline=", ".join(f'"{t}"' for t in history_titles) or "none yet",
        candidates_inline=", ".join(f'"{t}"' for t in candidate_titles),
        kind=singular,
        kinds=plural,
        verb=verb,
    )
    if conversational:
        return [{"role": "user", "content": body}]
    return f"{body}\n{ANSWER}"


def format_completion(title: str, conversational: bool = False) -> str | list[dict[str, str]]:
    """
    The completion that answers a prompt with `title`: `" " + title` after a standard prompt's "Answer:" (the space
    belongs to the completion, as word-initial tokens carry it), or an assistant message holding the title.
    """
    if conversational:
        return [{"role": "assistant", "content": title}]
    return f" {title}"
