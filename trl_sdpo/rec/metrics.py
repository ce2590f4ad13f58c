"""Top-k recommendation metrics from candidate scores: HR@k, NDCG@k and MRR over rows with one target each.

Every row has exactly one relevant candidate (the target), so NDCG@k reduces to `1 / log2(rank + 1)` when the target
ranks within the top k, and 0 otherwise (the ideal DCG is 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def target_rank(scores: Sequence[float], target_index: int) -> int:
    """
    1-based rank of the target among the candidates, higher scores first, ties counted against the target.

    A candidate that scores exactly as high as the target is ranked above it, so a model that gives every candidate
    the same score (or a title tokenized identically to the target) never earns a hit by the candidates' order.

    Args:
        scores (`Sequence[float]`): One score per candidate.
        target_index (`int`): Position of the target in `scores`.

    Returns:
        `int`: `1 + ` the number of other candidates scoring at least as high as the target.
    """
    if not 0 <= target_index < len(scores):
        raise ValueError(f"target_index {target_index} is out of range for {len(scores)} candidate scores.")
    target = scores[target_index]
    if math.isnan(target):
        return len(scores)
    return 1 + sum(1 for j, s in enumerate(scores) if j != target_index and not s < target)


def ranking_metrics(ranks: Sequence[int], ks: Sequence[int] = (1, 5), ndcg_k: int = 5) -> dict[str, float]:
    """
    HR@k for each k, NDCG@`ndcg_k` and MRR from the target's 1-based rank in each row.

    Args:
        ranks (`Sequence[int]`): The target's rank in each row.
        ks (`Sequence[int]`, *optional*, defaults to `(1, 5)`): Cut-offs for the hit ratio.
        ndcg_k (`int`, *optional*, defaults to `5`): Cut-off for NDCG.

    Returns:
        `dict[str, float]` with `"hr@{k}"` for each k, `"ndcg@{ndcg_k}"`, `"mrr"` and `"n"` (the row count, an int).
        An empty `ranks` gives 0.0 for every metric.
    """
    n = len(ranks)
    if any(r < 1 for r in ranks):
        raise ValueError(f"Ranks are 1-based; got {min(ranks)}.")
    denominator = max(n, 1)
    metrics: dict[str, float] = {f"hr@{k}": sum(1 for r in ranks if r <= k) / denominator for k in ks}
    metrics[f"ndcg@{ndcg_k}"] = sum(1.0 / math.log2(r + 1) for r in ranks if r <= ndcg_k) / denominator
    metrics["mrr"] = sum(1.0 / r for r in ranks) / denominator
    metrics["n"] = n
    return metrics
