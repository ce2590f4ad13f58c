"""Study analysis on synthetic run JSONs: metrics, mean ± std and paired bootstrap checked against hand computations."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from trl_sdpo.cli import main
from trl_sdpo.rec.study import (
    compare_methods,
    load_study,
    paired_bootstrap,
    rank_agreement,
    row_values,
    run_difference,
    summary_table,
)
from trl_sdpo.rec.study.analysis import machine_seconds
from trl_sdpo.rec.study.claims import claim_check, describe_claims
from trl_sdpo.rec.study.report import results_markdown

MACHINE = {
    "cpu_model": "Test CPU 9000",
    "avx512": True,
    "cpu_flags": ["avx2", "fma", "avx512f"],
    "logical_cpus": 2,
    "torch_threads": 2,
    "gpu": None,
    "platform": "Linux",
}
BASELINES = ("random", "popular", "sasrec")


def _metrics_from(ranks, hits, valid):
    # Written out here rather than taken from trl_sdpo, so the loader's consistency check is tested against it.
    n = len(ranks)
    ranking = {
        "hr@1": sum(r == 1 for r in ranks) / n,
        "hr@5": sum(r <= 5 for r in ranks) / n,
        "ndcg@5": sum(1 / math.log2(r + 1) for r in ranks if r <= 5) / n,
        "mrr": sum(1 / r for r in ranks) / n,
        "n": n,
    }
    generation = None
    if hits is not None:
        generation = {"hr@1": sum(hits) / n, "valid_ratio": sum(valid) / n, "n": n}
        generation.update({"hr@1/strict": generation["hr@1"], "valid_ratio/strict": generation["valid_ratio"]})
    return {"generation": generation, "ranking": ranking}


def write_run(root: Path, split, method, seed, ranks, hits=None, valid=None, ids=None, **extra) -> Path:
    """One schema-1 run JSON at <root>/<split>/<method>/seed<seed>.json."""
    kind = extra.pop("kind", method)
    if hits is not None and valid is None:
        valid = [1] * len(ranks)
    run = {
        "schema": 1,
        "study": "synthetic",
        "preset": extra.pop("preset", "smoke"),
        "method": method,
        "kind": kind,
        "seed": seed,
        "split": split,
        "config": extra.pop("config", {"model": "tiny", "train": {"lr": 1e-4, "seed": seed}}),
        "metrics": _metrics_from(ranks, hits, valid),
        "rows": {
            "ids": ids or [f"{split}:{i}" for i in range(len(ranks))],
            "target_rank": list(ranks),
            "generation_hit": hits,
            "generation_valid": valid if hits is not None else None,
        },
        "log_history": extra.pop("log_history", []),
        "timings_s": extra.pop(
            "timings_s", {"train": 10.0, "eval_generation": 2.0, "eval_ranking": 1.0, "total": 13.0}
        ),
        "versions": {"python": "3.12", "torch": "2.13.0"},
        "machine": MACHINE,
        "created": "2026-01-01T00:00:00",
    }
    run.update(extra)
    path = root / split / method / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))
    return path


def test_wall_time_is_the_runs_own_stages_not_its_last_calls_total(tmp_path):
    # Resumed in a second call: training over both sittings 100 s, evaluation 5 + 7 s; that call's own total 40 s.
    write_run(
        tmp_path,
        "test",
        "dpo",
        0,
        [1, 2],
        timings_s={"train": 100.0, "eval_generation": 5.0, "eval_ranking": 7.0, "total": 40.0},
    )
    # Trained in an earlier call (the other split): the call only evaluated, 9 s in all.
    write_run(
        tmp_path,
        "test",
        "dpo",
        1,
        [1, 2],
        timings_s={"train": 200.0, "eval_generation": 4.0, "eval_ranking": 4.0, "total": 9.0},
    )
    # A baseline's scoring is no stage of its own: its total counts.
    write_run(tmp_path, "test", "popular", 0, [3, 1], timings_s={"train": 0.5, "total": 2.0})
    table = {e["method"]: e for e in summary_table(load_study(tmp_path), "test")}
    assert table["dpo"]["time/total"] == pytest.approx((160.0, math.sqrt(2 * 48.0**2)), abs=1e-9)
    assert table["popular"]["time/total"][0] == 2.0
    every_run = results_markdown(tmp_path).split("Every run:")[1]
    assert "| test | dpo | 0 |" in every_run and "| 112 |" in every_run and "| 208 |" in every_run


def test_machine_seconds_counts_each_call_and_each_sitting_outside_the_calls_once(tmp_path):
    def sitting(started, seconds):
        return {"started": f"2026-01-01T{started}+00:00", "seconds": seconds, "resumed_from": None}

    sft_cut, sft_in_a = sitting("07:00:00", 1000.0), sitting("09:00:10", 500.0)  # SFT: a cut call, then A's call
    sdpo_model = sitting("09:10:00", 2000.0)  # trained in A's call, evaluated again by B
    dpo_cut, dpo_in_c = sitting("12:30:00", 300.0), sitting("13:43:30", 800.0)

    def landed(split, method, seed, created, total, sittings, **extra):
        write_run(
            tmp_path, split, method, seed, [1, 2], created=f"2026-01-01T{created}+00:00",
            timings_s={"train": None, "eval_ranking": 1.0, "total": total}, sittings=sittings, **extra,
        )  # fmt: skip

    landed("valid", "sdpo", 0, "10:00:00", 3600.0, [sdpo_model], sft_sittings=[sft_cut, sft_in_a])
    landed("test", "sdpo", 0, "12:00:00", 100.0, [sdpo_model], sft_sittings=[sft_cut, sft_in_a])
    landed("valid", "dpo", 0, "14:00:00", 1000.0, [dpo_cut, dpo_in_c], sft_sittings=[sft_cut, sft_in_a])
    for seed in (0, 1):  # one evaluation, copied to every seed
        landed("valid", "base", seed, "06:00:00", 50.0, [], seed_independent=True)
    # Calls: 3600 + 100 + 1000 + 50 (base once). Outside every call: the SFT's and DPO's cut sittings, once each.
    assert machine_seconds(load_study(tmp_path)) == {"calls": 4750.0, "other_sittings": 1300.0, "total": 6050.0}


def test_row_metrics_match_hand_computation(tmp_path):
    write_run(tmp_path, "test", "sft", 0, [1, 2, 5, 6], hits=[1, 0, 0, 1], valid=[1, 1, 0, 1])
    (run,) = load_study(tmp_path)
    assert row_values(run, "ranking/hr@1").tolist() == [1, 0, 0, 0]
    assert row_values(run, "ranking/hr@5").tolist() == [1, 1, 1, 0]
    # 1/log2(2) = 1, 1/log2(3) = 0.630930, 1/log2(6) = 0.386853, rank 6 is outside the top 5.
    np.testing.assert_allclose(row_values(run, "ranking/ndcg@5"), [1.0, 0.6309297535714575, 0.38685280723454163, 0.0])
    np.testing.assert_allclose(row_values(run, "ranking/mrr"), [1.0, 0.5, 0.2, 1 / 6])
    assert row_values(run, "generation/hr@1").tolist() == [1, 0, 0, 1]
    assert row_values(run, "generation/valid_ratio").tolist() == [1, 1, 0, 1]


def test_summary_mean_and_sample_std_over_seeds(tmp_path):
    # ranking HR@1 0.25, 0.5, 0.75 -> mean 0.5, sample std sqrt((0.25^2 + 0 + 0.25^2) / 2) = 0.25.
    # ValidRatio 1.0, 0.75, 0.5 -> mean 0.75, std 0.25. Wall time 10, 20, 60 -> mean 30, std sqrt((400+100+900)/2).
    for seed, (ranks, valid, total) in enumerate(
        [([1, 2, 2, 2], [1, 1, 1, 1], 10.0), ([1, 1, 3, 3], [1, 1, 1, 0], 20.0), ([1, 1, 1, 9], [1, 1, 0, 0], 60.0)]
    ):
        write_run(tmp_path, "test", "dpo", seed, ranks, hits=[0, 0, 0, 0], valid=valid, timings_s={"total": total})
    write_run(tmp_path, "test", "popular", 0, [3, 3, 3, 1])
    for seed in (0, 1):  # evaluated once, copied to every seed
        write_run(tmp_path, "test", "base", seed, [1, 2, 2, 2], seed_independent=True)
    write_run(tmp_path, "valid", "dpo", 0, [1, 1, 1, 1])
    table = summary_table(load_study(tmp_path), "test")
    assert [e["method"] for e in table] == ["base", "dpo", "popular"]
    base, dpo, popular = table
    assert base["n_seeds"] == 1 and base["seeds"] == [0, 1] and base["seed_independent"]
    assert base["ranking/hr@1"][0] == 0.25 and math.isnan(base["ranking/hr@1"][1])
    assert dpo["n_seeds"] == 3 and dpo["seeds"] == [0, 1, 2]
    assert dpo["ranking/hr@1"] == pytest.approx((0.5, 0.25), abs=1e-12)
    assert dpo["generation/valid_ratio"] == pytest.approx((0.75, 0.25), abs=1e-12)
    assert dpo["time/total"] == pytest.approx((30.0, math.sqrt(700.0)), abs=1e-12)
    # MRR: seed 0 (1 + 3 * 0.5) / 4 = 0.625, seed 1 (2 + 2/3) / 4 = 0.666667, seed 2 (3 + 1/9) / 4 = 0.777778.
    mrrs = [0.625, (2 + 2 / 3) / 4, (3 + 1 / 9) / 4]
    mean = sum(mrrs) / 3
    std = math.sqrt(sum((m - mean) ** 2 for m in mrrs) / 2)
    assert dpo["ranking/mrr"] == pytest.approx((mean, std), abs=1e-12)
    # One seed: no std; a baseline has no generation metrics.
    assert popular["ranking/hr@1"][0] == 0.25 and math.isnan(popular["ranking/hr@1"][1])
    assert all(math.isnan(v) for v in popular["generation/hr@1"])


def _two_methods(root: Path, n: int, hits_a: list[list[int]], hits_b: list[list[int]]):
    for seed, (ha, hb) in enumerate(zip(hits_a, hits_b)):
        write_run(root, "test", "sdpo", seed, [1 if h else 2 for h in ha])
        write_run(root, "test", "dpo", seed, [1 if h else 2 for h in hb])


def test_bootstrap_interval_excludes_zero_for_a_clear_gain(tmp_path):
    n = 200
    # a hits rows [0, 150 + s), b hits rows [0, 50 - s): per-seed differences (100 + 2s) / 200 = 0.50, 0.51, 0.52.
    hits_a = [[int(i < 150 + s) for i in range(n)] for s in range(3)]
    hits_b = [[int(i < 50 - s) for i in range(n)] for s in range(3)]
    _two_methods(tmp_path, n, hits_a, hits_b)
    c = paired_bootstrap(load_study(tmp_path), "test", "sdpo", "dpo", "ranking/hr@1")
    assert c.seeds == [0, 1, 2] and c.n_rows == n
    assert c.per_seed_diff == pytest.approx({0: 0.50, 1: 0.51, 2: 0.52}, abs=1e-12)
    assert (c.seed_mean, c.seed_sigma) == pytest.approx((0.51, 0.01), abs=1e-12)
    assert c.mean_diff == pytest.approx(0.51, abs=1e-12)
    assert c.ci_low > 0 and c.excludes_zero and c.beyond_2_sigma
    # Independent check of the interval's width: per-row differences averaged over seeds, their population std over
    # sqrt(n) is the bootstrap standard error; a 95% percentile interval spans about 2 x 1.96 of it.
    d = (np.array(hits_a) - np.array(hits_b)).mean(axis=0)
    se = d.std() / math.sqrt(n)
    assert (c.ci_high - c.ci_low) / (2 * 1.96) == pytest.approx(se, rel=0.1)
    assert c.ci_low < 0.51 < c.ci_high


def test_bootstrap_interval_includes_zero_when_methods_swap_rows(tmp_path):
    n = 120
    # a hits rows 0..39, b hits rows 20..59: +1 on 20 rows, -1 on 20 rows, mean difference exactly 0.
    _two_methods(tmp_path, n, [[int(i < 40) for i in range(n)]], [[int(20 <= i < 60) for i in range(n)]])
    c = paired_bootstrap(load_study(tmp_path), "test", "sdpo", "dpo", "ranking/hr@1", n_boot=2000, seed=1)
    assert c.mean_diff == 0.0 and c.ci_low < 0 < c.ci_high and not c.excludes_zero
    assert math.isnan(c.seed_sigma) and not c.beyond_2_sigma  # one seed: no seed-sigma


def test_bootstrap_pairs_only_shared_seeds(tmp_path):
    # dpo has seeds 0 and 1, sdpo only seed 1: the comparison uses seed 1 alone.
    write_run(tmp_path, "test", "dpo", 0, [1, 1, 1, 1])
    write_run(tmp_path, "test", "dpo", 1, [2, 2, 1, 1])
    write_run(tmp_path, "test", "sdpo", 1, [1, 1, 1, 1])
    c = paired_bootstrap(load_study(tmp_path), "test", "sdpo", "dpo", "ranking/hr@1", n_boot=100)
    assert c.seeds == [1] and c.mean_diff == 0.5


def test_mismatched_row_ids_are_refused(tmp_path):
    write_run(tmp_path, "test", "dpo", 0, [1, 2, 3])
    write_run(tmp_path, "test", "sdpo", 0, [1, 2, 3], ids=["test:0", "test:2", "test:1"])
    with pytest.raises(ValueError, match=r"Row ids differ .*first at position 1"):
        paired_bootstrap(load_study(tmp_path), "test", "sdpo", "dpo", "ranking/hr@1")


def test_two_runs_of_any_seeds_compare_row_by_row(tmp_path):
    # Two seeds of one method: paired_bootstrap pairs by seed and cannot take them; run_difference and rank_agreement do.
    write_run(tmp_path, "valid", "sft", 0, [1, 2, 3, 4, 7], hits=[1, 0, 0, 1, 0])
    write_run(tmp_path, "valid", "sft", 1, [1, 3, 3, 10, 6])
    seed0, seed1 = load_study(tmp_path)
    d = run_difference(seed1, seed0, "ranking/mrr", n_boot=500)
    # Hand computation: mean(1/rank) of each run
    mrr1, mrr0 = (1 + 1 / 3 + 1 / 3 + 1 / 10 + 1 / 6) / 5, (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 7) / 5
    assert (d["a"], d["b"], d["rows"]) == (pytest.approx(mrr1), pytest.approx(mrr0), 5)
    assert d["diff"] == pytest.approx(mrr1 - mrr0) and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert run_difference(seed0, seed1, "generation/hr@1") is None  # seed 1 has no generation data
    agree = rank_agreement(seed1, seed0)
    # Gaps 0, 1, 0, 6, 1: same rank on 2 of 5 rows, within one place on 4, mean gap 8/5
    assert (agree["rows"], agree["same_rank"], agree["within_one"]) == (5, 0.4, 0.8)
    assert agree["mean_abs_rank_diff"] == pytest.approx(1.6)
    # An independent Pearson correlation
    assert agree["rank_correlation"] == pytest.approx(statistics.correlation([1, 3, 3, 10, 6], [1, 2, 3, 4, 7]))
    write_run(
        tmp_path, "valid", "sft", 2, [1, 2, 3, 4, 7], ids=["valid:0", "valid:1", "valid:3", "valid:2", "valid:4"]
    )
    other = load_study(tmp_path)[2]
    for compare in (rank_agreement, lambda a, b: run_difference(a, b, "ranking/hr@1")):
        with pytest.raises(ValueError, match=r"Row ids differ .*first at position 2"):
            compare(seed0, other)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema": 2}, "'schema' is 2"),
        ({"seed": 3}, "does not match its place"),
        ({"kind": "ppo"}, "'kind' is 'ppo'"),
        ({"metrics": {"generation": None, "ranking": {"hr@1": 0.9}}}, r"'metrics.ranking.hr@1' = 0.9"),
        ({"rows": [1, 2]}, "'rows' must be a JSON object"),
    ],
)
def test_bad_run_json_is_refused_naming_the_field(tmp_path, change, message):
    path = write_run(tmp_path, "test", "dpo", 0, [1, 2])
    run = json.loads(path.read_text())
    run.update(change)
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match=message):
        load_study(tmp_path)


def test_checkpoints_and_partial_files_are_not_runs(tmp_path):
    write_run(tmp_path, "test", "dpo", 0, [1, 2])
    (tmp_path / "checkpoints" / "seed0").mkdir(parents=True)
    (tmp_path / "checkpoints" / "seed0" / "seed0.json").write_text("{}")
    (tmp_path / "test" / "dpo" / "seed1.json.tmp").write_text("{")  # a run killed while writing
    assert [run["path"] for run in load_study(tmp_path)] == [str(tmp_path / "test" / "dpo" / "seed0.json")]


def test_mixed_presets_in_one_method_are_refused(tmp_path):
    write_run(tmp_path, "test", "dpo", 0, [1, 2], preset="cpu")
    write_run(tmp_path, "test", "dpo", 1, [1, 2], preset="smoke")
    with pytest.raises(ValueError, match="several presets"):
        load_study(tmp_path)


def _heldout(accuracy: float, margin: float, rows: int = 50) -> dict:
    """Held-out reward statistics as the runner writes them: `accuracy` of the rows have all pairs right."""
    wins = [1.0 if i < accuracy * rows else 0.0 for i in range(rows)]
    return {"accuracy": accuracy, "margin": margin, "rows": rows, "row_accuracy": wins, "row_margins": [margin] * rows}


def _claim_study(root: Path, seeds=(0, 1, 2), valid_ratio_sft: int = 40, dpo_hits=20, heldout=(0.8, 1.0)):
    n = 40
    for s in seeds:
        # HR@1 hits: sdpo 30 + s, dpo 20, sft-continued 10 - s, popular 5 (of 40 rows); ranks 1 or 7.
        hits_of = (("sdpo", 30 + s), ("dpo", dpo_hits), ("sft-continued", 10 - s), ("sft", 10), ("popular", 5))
        for method, hits in hits_of:
            ranks = [1 if i < hits else 7 for i in range(n)]
            gen = None if method == "popular" else [0] * n
            valid = [1] * n if method != "sft" else [int(i < valid_ratio_sft) for i in range(n)]
            extra = {"heldout": _heldout(*heldout)} if method in ("dpo", "sdpo") and heldout else {}
            write_run(root, "test", method, s, ranks, hits=gen, valid=valid if gen else None, **extra)


def test_claim_check_holds_for_a_clear_ordering(tmp_path):
    _claim_study(tmp_path)
    parts = claim_check(load_study(tmp_path), "test", n_boot=2000)
    assert [p.holds for p in parts] == [True] * len(parts)
    assert len(parts) == 1 + 4 + 4 + 2  # the precondition (the stage moved the model), then the claim's parts
    assert parts[0].verdict == "met"
    assert describe_claims(parts).startswith("The claim holds in every part.")


def test_claim_check_states_failures_untested_parts_and_missing_runs(tmp_path):
    # One seed: no seed-sigma, so no ordering passes its 2-sigma rule: "not tested", not "does not hold". DPO equal
    # to SFT-continued on every row: the interval [0, 0] excludes an advantage of 0.02, "does not hold".
    _claim_study(tmp_path, seeds=(0,), valid_ratio_sft=36, dpo_hits=10)
    for path in (tmp_path / "test" / "popular").iterdir():
        path.unlink()
    parts = {p.name: p for p in claim_check(load_study(tmp_path), "test", n_boot=500)}
    assert parts["sdpo > dpo on ranking/hr@1"].holds is None
    assert "2 seed-sigma" in parts["sdpo > dpo on ranking/hr@1"].verdict
    assert parts["dpo > sft-continued on ranking/hr@1"].holds is False
    assert parts["ValidRatio of sft >= 0.95"].holds is False
    assert "0.9000" in parts["ValidRatio of sft >= 0.95"].evidence
    assert "per seed +0.5000 (n=1 seeds)" in parts["sdpo > dpo on ranking/hr@1"].evidence  # no "± nan" of one seed
    assert "nan" not in describe_claims(list(parts.values()))
    assert parts["ValidRatio of dpo >= 0.95"].holds is True
    assert parts["sdpo > popular on ranking/hr@1"].holds is None
    text = describe_claims(list(parts.values()))
    assert "not tested (runs missing)" in text and "The claim does not hold" in text


@pytest.mark.parametrize(
    "heldout, log_margin, moved",
    [
        ((0.5, 1.0), None, False),  # held-out accuracy at chance
        ((0.9, 0.1), None, False),  # right order, but a margin under MIN_MARGIN
        (None, 0.1, False),  # no held-out rows; even the training rows barely moved
        (None, 2.0, True),  # no held-out rows; the training rows moved (held-out unknown)
    ],
)
def test_claim_check_is_not_tested_when_the_preference_stage_did_not_move_the_model(
    tmp_path, heldout, log_margin, moved
):
    _claim_study(tmp_path, heldout=heldout)
    if log_margin is not None:
        for path in [*(tmp_path / "test" / "dpo").iterdir(), *(tmp_path / "test" / "sdpo").iterdir()]:
            run = json.loads(path.read_text())
            run["log_history"] = [{"step": i, "rewards/margins": log_margin} for i in range(1, 9)]
            path.write_text(json.dumps(run))
    parts = claim_check(load_study(tmp_path), "test", n_boot=500)
    assert parts[0].holds is moved
    text = describe_claims(parts)
    if moved:
        assert text.startswith("The claim holds in every part.")
    else:
        # The clear ordering of the synthetic runs is not read as evidence either way
        assert text.startswith("Not tested: the preference stage did not move the model")
        assert all(p.holds is None for p in parts[1:5]) and "did not move" in parts[1].verdict


def test_results_markdown_lists_every_run_and_the_command_writes_it(tmp_path):
    study = tmp_path / "study"
    _claim_study(study, seeds=(0, 1))
    write_run(study, "valid", "sdpo-k7", 0, [1, 2, 3], kind="sdpo", config={"model": "tiny", "train": {"k": 7}})
    text = results_markdown(study, n_boot=200)
    assert "Test CPU 9000, AVX-512, 2 CPUs (2 torch threads), no GPU" in text
    assert "| sdpo − dpo | HR@1 |" in text and "Claim check on `test`" in text
    # Configurations: 5 (test, method) lines + the variant; every run: 10 test runs + 1 valid run.
    assert text.count("| test | ") == 5 + 10 and text.count("| valid | sdpo-k7 |") == 2
    assert "| valid | sdpo-k7 | sdpo | smoke | 0 | `train.k=7` |" in text  # `model` is shared by every run
    output = tmp_path / "docs" / "results.md"
    assert main(["results", str(study), "--output", str(output), "--n_boot", "200"]) == 0
    assert output.read_text() == text


def test_plots_draw_from_run_jsons(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from trl_sdpo.rec.study.plots import plot_metrics, plot_training_curves, plot_wall_time

    for s in (0, 1):
        for method in ("dpo", "sdpo"):
            history = [
                {"step": k, "rewards/chosen": 0.1 * k + s, "rewards/margins": k, "logps/chosen": -k} for k in (1, 2)
            ]
            write_run(tmp_path, "test", method, s, [1, 2], hits=[1, 0], log_history=history)
        write_run(tmp_path, "test", "popular", s, [2, 2])
    runs = load_study(tmp_path)
    figures = [plot_metrics(runs, "test"), plot_training_curves(runs, "test"), plot_wall_time(runs, "test")]
    curves = figures[1].axes[0].lines
    # rewards/chosen of dpo: mean over seeds 0 and 1 of 0.1k + s = 0.1k + 0.5.
    np.testing.assert_allclose(curves[0].get_ydata(), [0.6, 0.7])
    # The SFT curve: HR@1 against rows seen (1 of 2 rows, then 2 of 2)
    from trl_sdpo.rec.study.plots import plot_sft_curve

    for rows, ranks in ((4, [1, 3]), (8, [1, 1])):
        write_run(tmp_path, "valid", f"sft-{rows}", 0, ranks, kind="sft", config={"method": {"sft_rows": rows}})
    figures.append(plot_sft_curve(load_study(tmp_path), "valid", metrics=("ranking/hr@1",)))
    line = figures[-1].axes[0].lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), [4, 8])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [0.5, 1.0])
    import matplotlib.pyplot as plt

    for figure in figures:
        plt.close(figure)


def test_compare_methods_skips_pairs_not_run(tmp_path):
    write_run(tmp_path, "test", "sdpo", 0, [1, 2])
    write_run(tmp_path, "test", "dpo", 0, [2, 2])
    comparisons = compare_methods(load_study(tmp_path), "test", n_boot=100)
    assert [(c.a, c.b, c.metric) for c in comparisons] == [
        ("sdpo", "dpo", "ranking/hr@1"),
        ("sdpo", "dpo", "ranking/ndcg@5"),
    ]


def test_compare_methods_skips_pairs_that_share_no_seed_yet(tmp_path):
    # A study part-way: sft-continued has landed at seed 1 only, sdpo and dpo at seed 0 only
    write_run(tmp_path, "test", "sdpo", 0, [1, 2])
    write_run(tmp_path, "test", "dpo", 0, [2, 2])
    write_run(tmp_path, "test", "sft-continued", 1, [3, 3])
    comparisons = compare_methods(load_study(tmp_path), "test", n_boot=100)
    assert {(c.a, c.b) for c in comparisons} == {("sdpo", "dpo")}


def test_claim_check_marks_orderings_without_a_shared_seed_as_runs_missing(tmp_path):
    # dpo landed at seed 1 only, sdpo at seed 0 only: nothing to pair yet, so not tested (it raised before)
    write_run(tmp_path, "test", "sdpo", 0, [1, 2])
    write_run(tmp_path, "test", "dpo", 1, [2, 2])
    parts = {p.name: p for p in claim_check(load_study(tmp_path), "test", n_boot=100)}
    assert parts["sdpo > dpo on ranking/ndcg@5"].holds is None
    assert "no seed with runs of both sdpo and dpo" in parts["sdpo > dpo on ranking/ndcg@5"].evidence


def test_results_markdown_carries_the_studys_notes(tmp_path):
    write_run(tmp_path, "valid", "sft", 0, [1, 2])
    assert "Sittings" not in results_markdown(tmp_path, n_boot=10)
    (tmp_path / "NOTES.md").write_text("**Sittings.** One, on a shared machine.\n")
    assert "**Sittings.** One, on a shared machine." in results_markdown(tmp_path, n_boot=10)


# ------------------------------------------------------------------------------------------------------- sweeps
def _sweep_config(k: int, beta: float) -> dict:
    settings = {"num_negatives": k, "beta": beta, "learning_rate": 1e-5, "steps": 16}
    return {"model": "tiny", "method": {"name": "x", "kind": "sdpo", "settings": settings}}


def _sweep_study(root: Path):
    """k in {1, 3, 7} at beta 1 and beta 0.5 at k 3; HR@1 per seed (10 rows) written out below."""
    hits = {  # method -> per seed, the number of the 10 rows ranked first (rows 0..h-1)
        "sdpo-k1": (2, 3, 4),
        "sdpo": (5, 6, 7),
        "sdpo-k7": (5, 7, 7),
        "sdpo-beta0.5": (1, 1, 1),
    }
    settings = {"sdpo-k1": (1, 1.0), "sdpo": (3, 1.0), "sdpo-k7": (7, 1.0), "sdpo-beta0.5": (3, 0.5)}
    for method, per_seed in hits.items():
        for seed, h in enumerate(per_seed):
            ranks = [1] * h + [2] * (10 - h)
            write_run(root, "test", method, seed, ranks, kind="sdpo", config=_sweep_config(*settings[method]))
    # A DPO run and an S-DPO run with another learning rate belong to neither sweep.
    write_run(root, "test", "dpo", 0, [1] * 10, config=_sweep_config(1, 1.0))
    other = _sweep_config(3, 1.0)
    other["method"]["settings"]["learning_rate"] = 1e-4
    write_run(root, "test", "sdpo-lr1e-4", 0, [1] * 10, kind="sdpo", config=other)


def test_sweep_tables_take_the_runs_that_differ_in_one_setting(tmp_path):
    from trl_sdpo.rec.study.sweep import sweep_methods, sweep_table

    _sweep_study(tmp_path)
    runs = load_study(tmp_path)
    assert sweep_methods(runs, "test", "num_negatives") == [(1, "sdpo-k1"), (3, "sdpo"), (7, "sdpo-k7")]
    assert sweep_methods(runs, "test", "beta") == [(0.5, "sdpo-beta0.5"), (1.0, "sdpo")]
    table = sweep_table(runs, "test", "num_negatives")
    # HR@1 of k 7: 0.5, 0.7, 0.7 -> mean 0.6333, sample std sqrt(((0.1333)^2 + 2 (0.0667)^2) / 2) = 0.11547.
    assert table[2]["ranking/hr@1"] == pytest.approx((1.9 / 3, math.sqrt(0.04 / 3)), abs=1e-12)
    assert table[0]["ranking/hr@1"] == pytest.approx((0.3, 0.1), abs=1e-12)
    with pytest.raises(ValueError, match="Unknown sweep parameter"):
        sweep_methods(runs, "test", "learning_rate")


def test_describe_sweep_finds_where_the_curve_stops_improving(tmp_path):
    from trl_sdpo.rec.study.sweep import describe_sweep, sweep_comparisons

    _sweep_study(tmp_path)
    runs = load_study(tmp_path)
    steps = sweep_comparisons(runs, "test", "num_negatives", metrics=("ranking/hr@1",), n_boot=2000)
    assert [(c.a, c.b) for c in steps] == [("sdpo", "sdpo-k1"), ("sdpo-k7", "sdpo")]
    # Per row averaged over seeds: k 3 - k 1 is +1/3 on rows 2-4 and 0 elsewhere... i.e. a mean of +0.3.
    assert steps[0].mean_diff == pytest.approx(0.3) and steps[1].mean_diff == pytest.approx(1 / 30)
    text = describe_sweep(runs, "test", "num_negatives", n_boot=2000)
    assert "best mean at k = 7" in text
    # k 7 - k 3 differs on 1 row of 10 for one seed: its interval includes 0, so the curve is flat from k 3.
    assert "k = 3 (the curve is flat from there on" in text
    assert "Best minus k = 1: +0.3333" in text and "(excludes 0)" in text
    beta = describe_sweep(runs, "test", "beta", n_boot=2000)
    assert "best mean at beta = 1" in beta


def test_results_markdown_shows_sweeps_instead_of_the_claim(tmp_path):
    _sweep_study(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "test" / "dpo")  # a sweep study alone: no S-DPO/DPO/SFT-continued pair
    text = results_markdown(tmp_path, n_boot=200)
    assert "S-DPO over k on `test`" in text and "S-DPO over beta on `test`" in text
    assert "| 7 | sdpo-k7 | 3 | 0.6333 ± 0.1155 |" in text
    assert "Claim check" not in text  # nothing of the main claim was run: not a list of "not run" parts
