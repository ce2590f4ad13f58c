"""`commands.common.evaluate_model(show_progress=...)` reaches both evaluations (it was accepted and dropped)."""

from __future__ import annotations

import pytest
import torch

from trl_sdpo.commands.args import EvalArguments
from trl_sdpo.commands.common import evaluate_model


@pytest.fixture
def received(monkeypatch) -> dict[str, bool]:
    """Stand-ins for the two evaluations that record the `show_progress` each was called with."""
    from trl_sdpo.rec import evaluate, ranking

    seen: dict[str, bool] = {}

    def generation(*args, show_progress=True, **kwargs):
        seen["generation"] = show_progress
        return {}

    def rank(*args, show_progress=True, **kwargs):
        seen["ranking"] = show_progress
        return {"records": []}

    monkeypatch.setattr(evaluate, "evaluate_generation", generation)
    monkeypatch.setattr(ranking, "evaluate_ranking", rank)
    return seen


@pytest.mark.parametrize("show_progress", [False, True])
def test_show_progress_reaches_generation_and_ranking(received, show_progress):
    evaluate_model(torch.nn.Linear(1, 1), None, [], EvalArguments(), show_progress=show_progress)
    assert received == {"generation": show_progress, "ranking": show_progress}
