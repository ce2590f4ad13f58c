"""The study machinery: the SFT learning curve and its rule, resumable stages, held-out rewards, power, and
the settings recorded before the keys existed (`trl_sdpo.rec.study`)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_model, make_tokenizer

from trl_sdpo.rec.study import load_study, models, records, runner
from trl_sdpo.rec.study.config import ConfigError, config_from_dict, load_experiment_config
from trl_sdpo.rec.study.curve import pick_sft_point
from trl_sdpo.rec.study.heldout import heldout_logps, reward_stats
from trl_sdpo.rec.study.power import rows_needed

needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel (not installed)"
)
ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"  # the committed studies: in a clone of the repository, not in the source distribution


def _raw(tmp_path, **overrides):
    raw = {
        "study": "tiny",
        "output_dir": str(tmp_path / "study"),
        "num_candidates": 5,
        "eval_rows": 3,
        "generation_rows": 2,
        "seeds": [0],
        "max_new_tokens": 3,
        "max_length": 2048,
        "bf16": False,
        "sft": {
            "train_rows": 8,
            "steps": None,
            "epochs": 1,
            "batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3,
            "curve_rows": [4, 8],
            "save_steps": 1,
        },
        "preference": {"train_rows": 4, "steps": 2, "batch_size": 2, "learning_rate": 1e-3, "heldout_rows": 3},
        "methods": {"sft-4": {"kind": "sft", "sft_rows": 4}, "sft-8": {"kind": "sft", "sft_rows": 8}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "methods":
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


# --------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sft": {"curve_rows": [3, 8]}}, "multiple of the effective batch"),
        ({"sft": {"curve_rows": [8, 4]}}, "increase strictly"),
        ({"sft": {"curve_rows": [4, 12]}}, "past the stage"),
        ({"sft": {"start_rows": 6}}, "not a point of `curve_rows`"),
        ({"sft": {"heldout_rows": 2}}, "Unknown config key `sft.heldout_rows`"),
        ({"preference": {"curve_rows": [4]}}, "Unknown config key `preference.curve_rows`"),
        ({"methods": {"sft-6": {"kind": "sft", "sft_rows": 6}}}, "not a point of `sft.curve_rows`"),
        ({"methods": {"dpo": {"sft_rows": 4}}}, "only for kind sft"),
        ({"generation_rows": 0}, "`generation_rows` must be at least 1"),
    ],
)
def test_new_keys_are_checked(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_raw(tmp_path, **overrides))


@pytest.mark.skipif(not STUDIES.is_dir(), reason=f"no committed studies at {STUDIES} (in a clone, not in the sdist)")
def test_committed_runs_match_the_settings_recorded_before_the_keys_existed():
    # The new keys at their defaults leave the recorded settings of every committed MovieLens run as they were
    # (compared with the files, written by earlier versions).
    config = load_experiment_config(ROOT / "examples/configs/movielens.yaml", preset="cpu", check_paths=False)
    for method in ("sft", "sdpo", "dpo", "sft-continued", "base"):
        recorded = json.loads((STUDIES / f"movielens/test/{method}/seed1.json").read_text())["config"]
        assert records.run_settings(config, config.methods[method], seed=1) == recorded


# --------------------------------------------------------------------------------------------------- the curve rule
def _curve_run(root, method, rows, ranks):
    run = {
        "schema": 1,
        "study": "synthetic",
        "preset": "p",
        "method": method,
        "kind": "sft",
        "seed": 0,
        "split": "valid",
        "config": {"method": {"name": method, "kind": "sft", "sft_rows": rows}},
        "metrics": {},
        "rows": {"ids": [f"valid:{i}" for i in range(len(ranks))], "target_rank": ranks},
        "timings_s": {},
    }
    path = root / "valid" / method / "seed0.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))


def test_curve_rule_picks_the_first_point_its_successor_does_not_beat(tmp_path):
    n = 60
    # NDCG@5 per row: rank 1 -> 1, rank 9 -> 0. 1k: 10 hits; 2k: 40 hits (clearly better); 4k: 41 hits (not).
    _curve_run(tmp_path, "sft-1k", 1024, [1 if i < 10 else 9 for i in range(n)])
    _curve_run(tmp_path, "sft-2k", 2048, [1 if i < 40 else 9 for i in range(n)])
    pick = pick_sft_point(load_study(tmp_path), planned=[1024, 2048, 4096, 8192], n_boot=500)
    assert not pick.decided and pick.next_rows == 4096  # 2k beat 1k: the next point decides
    _curve_run(tmp_path, "sft-4k", 4096, [1 if i < 41 else 9 for i in range(n)])
    pick = pick_sft_point(load_study(tmp_path), planned=[1024, 2048, 4096, 8192], n_boot=500)
    assert pick.decided and (pick.rows, pick.method) == (2048, "sft-2k")
    assert [s["improves"] for s in pick.steps] == [True, False]
    assert pick.steps[0]["diff"] == pytest.approx(30 / n)
    # Every point improving: the last planned point
    pick = pick_sft_point(load_study(tmp_path), planned=[1024, 2048], n_boot=500)
    assert pick.decided and pick.rows == 2048


def test_power_rows_needed_from_the_per_row_spread(tmp_path):
    # a - b per row: +1 on 10 rows, -1 on 2 rows, 0 on 28 (HR@1 differences of ranks 1 vs 3)
    a = [1] * 10 + [3] * 2 + [1] * 28
    b = [3] * 10 + [1] * 2 + [1] * 28
    for method, ranks in (("a", a), ("b", b)):
        run = {
            "schema": 1,
            "study": "s",
            "preset": "p",
            "method": method,
            "kind": "sft",
            "seed": 0,
            "split": "valid",
            "config": {},
            "metrics": {},
            "rows": {"ids": [f"valid:{i}" for i in range(40)], "target_rank": ranks},
            "timings_s": {},
        }
        path = tmp_path / "valid" / method / "seed0.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
    diffs = [1] * 10 + [-1] * 2 + [0] * 28
    sd = statistics.stdev(diffs)
    out = rows_needed(load_study(tmp_path), "valid", "a", "b", "ranking/hr@1", half_width=0.02)
    assert out["sd"] == pytest.approx(sd)
    assert out["rows_needed"] == math.ceil((1.959964 * sd / 0.02) ** 2)
    assert out["half_width_now"] == pytest.approx(1.959964 * sd / math.sqrt(40))


# --------------------------------------------------------------------------------------------------- held-out rewards
def test_reward_stats_match_a_hand_computation():
    policy = np.array([[-1.0, -3.0, -2.0, np.nan], [-5.0, -4.0, -6.0, -7.0]])
    ref = np.array([[-2.0, -2.0, -2.0, np.nan], [-5.0, -5.0, -5.0, -5.0]])
    stats = reward_stats(policy, ref, beta=0.5)
    # rewards row 0: chosen +0.5, rejected -0.5, 0 -> 2 of 2 pairs; row 1: chosen 0, rejected +0.5, -0.5, -1 -> 2 of 3
    assert stats["accuracy"] == pytest.approx(4 / 5)
    assert stats["accuracy_all"] == pytest.approx(0.5)
    assert stats["row_margins"] == pytest.approx([0.5 - (-0.25), 0 - (-1 / 3)], abs=1e-5)
    assert stats["margin"] == pytest.approx(np.mean([0.75, 1 / 3]))


def test_heldout_logps_equal_separate_forward_passes():
    tokenizer = make_tokenizer()
    model = make_model("llama", tokenizer=tokenizer)
    rows = [
        {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10], "rejected_ids": [[11], [12, 13, 14]]},
        {"prompt_ids": [15, 16], "chosen_ids": [17, 18, 19], "rejected_ids": [[20, 21]]},
    ]
    got = heldout_logps(model, rows, pad_token_id=0, max_length=None, batch_size=2)
    assert model.training  # restored
    expected = np.full((2, 3), np.nan)
    with torch.no_grad():
        for i, row in enumerate(rows):
            for j, completion in enumerate([row["chosen_ids"], *row["rejected_ids"]]):
                ids = row["prompt_ids"] + completion
                model.eval()
                logits = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
                start = len(row["prompt_ids"])
                expected[i, j] = sum(float(logits[start + t - 1, tok]) for t, tok in enumerate(completion))
    # fp32 logits of summed log-probs of magnitude ~30: rounding ~1e-5 relative
    np.testing.assert_allclose(got, expected, atol=1e-3, equal_nan=True)


# --------------------------------------------------------------------------------------------------- resuming
@pytest.fixture
def tiny_models(monkeypatch):
    tokenizer = make_tokenizer()
    monkeypatch.setattr(
        models, "load_base_model", lambda config: (make_model("llama", tokenizer=tokenizer), tokenizer)
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@needs_recbole
def test_a_curve_run_stopped_at_a_point_resumes_to_the_same_model(tmp_path, tiny_models):
    # Point by point (the run stops after 4 rows with a Trainer checkpoint; the next call resumes) ...
    config = config_from_dict(_raw(tmp_path / "a"))
    runner.run_experiment(runner_select(config, "sft-4"), "valid", show_progress=False)
    out = Path(config.output_dir)
    assert (out / "checkpoints/seed0/sft-rows4/trl_sdpo_stage.json").is_file()
    assert not (out / "checkpoints/seed0/sft").exists()  # stopped there
    runner.run_experiment(config, "valid", show_progress=False)
    # ... against the whole stage in one call
    whole = config_from_dict(_raw(tmp_path / "b"))
    runner.run_experiment(runner_select(whole, "sft-8"), "valid", show_progress=False)
    a, b = _weights(out / "checkpoints/seed0/sft"), _weights(Path(whole.output_dir) / "checkpoints/seed0/sft")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    run = json.loads((out / "valid/sft-8/seed0.json").read_text())
    assert [s["from_step"] for s in run["sft_sittings"]] == [0, 1]  # two sittings, the second from step 1
    assert run["sft_rows_seen"] == 8 and len(run["rows"]["generation_hit"]) == 2  # generation_rows
    first = json.loads((out / "valid/sft-4/seed0.json").read_text())
    assert [e["step"] for e in first["log_history"] if "loss" in e] == [1]  # the point's own step is logged


@needs_recbole
def test_an_sft_model_trained_again_is_compared_with_the_losses_its_runs_recorded(tmp_path, tiny_models):
    config = config_from_dict(
        _raw(tmp_path, sft={"start_rows": 4}, methods={"sft-4": {"kind": "sft", "sft_rows": 4}, "sft-continued": {}})
    )
    runner.run_experiment(runner_select(config, "sft-4"), "valid", show_progress=False)
    out = Path(config.output_dir)
    recorded_path = out / "valid/sft-4/seed0.json"
    recorded = json.loads(recorded_path.read_text())
    assert "sft_retrained" not in recorded  # trained for the first time: nothing to compare with
    # A new machine: the run JSONs were committed, the models were not. Trained again with the same seed here, the
    # SFT model is the same (the curve test above checks its weights), so are its losses.
    shutil.rmtree(out / "checkpoints")
    runner.run_experiment(config, "valid", show_progress=False)
    run = json.loads((out / "valid/sft-continued/seed0.json").read_text())
    assert run["sft_retrained"] == {
        "compared_with": "valid/sft-4/seed0.json",
        "steps": 1,
        "steps_recorded": 1,
        "max_abs_loss_diff": 0.0,
    }
    # Recorded losses that differ are reported as they are (the comparison reads the run JSON, not the new record)
    shutil.rmtree(out / "checkpoints")
    for entry in recorded["log_history"]:
        if "loss" in entry:
            entry["loss"] += 0.5
    recorded_path.write_text(json.dumps(recorded))
    (out / "valid/sft-continued/seed0.json").unlink()
    runner.run_experiment(config, "valid", show_progress=False)
    run = json.loads((out / "valid/sft-continued/seed0.json").read_text())
    assert run["sft_retrained"]["max_abs_loss_diff"] == pytest.approx(0.5, abs=1e-6)


def test_a_checkpoint_is_not_resumed_in_another_precision_than_it_was_trained_in(tmp_path):
    from types import SimpleNamespace

    from trl_sdpo.rec.study.resumable import SittingCallback, prepare_folder

    folder, settings = tmp_path / "trainer", {"bf16": "auto", "lr": 1e-4}
    assert prepare_folder(folder, settings, "bf16") is None  # nothing to resume yet
    SittingCallback(folder, {"cpu_model": "x"}, precision="bf16").record(SimpleNamespace(global_step=8))
    (folder / "checkpoint-8").mkdir()
    (folder / "checkpoint-8" / "trainer_state.json").write_text("{}")
    assert prepare_folder(folder, settings, "bf16") == folder / "checkpoint-8"
    with pytest.raises(ValueError, match="trained in bf16, and this machine would resume it in fp32"):
        prepare_folder(folder, settings, "fp32")
    # Sittings recorded before they named their precision are not compared
    (folder / "trl_sdpo_sittings.json").write_text(json.dumps([{"from_step": 0, "to_step": 8}]))
    assert prepare_folder(folder, settings, "fp32") == folder / "checkpoint-8"


def runner_select(config, *methods):
    from trl_sdpo.rec.study.config import select

    return select(config, list(methods))


@needs_recbole
def test_preference_runs_keep_their_model_and_log_heldout_rewards(tmp_path, tiny_models, monkeypatch):
    raw = _raw(
        tmp_path,
        seeds=[0, 1],
        sft_seed=0,
        test_eval_rows=4,
        sft={"start_rows": 4},
        preference={"save_steps": 1, "eval_steps": 1},
        methods={
            "sdpo": {},
            "sdpo-same": {"kind": "sdpo"},
            "dpo": {},
            "sft-continued": {},
        },
    )
    config = config_from_dict(raw)
    runner.run_experiment(config, "valid", show_progress=False)
    out = Path(config.output_dir)
    assert not (out / "checkpoints/seed1/sft").exists()  # one SFT model for both seeds
    runs = {(r["method"], r["seed"]): r for r in load_study(out)}
    for run in runs.values():
        assert run["sft_checkpoint"].endswith("seed0/sft-rows4")
        heldout = run["heldout"]
        assert heldout["rows"] == 3 and heldout["precision"] == "fp32"
        logged = [e["step"] for e in run["log_history"] if "heldout/accuracy" in e]
        assert logged == [1, 2]
    # Same settings under another name: the same kept model, trained once
    assert runs[("sdpo", 0)]["trained_model"] == runs[("sdpo-same", 0)]["trained_model"]
    assert runs[("sdpo", 0)]["rows"] == runs[("sdpo-same", 0)]["rows"]
    assert runs[("sdpo", 0)]["trained_model"] != runs[("sdpo", 1)]["trained_model"]
    assert runs[("sdpo", 0)]["sittings"][0]["to_step"] == 2
    # The other split evaluates the kept model: nothing is trained again, and the plan says so -- also where the
    # output folder is spelt otherwise (relative here, absolute above)
    monkeypatch.chdir(tmp_path)
    config = config_from_dict(raw | {"output_dir": "study"})
    assert Path(config.output_dir).resolve() == out.resolve()
    test_plan = runner.plan(runner_select(config, "sdpo", "dpo"), "test")
    assert test_plan["optimizer_steps"] == 0 and test_plan["sft_to_train"] == [] and len(test_plan["todo"]) == 4
    fresh = runner_select(config_from_dict(raw | {"seeds": [0, 1, 2]}), "sdpo")  # seed 2: not trained yet
    assert runner.plan(fresh, "test")["optimizer_steps"] == 2  # its preference steps only (the SFT model is kept)
    before = {p: p.stat().st_mtime for p in out.glob("checkpoints/seed*/sdpo-*/model.safetensors")}
    runner.run_experiment(runner_select(config, "sdpo"), "test", show_progress=False)
    after = {p: p.stat().st_mtime for p in out.glob("checkpoints/seed*/sdpo-*/model.safetensors")}
    assert before == after
    test_run = json.loads((out / "test/sdpo/seed0.json").read_text())
    assert test_run["heldout"] == runs[("sdpo", 0)]["heldout"]
    assert len(test_run["rows"]["ids"]) == 4 and test_run["config"]["eval_rows"] == 4  # `test_eval_rows`
    assert "test_eval_rows" not in test_run["config"] and runs[("sdpo", 0)]["config"]["eval_rows"] == 3


def test_a_folder_kept_under_the_old_key_is_found_until_one_under_the_new_key_exists(tmp_path):
    from trl_sdpo.rec.study.records import digest
    from trl_sdpo.rec.study.stages import keyed_folder

    def key(spelt):
        return {"sft": "/abs/study/checkpoints/seed0/sft" if spelt else "checkpoints/seed0/sft"}

    new, old = tmp_path / f"dpo-{digest(key(False))}", tmp_path / f"dpo-{digest(key(True))}"
    assert new != old
    assert keyed_folder(tmp_path, "dpo", key) == new  # nothing kept: the new key
    old.mkdir()
    assert keyed_folder(tmp_path, "dpo", key) == old  # kept before the change
    new.mkdir()
    assert keyed_folder(tmp_path, "dpo", key) == new


def test_start_rows_auto_applies_the_curve_rule_or_says_which_point_is_next(tmp_path):
    raw = _raw(tmp_path, sft={"start_rows": "auto"}, methods={"sft": {}, "sft-4": {"kind": "sft", "sft_rows": 4}})
    config = config_from_dict(raw)
    out = Path(config.output_dir)
    _curve_run(out, "sft-4", 4, [1 if i < 10 else 9 for i in range(40)])
    with pytest.raises(ConfigError, match="after 8 rows first"):
        runner.resolve_start(config)
    assert runner.resolve_start(config, required=False)[0].sft.start_rows == "auto"  # the plan can still be shown
    _curve_run(out, "sft-8", 8, [1 if i < 10 else 9 for i in range(40)])  # no better: the rule picks 4
    resolved, pick = runner.resolve_start(config)
    assert resolved.sft.start_rows == 4 and pick.decided and config.sft.start_rows == "auto"
