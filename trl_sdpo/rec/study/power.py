"""
How many eval rows a paired comparison needs: the width of the paired 95% interval of a difference between two
methods shrinks as 1/sqrt(rows), with the per-row spread of the difference measured on runs already made (valid).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .analysis import _paired_matrix

Z95 = 1.959964


def rows_needed(
    runs: Iterable[dict[str, Any]], split: str, a: str, b: str, metric: str, half_width: float = 0.02
) -> dict[str, Any]:
    """
    Eval rows for a paired 95% interval of `a - b` on `metric` of about `+-half_width`, from the runs of `split`.

    The per-row difference (averaged over the seeds both methods ran) has sample standard deviation `sd`; the normal
    interval of its mean over `n` rows is `+-1.96 sd / sqrt(n)`, so `n = (1.96 sd / half_width)^2`. With one seed
    measured and several used later, the estimate is conservative (averaging over seeds lowers `sd`).

    Returns:
        `dict` with `sd`, `rows_measured`, `half_width_now` (at the rows measured), `rows_needed`, `seeds`.
    """
    seeds, values_a, values_b = _paired_matrix(list(runs), split, a, b, metric)
    per_row = (values_a - values_b).mean(axis=0)
    n = per_row.size
    sd = float(per_row.std(ddof=1)) if n > 1 else math.nan
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "sd": sd,
        "rows_measured": n,
        "half_width_now": Z95 * sd / math.sqrt(n) if n > 1 else math.nan,
        "rows_needed": math.ceil((Z95 * sd / half_width) ** 2) if n > 1 else None,
        "half_width": half_width,
        "seeds": seeds,
    }
