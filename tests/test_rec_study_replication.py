"""The seed-level analysis of orderings (`trl_sdpo.rec.study.replication`) on synthetic runs written by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_rec_study import write_run

from trl_sdpo.rec.study import load_study
from trl_sdpo.rec.study.replication import (
    judge_ordering,
    load_pipeline_runs,
    seed_level_comparison,
    t_interval,
    t_quantile_975,
    two_level_bootstrap,
    valid_ratio_floor,
    verdicts_markdown,
)


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)])
def test_t_quantiles_are_students(df, quantile):
    # Published two-sided 95% quantiles of Student's t (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
    assert t_quantile_975(df) == pytest.approx(quantile, abs=6e-4)


def test_t_interval_by_hand():
    # mean 0.0117, sample sd of (0.0073, 0.0172, 0.0106) = 0.005036, half-width 4.3027 * sd / sqrt(3) = 0.012511
    low, high = t_interval([0.0073, 0.0172, 0.0106])
    sd = math.sqrt(((0.0073 - 0.0117) ** 2 + (0.0172 - 0.0117) ** 2 + (0.0106 - 0.0117) ** 2) / 2)
    half = 4.3027 * sd / math.sqrt(3)
    assert (low, high) == pytest.approx((0.0117 - half, 0.0117 + half), abs=2e-6)


def test_two_level_bootstrap_reduces_to_each_level():
    rng = np.random.default_rng(0)
    # Rows identical within each seed: only the seeds vary; the interval is that of the mean of 3 values resampled
    constant_rows = np.repeat(np.array([[0.0], [1.0], [2.0]]), 50, axis=1)
    low, high = two_level_bootstrap(constant_rows, n_boot=4000)
    # The mean of 3 draws from {0, 1, 2} is 0 (or 2) with probability 1/27 = 3.7%, more than the 2.5% tails
    assert (low, high) == (0.0, 2.0)
    # Seeds identical: only rows vary. Each of the 3 drawn seeds has its 400 rows resampled on its own, so the mean is
    # over 1,200 independent draws: the normal interval's half-width is 1.96 * sd / sqrt(1200) = 0.057 (sd 1)
    row = rng.normal(0.0, 1.0, size=400)
    low, high = two_level_bootstrap(np.stack([row, row, row]), n_boot=4000)
    half = 1.96 * row.std() / math.sqrt(1200)
    assert low == pytest.approx(row.mean() - half, abs=0.01) and high == pytest.approx(row.mean() + half, abs=0.01)


def _pipeline(tmp_path, a_ranks, b_ranks, heldout=None, method_a="sdpo", method_b="dpo-pairs"):
    """Runs of two methods over seeds, each seed its own list of target ranks."""
    for seed, (ra, rb) in enumerate(zip(a_ranks, b_ranks)):
        write_run(
            tmp_path, "test", method_a, seed, ra, hits=[0] * len(ra), **({"heldout": heldout} if heldout else {})
        )
        write_run(
            tmp_path, "test", method_b, seed, rb, hits=[0] * len(rb), **({"heldout": heldout} if heldout else {})
        )
    return load_study(tmp_path)


MOVED = {"row_accuracy": [1.0] * 90 + [0.0] * 10, "row_margins": [1.0] * 100}


def test_a_difference_on_every_seed_holds(tmp_path):
    # sdpo ranks the target first on 60, 62, 61 of 100 rows; dpo-pairs on 40, 41, 39: +0.20 +0.21 +0.22 on HR@1
    a = [[1] * n + [2] * (100 - n) for n in (60, 62, 61)]
    b = [[1] * n + [2] * (100 - n) for n in (40, 41, 39)]
    runs = _pipeline(tmp_path, a, b, heldout=MOVED)
    verdict = judge_ordering(runs, "test", "sdpo", "dpo-pairs", "ranking/hr@1", n_boot=1000)
    assert verdict.verdict == "holds"
    c = verdict.comparison
    assert c.per_seed_diff == pytest.approx({0: 0.20, 1: 0.21, 2: 0.22})
    assert (c.t_low, c.t_high) == pytest.approx(t_interval([0.20, 0.21, 0.22]))


def test_a_difference_on_rows_that_flips_between_seeds_is_row_level_only(tmp_path):
    # +0.30, +0.30, -0.10 on HR@1: the rows' interval is above 0, the seeds' t-interval is not
    a = [[1] * n + [2] * (100 - n) for n in (80, 80, 40)]
    b = [[1] * n + [2] * (100 - n) for n in (50, 50, 50)]
    verdict = judge_ordering(_pipeline(tmp_path, a, b, heldout=MOVED), "test", "sdpo", "dpo-pairs", "ranking/hr@1")
    assert verdict.comparison.row_low > 0 and verdict.comparison.t_low < 0
    assert verdict.verdict == "row-level only"


def test_a_tight_null_does_not_hold_and_a_wide_one_is_not_tested(tmp_path):
    same = [[1] * 50 + [2] * 50] * 3
    runs = _pipeline(tmp_path / "tight", same, same, heldout=MOVED)
    assert judge_ordering(runs, "test", "sdpo", "dpo-pairs", "ranking/hr@1").verdict == "does not hold"
    a = [[1] * n + [2] * (100 - n) for n in (60, 40, 50)]
    runs = _pipeline(tmp_path / "wide", a, same, heldout=MOVED)
    assert judge_ordering(runs, "test", "sdpo", "dpo-pairs", "ranking/hr@1").verdict.startswith("not tested (interv")


def test_seeds_that_agree_on_too_few_rows_are_not_tested(tmp_path):
    # +0.10 on every seed, but over 10 rows: the seeds agree (t-interval above 0), the rows' interval includes 0
    a = [[1] * 6 + [2] * 4] * 3
    b = [[1] * 5 + [2] * 5] * 3
    a[1] = [2] + a[1][1:6] + [1] + a[1][7:]  # another row moves on seed 1: the seeds' differences still all +0.1
    verdict = judge_ordering(_pipeline(tmp_path, a, b, heldout=MOVED), "test", "sdpo", "dpo-pairs", "ranking/hr@1")
    c = verdict.comparison
    assert c.per_seed_diff == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1}) and c.row_low <= 0
    assert verdict.verdict.startswith("not tested")


def test_an_unmoved_preference_stage_is_not_tested(tmp_path):
    a = [[1] * n + [2] * (100 - n) for n in (60, 62, 61)]
    b = [[1] * n + [2] * (100 - n) for n in (40, 41, 39)]
    chance = {"row_accuracy": [1.0] * 50 + [0.0] * 50, "row_margins": [0.0] * 100}
    verdict = judge_ordering(_pipeline(tmp_path, a, b, heldout=chance), "test", "sdpo", "dpo-pairs", "ranking/hr@1")
    assert verdict.verdict == "not tested (the preference stage did not move the model)"


def test_fewer_seeds_than_required_are_not_tested(tmp_path):
    a = [[1] * 60 + [2] * 40] * 2
    b = [[1] * 40 + [2] * 60] * 2
    verdict = judge_ordering(_pipeline(tmp_path, a, b, heldout=MOVED), "test", "sdpo", "dpo-pairs", "ranking/hr@1")
    assert verdict.verdict == "not tested (runs missing: 2 of 3 seeds)"


def test_a_one_seed_table_shows_no_seed_level_interval_instead_of_nan(tmp_path):
    # One seed: the row level is computable (HR@1 0.6 against 0.4 on 100 rows), the seed level is not
    a = [[1] * 60 + [2] * 40]
    b = [[1] * 40 + [2] * 60]
    verdict = judge_ordering(_pipeline(tmp_path, a, b, heldout=MOVED), "test", "sdpo", "dpo-pairs", "ranking/hr@1")
    cells = [cell.strip() for cell in verdicts_markdown([verdict]).splitlines()[-1].split("|")[1:-1]]
    assert cells[2:6] == ["+0.2000", "+0.2000", "—", "—"]
    assert cells[6].startswith("[+") and "nan" not in verdict.evidence


def test_valid_ratio_difference_and_floor(tmp_path):
    ranks = [1] * 10
    for seed in range(3):
        write_run(tmp_path, "test", "sdpo", seed, ranks, hits=[0] * 10, valid=[1] * 9 + [0], heldout=MOVED)
        write_run(tmp_path, "test", "dpo", seed, ranks, hits=[0] * 10, valid=[1] * 10, heldout=MOVED)
    runs = load_study(tmp_path)
    c = seed_level_comparison(runs, "test", "sdpo", "dpo", "generation/valid_ratio", n_boot=500)
    assert c.mean_diff == pytest.approx(-0.1)
    floor = {method: ok for method, ok, _ in valid_ratio_floor(runs, methods=("sdpo", "dpo"))}
    assert floor == {"sdpo": False, "dpo": True}  # 0.90 and 1.00 against 0.95


def test_forest_plot_draws_both_intervals_of_each_ordering(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from trl_sdpo.rec.study.plots import plot_orderings
    from trl_sdpo.rec.study.replication import replicated_verdicts

    a = [[1] * n + [2] * (100 - n) for n in (60, 62, 61)]
    b = [[1] * n + [2] * (100 - n) for n in (40, 41, 39)]
    verdicts = replicated_verdicts(_pipeline(tmp_path, a, b, heldout=MOVED), orderings=[("sdpo", "dpo-pairs")])
    figure = plot_orderings(verdicts)
    (ax,) = figure.axes
    assert len(ax.get_yticklabels()) == 2  # NDCG@5 and HR@1
    intervals = sorted(tuple(line.get_xdata()) for line in ax.lines if line.get_color() in ("tab:blue", "tab:red"))
    expected = sorted((c.row_low, c.row_high) for c in (v.comparison for v in verdicts))
    expected += sorted((c.t_low, c.t_high) for c in (v.comparison for v in verdicts))
    assert intervals == sorted(expected)


def test_a_replicated_study_borrows_only_the_same_trainings_seed_0(tmp_path):
    """Seed 0 comes from the other folder only where the study lacks it and the recorded settings match its own
    run of the method at another seed; a seed the study has, a method it does not run, and another seed stay its
    own; other settings raise, naming both files."""
    study, other = tmp_path / "study", tmp_path / "other"
    same = {"model": "tiny", "lr": 1e-4}
    for seed in (1, 2):
        write_run(study, "test", "sdpo", seed, [1, 2], preset="replicated", config=same)
    write_run(study, "test", "dpo", 0, [2, 2], preset="replicated", config=same)
    write_run(study, "valid", "sdpo", 0, [1, 1], preset="replicated", config=same)
    write_run(other, "test", "sdpo", 0, [3, 3], preset="study", config={**same, "bf16": True})  # bf16 aside
    write_run(other, "test", "sdpo", 1, [4, 4], preset="study", config=same)  # the study has seed 1
    write_run(other, "test", "dpo", 0, [4, 4], preset="study", config=same)  # ... and dpo's seed 0
    write_run(other, "test", "sft", 0, [4, 4], preset="study", config=same)  # a method the study does not run

    assert load_pipeline_runs(tmp_path / "absent", other) == []
    runs = load_pipeline_runs(study, other, split="test")
    got = {(r["method"], r["seed"]): (r["preset"], r["rows"]["target_rank"], r.get("borrowed_from")) for r in runs}
    assert got == {
        ("sdpo", 0): ("study", [3, 3], str(other / "test" / "sdpo" / "seed0.json")),
        ("sdpo", 1): ("replicated", [1, 2], None),
        ("sdpo", 2): ("replicated", [1, 2], None),
        ("dpo", 0): ("replicated", [2, 2], None),
    }
    assert [r["split"] for r in load_pipeline_runs(study)] == ["test"] * 3 + ["valid"]  # nothing borrowed

    write_run(other, "test", "sdpo", 0, [3, 3], preset="study", config={**same, "lr": 3e-4})
    with pytest.raises(ValueError, match="seed0.json cannot stand for .*other settings"):
        load_pipeline_runs(study, other)
