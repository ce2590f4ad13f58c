"""The study runner (`trl_sdpo.rec.study`, `trl-sdpo experiment`): config validation, presets, and a whole
study on a tiny in-process model (one JSON per run, paired rows, skipping, crashes, one SFT per seed)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest
from tiny import make_model, make_tokenizer

from trl_sdpo.cli import main
from trl_sdpo.rec.machine import precision_name, resolve_bf16
from trl_sdpo.rec.study import load_study, models, records, runner, stages
from trl_sdpo.rec.study.analysis import load_run
from trl_sdpo.rec.study.config import (
    ConfigError,
    MethodConfig,
    config_from_dict,
    deep_merge,
    for_split,
    load_experiment_config,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS_YAML = ROOT / "examples" / "configs" / "movielens.yaml"
# The committed studies (run JSONs and the scripts that made their tables): in a clone, not in the source distribution
STUDIES = ROOT / "studies"
needs_studies = pytest.mark.skipif(
    not STUDIES.is_dir(),
    reason=f"no committed studies at {STUDIES} (a clone of the repository has them, the sdist not)",
)
# The MovieLens study's baselines (no LM): the same runs in its bf16 and its fp32 folder
BASELINES = ("random", "popular", "sasrec")
# Its preference-stage methods (a model trained from the SFT model): not `base`, not `sft`
PREFERENCE = ("sft-continued", "dpo", "sdpo")
needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel (not installed)"
)

BASE = {
    "study": "t",
    "output_dir": "out",
    "num_candidates": 5,
    "seeds": [0, 1],
    "sft": {"train_rows": 4, "steps": 2},
    "preference": {"train_rows": 4, "steps": 2, "num_negatives": 3},
    "methods": {"base": {}, "sdpo": {}, "sdpo-k2": {"kind": "sdpo", "num_negatives": 2}},
    "presets": {"fast": {"sft": {"steps": 1}, "seeds": [3]}},
}


def _with(**changes):
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = raw
        for key in parents:
            target = target[key]
        target[last] = value
    return raw


# ----------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "raw, preset, message",
    [
        (_with(seed=[0]), None, "Unknown config key `seed`; allowed keys here: "),
        (_with(sft__lerning_rate=1e-4), None, "Unknown config key `sft.lerning_rate`"),
        (_with(methods__sdpo={"bta": 1.0}), None, "Unknown config key `methods.sdpo.bta`"),
        (_with(methods__ppo={}), None, "`methods.ppo.kind` is 'ppo' (taken from the name); expected one of"),
        (_with(methods__x={"kind": "grpo"}), None, "`methods.x.kind` is 'grpo'"),
        (_with(data_dir="no/such/folder"), None, "`data_dir`"),
        (_with(dataset="lastfm"), None, "`data_dir` is required for dataset 'lastfm'"),
        (_with(methods__sdpo={"num_negatives": 5}), None, "`methods.sdpo.num_negatives` (k) is 5, larger than"),
        (_with(preference__num_negatives=7), None, "`methods.sdpo.num_negatives` (k) is 7"),
        (_with(seeds=[]), None, "`seeds` must be a non-empty list"),
        (_with(eval_split="train"), None, "`eval_split` is 'train'"),
        (_with(preference__negative_strategy="hardest"), None, "`preference.negative_strategy` is 'hardest'"),
        (_with(methods__base={"steps": 3}), None, "`methods.base.steps`: a method of kind 'base' takes no training"),
        (_with(methods={}), None, "`methods` is empty"),
        (_with(extra_eval_methods=["sdpo", "ppo"]), None, "`extra_eval_methods` names 'ppo', not among `methods`"),
        (_with(bf16="yes"), None, "`bf16` is 'yes'; expected true, false or auto"),
        (_with(methods__sdpo={"trainer": "trl"}), None, "`methods.sdpo.trainer` is 'trl' for kind 'sdpo'"),
        (_with(methods__d={"kind": "dpo", "trainer": "hf"}), None, "`methods.d.trainer` is 'hf' for kind 'dpo'"),
        (BASE, "gpu", "Unknown preset 'gpu'; the file defines: fast"),
        (_with(presets__fast={"sft": {"stepz": 1}}), "fast", "Unknown config key `sft.stepz`"),
        (_with(presets__fast={"modle": "x"}), "fast", "Unknown config key `presets.fast.modle`"),
    ],
)
def test_bad_config_is_refused_naming_the_key(raw, preset, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, preset=preset, folder=tmp_path)
    assert message in str(error.value)


def test_unknown_key_error_lists_the_allowed_keys():
    with pytest.raises(ConfigError) as error:
        config_from_dict(_with(sft__lerning_rate=1e-4))
    assert "learning_rate" in str(error.value) and "num_negatives" in str(error.value)


def test_preset_deep_merges_over_the_top_level(tmp_path):
    config = config_from_dict(BASE, preset="fast", folder=tmp_path)
    assert config.preset == "fast" and config.seeds == [3]
    assert (config.sft.steps, config.sft.train_rows) == (1, 4)  # steps from the preset, rows kept from the top level
    assert config.methods["sdpo-k2"].settings.num_negatives == 2  # a variant's override
    assert config.methods["sdpo"].settings.num_negatives == 3  # the preference defaults
    assert config.output_dir == str(tmp_path / "out")  # relative to the YAML's folder
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_set_overrides_go_over_the_preset_key_by_key(tmp_path):
    overrides = parse_overrides(["sft.train_rows=8", "methods.sdpo-k2.learning_rate=1e-4", "sft_seed=null"])
    # written out by hand: YAML 1.1 reads `1e-4` as text, the override reads it as the number it looks like
    assert overrides == {"sft": {"train_rows": 8}, "methods": {"sdpo-k2": {"learning_rate": 0.0001}}, "sft_seed": None}
    config = config_from_dict(BASE, preset="fast", folder=tmp_path, overrides=overrides)
    assert (config.sft.steps, config.sft.train_rows) == (1, 8)  # the preset's steps kept beside the override
    assert config.methods["sdpo-k2"].settings.learning_rate == 1e-4
    assert config.methods["sdpo-k2"].settings.num_negatives == 2  # the variant's own key untouched
    assert config.sft_seed is None and config.seeds == [3]
    assert parse_overrides(["seeds=[0, 2]", "sft.steps=3", "sft.steps=4"]) == {"seeds": [0, 2], "sft": {"steps": 4}}


@pytest.mark.parametrize(
    "assignments, message",
    [
        (["sft.steps"], "--set takes KEY=VALUE"),
        (["sft..steps=1"], "--set takes KEY=VALUE"),
        (["sft=1", "sft.steps=2"], "`sft` was set to a value before"),
        (["sft.steps=[1"], "is not valid YAML"),
    ],
)
def test_a_bad_set_names_the_assignment(assignments, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_overrides(assignments)


def test_a_set_key_is_checked_like_the_files_own(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config key `sft.stepz`"):
        config_from_dict(BASE, folder=tmp_path, overrides=parse_overrides(["sft.stepz=1"]))


@needs_studies
@pytest.mark.parametrize(
    "folder, at_least, changes",
    [
        ("movielens", 25, {}),
        ("movielens-study", 25, {}),
        ("movielens-precision", 3, {}),
        ("movielens-study-fp32", 20, {}),
        ("movielens-replicated", 15, {}),
        # The one change its README states: each seed trains its own SFT model
        ("movielens-sft-seed", 1, {"sft_seed": None}),
    ],
)
def test_every_committed_run_is_what_its_preset_says_today(folder, at_least, changes):
    """The committed results are reproducible from the committed study file (with the changes a side folder's README
    states): an edit of a preset that changes the settings of a run it already produced (a rate pasted into the wrong
    preset) fails here."""
    runs = load_study(STUDIES / folder)
    for run in runs:
        config = load_experiment_config(MOVIELENS_YAML, preset=run["preset"])
        for key, value in changes.items():
            setattr(config, key, value)
        config = runner.resolve_start(for_split(config, run["split"]))[0]
        settings = records.json_safe(records.run_settings(config, config.methods[run["method"]], run["seed"]))
        assert settings == run["config"], (run["preset"], run["split"], run["method"], run["seed"])
    assert len(runs) >= at_least


def _flat(value, key=""):
    """A nested JSON value as {path: leaf}, so that two can be compared leaf by leaf with a tolerance."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flat(item, f"{key}/{name}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{key}[{i}]").items()}
    return {key: value}


def _script(script: str):
    """studies/scripts/<script> as a module (the scripts are the studies' records, not part of the package)."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, STUDIES / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_studies
def test_the_readmes_study_tables_are_what_their_runs_give(monkeypatch):
    """Every `test` table of the MovieLens study in the README is studies/scripts/readme_table.py's output for one of
    the study's folders: a number typed by hand, or a run landed without updating the README, fails here."""
    module = _script("readme_table.py")
    monkeypatch.chdir(ROOT)
    generated = {
        folder: module.readme_table(f"studies/{folder}") for folder in ("movielens-study", "movielens-study-fp32")
    }
    tables = re.findall(
        # the study's tables have the held-out column; the `cpu` preset's older table has not
        r"^\| method \| HR@1 \(generation\) \|[^\n]*held-out reward accuracy.*?(?=\n\n)",
        (ROOT / "README.md").read_text(),
        re.M | re.S,
    )
    assert tables, "the README has no study table (its header changed?)"
    for table in tables:
        assert table in generated.values(), f"a README table is none of {sorted(generated)}:\n{table}"


@needs_studies
def test_a_replicated_studys_sft_row_is_the_mean_over_its_sft_models(monkeypatch):
    """Each pipeline seed of a replicated study trains its own SFT model: its SFT row is mean ± std over them, not one
    value (the one-SFT-model table's rule), recomputed here from the two run JSONs' metrics."""
    module = _script("readme_table.py")
    monkeypatch.chdir(ROOT)
    paths = ["studies/movielens-study-fp32/test/sft/seed0.json", "studies/movielens-replicated/test/sft/seed1.json"]
    runs = [load_run(path) for path in paths]
    (row,) = [line for line in module.readme_table_of(runs).splitlines() if line.startswith("| SFT")]
    ndcg = [run["metrics"]["ranking"]["ndcg@5"] for run in runs]
    assert row.startswith("| SFT (4,096 rows, 2 seeds) |")
    assert f"| {statistics.mean(ndcg):.4f} ± {statistics.stdev(ndcg):.4f} |" in row


def _recomputed_comparison(script: str, folder: str, tmp_path, monkeypatch, name: str = "comparison.json") -> dict:
    """Run studies/scripts/<script> into tmp_path and check its output equals <folder>/<name> (quoted in the
    READMEs): a run replaced without rerunning the script, or a script edit that changes its figures, fails here."""
    module = _script(script)
    monkeypatch.chdir(ROOT)  # the script's folders are relative to the repository root
    monkeypatch.setattr(sys, "argv", [script, "--output", str(tmp_path / "comparison.json")])
    module.main()
    fresh = _flat(json.loads((tmp_path / "comparison.json").read_text()))
    committed = json.loads((STUDIES / folder / name).read_text())
    assert fresh.keys() == _flat(committed).keys()
    for key, value in _flat(committed).items():
        # means of 1,000 row values in float64: rounding differs across CPUs far below 1e-12
        # (a single seed's std, a baseline's generation metrics: NaN on both sides)
        assert fresh[key] == (pytest.approx(value, rel=1e-12, nan_ok=True) if isinstance(value, float) else value), key
    return committed


def _metrics(path: str) -> dict:
    return json.loads((ROOT / path).read_text())["metrics"]


@needs_studies
def test_the_committed_precision_comparison_is_what_its_runs_give(tmp_path, monkeypatch, capsys):
    comparison = _recomputed_comparison("precision_compare.py", "movielens-precision", tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "sft-4k seed 0 on valid" in out and "sdpo-lr1e-4 seed 0 on valid" in out
    # The per-row figures agree with the aggregates the evaluation recorded in each run JSON (computed apart from the
    # per-row values the script reads): a mean over the wrong rows, or an effect against the wrong SFT run, fails here.
    effects = 0
    for pair in comparison["fp32_vs_bf16"].values():
        fp32, bf16 = _metrics(pair["fp32_run"]), _metrics(pair["bf16_run"])
        for metric, m in pair["metrics"].items():
            kind, name = metric.split("/")
            assert (m["fp32"], m["bf16"]) == (pytest.approx(fp32[kind][name]), pytest.approx(bf16[kind][name])), metric
        if "preference_effect" in pair:
            effects += 1
            sft32, sft16 = map(_metrics, pair["preference_effect"]["sft_runs"])
            for metric, m in pair["preference_effect"]["metrics"].items():
                kind, name = metric.split("/")
                e32, e16 = fp32[kind][name] - sft32[kind][name], bf16[kind][name] - sft16[kind][name]
                assert m["fp32"]["mean"] == pytest.approx(e32, abs=1e-12), metric
                assert m["fp32_minus_bf16"]["mean"] == pytest.approx(e32 - e16, abs=1e-12), metric
    # every preference run paired with a bf16 one has its effect measured (its SFT model is evaluated in both folders)
    preference = [
        p
        for p in comparison["fp32_vs_bf16"].values()
        if json.loads((ROOT / p["fp32_run"]).read_text())["kind"] in PREFERENCE
    ]
    assert effects == len(preference) >= 2


@needs_studies
def test_the_committed_sft_seed_comparison_is_what_its_runs_give(tmp_path, monkeypatch, capsys):
    comparison = _recomputed_comparison("sft_seed_compare.py", "movielens-sft-seed", tmp_path, monkeypatch)
    assert "sft-4k on valid: SFT seed 1 - SFT seed 0" in capsys.readouterr().out
    # The means agree with the aggregates each run JSON recorded (computed apart from the per-row values)
    for pair in (*comparison["sft_seed"].values(), *comparison["preference_seed"].values()):
        a, b = map(_metrics, pair["runs"])
        for metric, d in pair["metrics"].items():
            kind, name = metric.split("/")
            assert (d["a"], d["b"]) == (pytest.approx(a[kind][name]), pytest.approx(b[kind][name])), metric
            assert d["diff"] == pytest.approx(a[kind][name] - b[kind][name], abs=1e-12), metric


@needs_studies
def test_the_committed_fp32_tables_are_what_their_runs_give(tmp_path, monkeypatch, capsys):
    tables = _recomputed_comparison(
        "fp32_tables.py", "movielens-precision", tmp_path, monkeypatch, name="test-tables.json"
    )
    assert "== mixed: test" in capsys.readouterr().out
    # Which runs each table holds, from the folders themselves: the mixed one every study run and the fp32 runs of
    # the seeds the study lacks, the fp32 one every run of the fp32 study's folder.
    study, fp32 = (
        {p.relative_to(STUDIES / name): p for p in (STUDIES / name / "test").glob("*/*.json")}
        for name in ("movielens-study", "movielens-study-fp32")
    )
    lm = {k: p for k, p in fp32.items() if k.parts[1] not in BASELINES}
    expected = {"mixed": {**{k: p for k, p in lm.items() if k not in study}, **study}, "fp32": fp32}
    for name, runs in expected.items():
        assert sorted(tables[name]["runs"]) == sorted(str(p.relative_to(ROOT)) for p in runs.values()), name
        # Each method's mean over its seeds agrees with the aggregates every run JSON recorded (computed apart from
        # the per-row values the script reads)
        for entry in tables[name]["summary"]:
            metrics = [_metrics(str(p.relative_to(ROOT))) for k, p in runs.items() if k.parts[1] == entry["method"]]
            assert len(metrics) == entry["n_seeds"], (name, entry["method"])
            for metric in ("ranking/hr@1", "ranking/ndcg@5"):
                kind, key = metric.split("/")
                expected_mean = sum(m[kind][key] for m in metrics) / len(metrics)
                assert entry[metric][0] == pytest.approx(expected_mean, abs=1e-12), (name, entry["method"], metric)
    sft = _metrics("studies/movielens-study-fp32/test/sft/seed0.json")
    preference = {f"{k.parts[1]}/{k.stem.removeprefix('seed')}": p for k, p in lm.items() if k.parts[1] in PREFERENCE}
    assert set(tables["effect_on_fp32_sft"]) == set(preference)
    for run, metrics in tables["effect_on_fp32_sft"].items():
        for metric, d in metrics.items():
            kind, key = metric.split("/")
            own = _metrics(str(preference[run].relative_to(ROOT)))
            assert d["diff"] == pytest.approx(own[kind][key] - sft[kind][key], abs=1e-12), (run, metric)


def _sitting_hours(paths) -> tuple[float, float]:
    """SFT and preference training hours from the sittings the runs recorded (each sitting once, by its start time,
    however many runs share its model), apart from the stage timers `compute_hours` reads. An SFT model trained again
    on a fresh machine (the same checkpoint, a training with another first sitting) counts once, as its longest
    training: `compute_hours` is what each model cost to train, not what losing a disk cost."""
    trainings, per_checkpoint, preference = {}, {}, {}
    for path in paths:
        run = json.loads(path.read_text())
        if sittings := run.get("sft_sittings"):
            first = sittings[0]["started"]
            trainings.setdefault(first, {}).update({s["started"]: s["seconds"] for s in sittings})
            per_checkpoint.setdefault(run["sft_checkpoint"], set()).add(first)
        if run["kind"] in PREFERENCE:
            preference.update({s["started"]: s["seconds"] for s in run.get("sittings") or []})
    kept = {max(firsts, key=lambda first: sum(trainings[first].values())) for firsts in per_checkpoint.values()}
    # A curve's points are separate checkpoints of one training (the same first sitting): kept once through the set
    sft = {start: seconds for first in kept for start, seconds in trainings[first].items()}
    return sum(sft.values()) / 3600, sum(preference.values()) / 3600


@needs_studies
def test_the_fp32_tables_count_every_training_once():
    hours = json.loads((STUDIES / "movielens-precision/test-tables.json").read_text())["compute_hours"]
    folders = {
        "fp32 test table": list((STUDIES / "movielens-study-fp32/test").glob("*/*.json")),
        "bf16 study, valid and test": list((STUDIES / "movielens-study").glob("*/*/*.json")),
        "bf16 study, valid only": list((STUDIES / "movielens-study/valid").glob("*/*.json")),
    }
    for name, paths in folders.items():
        (entry,) = [value for key, value in hours.items() if key.startswith(name)]
        # A sitting's record (start to end) and the stage's own timer differ by the seconds it takes to set up: 36 s
        sft, preference = _sitting_hours(paths)
        assert (entry["sft"], entry["preference"]) == (
            pytest.approx(sft, abs=0.01),
            pytest.approx(preference, abs=0.01),
        )
        assert entry["total"] == pytest.approx(sum(entry[k] for k in ("sft", "preference", "baselines", "evaluation")))


@needs_studies
def test_the_fp32_study_keeps_to_fp32_and_shares_the_studys_baselines():
    """studies/movielens-study-fp32/ is the study's `test` table in fp32: every LM run recorded fp32 (the
    runner's precision check guards a folder only while it runs), and its baselines (no LM, no precision) are the
    bf16 study's runs byte for byte, so the two tables compare against the same baselines."""
    runs = sorted((STUDIES / "movielens-study-fp32/test").glob("*/*.json"))
    baselines = [p for p in runs if p.parent.name in BASELINES]
    assert {p.parent.name for p in baselines} == set(BASELINES)
    for path in baselines:
        assert path.read_bytes() == (STUDIES / "movielens-study" / path.relative_to(path.parents[2])).read_bytes()
    lm = [p for p in runs if p not in baselines]
    assert lm and all(json.loads(p.read_text())["precision"] == "fp32" for p in lm)


@needs_studies
def test_the_sft_retrain_check_tells_the_committed_model_from_another(tmp_path, monkeypatch, capsys):
    """studies/scripts/sft_retrain_check.py passes a Trainer log equal to the committed SFT run's (its first 16
    steps, as the first checkpoint of a retrain holds them) and names the first step where a log differs."""
    check = _script("sft_retrain_check.py")
    committed = json.loads((ROOT / check.COMMITTED).read_text())["log_history"]
    state = tmp_path / "checkpoints/seed0/trainer-sft/checkpoint-16/trainer_state.json"
    state.parent.mkdir(parents=True)
    monkeypatch.chdir(ROOT)  # COMMITTED is relative to the repository root
    monkeypatch.setattr(sys, "argv", ["sft_retrain_check.py", "--output_dir", str(tmp_path)])
    log = [dict(entry) for entry in committed if entry.get("step", 0) <= 16]
    state.write_text(json.dumps({"log_history": log}))
    check.main()
    assert "steps 1-16 equal" in capsys.readouterr().out
    # a retrain that resumed at step 8: its cumulative token counter starts again from 0, each step's count is the same
    resumed = [{**e, "num_tokens": e["num_tokens"] - log[7]["num_tokens"]} if e["step"] > 8 else e for e in log]
    state.write_text(json.dumps({"log_history": resumed}))
    check.main()
    assert "steps 1-16 equal" in capsys.readouterr().out
    log[8]["loss"] = math.nextafter(log[8]["loss"], math.inf)  # one float apart at step 9
    state.write_text(json.dumps({"log_history": log}))
    with pytest.raises(SystemExit) as exit_:
        check.main()
    assert exit_.value.code == 1 and "step 9:" in capsys.readouterr().out


@needs_studies
def test_the_study_queue_runs_the_test_table_only_at_the_rates_valid_chose(tmp_path):
    queue = _script("movielens_study_queue.py")
    config = load_experiment_config(MOVIELENS_YAML, preset="study")
    assert sum("missing" in p for p in queue.test_ready(config, str(tmp_path))) == 9  # no valid runs yet
    committed = str(STUDIES / "movielens-study")  # the study's own valid runs
    assert queue.test_ready(config, committed) == []
    config.methods["sdpo"].settings.learning_rate, config.test_eval_rows = 3e-5, None
    assert queue.test_ready(config, committed) == [
        "sdpo: valid chose sdpo-lr1e-4, the preset has learning rate 3e-05",
        "test_eval_rows is not set (from trl_sdpo.rec.study.power.rows_needed on the valid runs)",
    ]


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "paper"])
def test_the_movielens_study_file_loads_at_every_preset(preset):
    config = load_experiment_config(MOVIELENS_YAML, preset=preset)
    assert set(config.methods) >= {"base", "sft", "sft-continued", "dpo", "sdpo", "random", "popular", "sasrec"}
    assert len(config.seeds) >= 2 and config.methods["sdpo"].settings.num_negatives == 3


def test_cli_refuses_a_bad_config_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: x\nmethods: {sdpo: {}}\nsft: {steps: 2, batchsize: 4}\n")
    assert main(["experiment", "--config", str(bad)]) == 1
    assert "sft.batchsize" in capsys.readouterr().err


def test_cli_dry_run_prints_the_plan(capsys):
    assert main(["experiment", "--config", str(MOVIELENS_YAML), "--preset", "cpu", "--dry-run", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "optimizer steps" in out and "sdpo" in out and "seeds [0]" in out


def test_cli_set_changes_the_plan(capsys):
    argv = ["experiment", "--config", str(MOVIELENS_YAML), "--preset", "smoke", "--dry-run"]
    assert main([*argv, "--set", "seeds=[5]", "methods.sdpo.learning_rate=3e-4"]) == 0
    out = capsys.readouterr().out
    assert "seeds [5]" in out and "lr 0.0003" in out
    assert main([*argv, "--set", "sft.stepz=1"]) == 1
    assert "`sft.stepz`" in (err := capsys.readouterr().err) and "given on the command line: --set sft.stepz=1" in err
    assert main([*argv, "--set", "sft.steps=many"]) == 1
    assert "given on the command line: --set sft.steps=many" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- the runner
@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """A study of every LM method and the baselines on a tiny random Llama; counts the SFT trainings."""
    tokenizer = make_tokenizer()
    monkeypatch.setattr(
        models, "load_base_model", lambda config: (make_model("llama", tokenizer=tokenizer), tokenizer)
    )
    calls = []
    train_sft_checkpoint = stages.train_sft_checkpoint

    def counted(runner, seed, *args, **kwargs):
        calls.append(seed)
        return train_sft_checkpoint(runner, seed, *args, **kwargs)

    monkeypatch.setattr(stages, "train_sft_checkpoint", counted)
    monkeypatch.setitem(sys.modules, "trl_sdpo.rec.sasrec", None)  # the extra is "not installed": skipped
    raw = {
        "study": "tiny",
        "output_dir": str(tmp_path / "study"),
        "num_candidates": 5,
        "eval_rows": 3,
        "seeds": [0, 1],
        "max_new_tokens": 3,
        "max_length": 2048,
        "sft": {"train_rows": 2, "steps": 1, "batch_size": 2},
        "preference": {"train_rows": 2, "steps": 1, "batch_size": 2, "learning_rate": 1e-3},
        "methods": {m: {} for m in ("base", "sft", "sft-continued", "dpo", "sdpo", "random", "popular", "sasrec")},
    }
    return config_from_dict(raw), calls


@needs_recbole
def test_study_runs_every_method_and_seed_and_resumes(tiny_study, monkeypatch):
    config, sft_calls = tiny_study
    result = runner.run_experiment(config, "valid", show_progress=False)
    assert sorted(sft_calls) == [0, 1]  # one SFT per seed, shared by sft, sft-continued, dpo, sdpo
    assert result["unavailable"] == [("sasrec", 0), ("sasrec", 1)]
    out = Path(config.output_dir)
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("valid/*/*.json"))
    methods = ("base", "dpo", "popular", "random", "sdpo", "sft", "sft-continued")
    assert files == sorted(f"valid/{m}/seed{s}.json" for m in methods for s in (0, 1))
    assert not list(out.rglob("*.tmp"))

    runs = {(p.parent.name, p.stem): json.loads(p.read_text()) for p in out.glob("valid/*/*.json")}
    ids = runs[("base", "seed0")]["rows"]["ids"]
    assert len(ids) == 3 and all(i.startswith("valid:") for i in ids)
    for (method, seed), run in runs.items():
        assert {
            "schema",
            "study",
            "method",
            "kind",
            "seed",
            "split",
            "config",
            "metrics",
            "rows",
            "log_history",
        } <= set(run)
        assert {"timings_s", "versions", "machine", "created"} <= set(run)
        assert (run["schema"], run["method"], f"seed{run['seed']}", run["split"]) == (1, method, seed, "valid")
        assert run["rows"]["ids"] == ids  # paired: the same rows for every method and seed
        ranks = run["rows"]["target_rank"]
        assert all(1 <= r <= 5 for r in ranks)
        # The summary metrics are those of the per-row ranks (computed independently here).
        assert run["metrics"]["ranking"]["hr@1"] == pytest.approx(sum(r == 1 for r in ranks) / 3)
        assert run["metrics"]["ranking"]["mrr"] == pytest.approx(sum(1 / r for r in ranks) / 3)
        if run["kind"] in ("random", "popular"):
            assert run["metrics"]["generation"] is None and run["rows"]["generation_hit"] is None
        else:
            generation = run["metrics"]["generation"]
            assert generation["n"] == 3
            assert generation["valid_ratio"] == pytest.approx(sum(run["rows"]["generation_valid"]) / 3)
    assert runs[("base", "seed1")]["seed_independent"] is True
    assert runs[("base", "seed1")]["rows"] == runs[("base", "seed0")]["rows"]
    # Policy = reference at the first step: DPO's loss is log 2 (TRL's sigmoid loss, k=1), S-DPO's log(1 + 3).
    first = {m: next(e for e in runs[(m, "seed0")]["log_history"] if "loss" in e) for m in ("dpo", "sdpo")}
    assert first["dpo"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["sdpo"]["loss"] == pytest.approx(math.log(4), abs=1e-4)
    assert runs[("sft", "seed0")]["log_history"] and runs[("sft-continued", "seed0")]["log_history"]

    # A second sitting skips every finished run and trains nothing.
    again = runner.run_experiment(config, "valid", show_progress=False)
    assert again["written"] == [] and len(again["skipped"]) == 14 and sorted(sft_calls) == [0, 1]

    # A run that crashes leaves no JSON (and no temporary file); the others stay.
    (out / "valid" / "sdpo" / "seed1.json").unlink()

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(stages, "train_preference", crash)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        runner.run_experiment(config, "valid", show_progress=False)
    assert not (out / "valid" / "sdpo" / "seed1.json").exists() and not list(out.rglob("*.tmp"))
    assert (out / "valid" / "dpo" / "seed1.json").exists() and sorted(sft_calls) == [0, 1]

    # Changed settings over existing results are refused rather than mixed.
    changed = copy.deepcopy(config)
    changed.eval_rows = 4
    with pytest.raises(ConfigError, match="other settings"):
        runner.run_experiment(changed, "valid", show_progress=False)

    # So are LM runs in another precision than the folder's (`bf16: auto` resolves per machine): seed 1's S-DPO is
    # still to do, and one finished run now says it was trained in the precision this machine would not use.
    here = precision_name(resolve_bf16(config.bf16))
    other = {"bf16": "fp32", "fp32": "bf16"}[here]
    path = out / "valid" / "dpo" / "seed0.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"precision": other}))
    with pytest.raises(ConfigError, match=f"trained in {other} .*this call would train in {here}"):
        runner.run_experiment(config, "valid", show_progress=False)
    assert not (out / "valid" / "sdpo" / "seed1.json").exists()


# ---------------------------------------------------------------------------------------- extends and shared SFT
def test_extends_inherits_the_top_level_but_not_methods_or_presets(tmp_path):
    import yaml

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "main.yaml").write_text(yaml.safe_dump(_with(output_dir="results/main")))
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "study": "sweep",
                "extends": "base/main.yaml",
                "sft_checkpoints_dir": "base/results/main/checkpoints",
                "preference": {"beta": 0.5},
                "methods": {"sdpo-k1": {"kind": "sdpo", "num_negatives": 1}},
            }
        )
    )
    config = load_experiment_config(tmp_path / "sweep.yaml")
    assert config.study == "sweep" and list(config.methods) == ["sdpo-k1"]
    assert (config.num_candidates, config.seeds, config.sft.train_rows) == (5, [0, 1], 4)  # inherited
    assert config.methods["sdpo-k1"].settings.beta == 0.5  # the extending file's section merged over the base's
    assert config.methods["sdpo-k1"].settings.num_negatives == 1
    # The extended file's paths resolve against its own folder; the extending file's against its own.
    assert config.sft_checkpoints_dir == str(tmp_path / "base" / "results" / "main" / "checkpoints")
    assert config.output_dir == str(tmp_path / "base" / "results" / "main")  # inherited, as the base resolves it
    with pytest.raises(ConfigError, match="Unknown preset 'fast'"):  # the base's presets are not inherited
        load_experiment_config(tmp_path / "sweep.yaml", preset="fast")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nmethods: {sdpo: {}}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_experiment_config(tmp_path / "loop.yaml")


def test_the_negatives_and_beta_study_extends_the_movielens_study():
    main_config = load_experiment_config(MOVIELENS_YAML, preset="cpu")
    sweep_yaml = ROOT / "examples" / "configs" / "negatives_beta.yaml"
    for preset in ("cpu", "cpu-main-sizes"):
        sweep = load_experiment_config(sweep_yaml, preset=preset)
        # The sweep's runs start from the main study's SFT checkpoints: its sft and data settings must be the same.
        assert sweep.sft_checkpoints_dir == str(Path(main_config.output_dir) / "checkpoints")
        assert sweep.sft == main_config.sft
        assert (sweep.data_seed, sweep.num_candidates, sweep.model) == (0, 20, None)
        values = {(m.settings.num_negatives, m.settings.beta) for m in sweep.methods.values()}
        assert values == {(k, 1.0) for k in (1, 2, 3, 7, 15)} | {(3, b) for b in (0.1, 0.5, 1.0, 2.0, 5.0)}
        main_sdpo, sdpo = main_config.methods["sdpo"].settings, sweep.methods["sdpo"].settings
        assert (sdpo.steps, sdpo.learning_rate) == (main_sdpo.steps, main_sdpo.learning_rate)
    # At the main study's sizes k 3 is the main study's S-DPO, run for run (the notebook compares them row by row);
    # the budget preset halves the rows a step and the eval rows.
    full = load_experiment_config(sweep_yaml, preset="cpu-main-sizes")
    assert full.methods["sdpo"].settings == main_sdpo and full.eval_rows == main_config.eval_rows
    small = load_experiment_config(sweep_yaml, preset="cpu")
    assert (small.methods["sdpo"].settings.batch_size, small.methods["sdpo"].settings.train_rows) == (2, 32)
    assert small.eval_rows == 50 and small.output_dir != full.output_dir


@needs_recbole
def test_a_study_reuses_another_studys_sft_checkpoint(tiny_study):
    config, sft_calls = tiny_study
    config = copy.deepcopy(config)
    config.seeds = [0]
    config.methods = {"sft": config.methods["sft"]}
    runner.run_experiment(config, "valid", show_progress=False)
    assert sft_calls == [0]
    sweep = copy.deepcopy(config)
    sweep.output_dir = str(Path(config.output_dir).parent / "sweep")
    sweep.sft_checkpoints_dir = str(Path(config.output_dir) / "checkpoints")
    runner.run_experiment(sweep, "valid", show_progress=False)
    assert sft_calls == [0]  # not trained again
    first = json.loads((Path(config.output_dir) / "valid" / "sft" / "seed0.json").read_text())
    second = json.loads((Path(sweep.output_dir) / "valid" / "sft" / "seed0.json").read_text())
    assert second["rows"] == first["rows"] and second["config"] == first["config"]
    # Other SFT settings over the shared folder are refused rather than silently mixed.
    other = copy.deepcopy(sweep)
    other.output_dir = str(Path(config.output_dir).parent / "other")
    other.sft.learning_rate = 1.0
    with pytest.raises(ConfigError, match="other settings than this study's `sft:`"):
        runner.run_experiment(other, "valid", show_progress=False)


def _run_with_compat_lists(tiny_study, methods, baseline, only=None):
    """Seed 0 of the tiny study's `methods` plus one more baseline kind, also ranked on the paper's lists (by the
    methods in `only`, or all); returns the config run."""
    config = copy.deepcopy(tiny_study[0])
    config.seeds = [0]
    config.extra_eval_samplers = ["sdpo-compat"]
    config.extra_eval_methods = only
    config.methods = {name: config.methods[name] for name in methods}
    config.methods[baseline] = MethodConfig(baseline, baseline)
    runner.run_experiment(config, "valid", show_progress=False)
    return config


@needs_recbole
def test_other_lists_evaluate_the_same_models_on_the_same_rows(tiny_study):
    from trl_sdpo.rec.study import compare_lists, load_study, runs_on_other_lists

    config = _run_with_compat_lists(tiny_study, ("base", "sdpo", "random"), "memorizer")
    runs = load_study(config.output_dir)
    for run in runs:
        other = run["other_lists"]["sdpo-compat"]
        assert other["rows"]["ids"] == run["rows"]["ids"]  # the same eval rows
        ranks = other["rows"]["target_rank"]
        assert other["metrics"]["ranking"]["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
        assert run["config"]["extra_eval_samplers"] == ["sdpo-compat"]
    # The compat lists are the reference pipeline's (seeded by the target), not the study's own lists.
    from trl_sdpo.rec.builders import build_examples

    study_runner = runner.Runner(config, "valid", show_progress=False)
    study_runner.load_data()
    compat = build_examples(study_runner.dataset, "valid", num_candidates=5, sampler="sdpo-compat", seed=0, max_rows=3)
    assert [e.candidate_ids for e in study_runner.other_examples["sdpo-compat"]] == [e.candidate_ids for e in compat]
    assert [e.candidate_ids for e in study_runner.eval_examples] != [e.candidate_ids for e in compat]
    assert {r["method"] for r in runs_on_other_lists(runs, "sdpo-compat")} == {
        f"{m}@sdpo-compat" for m in ("base", "sdpo", "random", "memorizer")
    }
    assert len(compare_lists(runs, "valid", "sdpo-compat", n_boot=50)) == 4 * 2
    # Runs written without the key (before it existed) keep matching a study that does not set it.
    plain = copy.deepcopy(config)
    plain.extra_eval_samplers = []
    assert "extra_eval_samplers" not in records.run_settings(plain, plain.methods["sdpo"])


@needs_recbole
def test_extra_eval_methods_limits_the_other_lists_to_the_named_methods(tiny_study):
    from trl_sdpo.rec.study import load_study

    config = _run_with_compat_lists(tiny_study, ("base", "sft", "sdpo", "random"), "popular", only=["sdpo", "random"])
    runs = {run["method"]: run for run in load_study(config.output_dir)}
    assert {name for name, run in runs.items() if run.get("other_lists")} == {"sdpo", "random"}
    assert runs["sft"]["timings_s"].get("eval_other_lists") is None
    assert runs["sdpo"]["timings_s"]["eval_other_lists"] > 0
    assert runs["sdpo"]["config"]["extra_eval_methods"] == ["sdpo", "random"]
    # Unset (every method), the key stays out of the settings, so earlier runs keep matching.
    config.extra_eval_methods = None
    assert "extra_eval_methods" not in records.run_settings(config, config.methods["sdpo"])


@needs_recbole
def test_sasrec_trains_once_for_every_list_and_splits_the_ranks_back(tiny_study, monkeypatch):
    import types

    from trl_sdpo.rec.builders import build_examples

    config, _ = tiny_study
    config = copy.deepcopy(config)
    config.extra_eval_samplers = ["sdpo-compat"]
    config.methods = {"sasrec": MethodConfig("sasrec", "sasrec")}
    trainings = []

    def fake_sasrec_ranks(dataset, examples, seed=0, **options):
        trainings.append((seed, len(examples)))
        return [1 + list(e.candidate_ids).index(e.row.target) for e in examples]  # the target's list position

    fake = types.SimpleNamespace(require_replay=lambda: None, sasrec_ranks=fake_sasrec_ranks)
    monkeypatch.setitem(sys.modules, "trl_sdpo.rec.sasrec", fake)
    runner.run_experiment(config, "valid", show_progress=False)
    assert trainings == [(0, 6), (1, 6)]  # one training per seed for the 3 rows of both lists

    study_runner = runner.Runner(config, "valid", show_progress=False)
    study_runner.load_data()
    lists = {
        sampler: build_examples(study_runner.dataset, "valid", num_candidates=5, sampler=sampler, seed=0, max_rows=3)
        for sampler in ("default", "sdpo-compat")
    }
    expected = {k: [1 + list(e.candidate_ids).index(e.row.target) for e in v] for k, v in lists.items()}
    assert expected["default"] != expected["sdpo-compat"]  # else a swapped split would pass
    for seed in (0, 1):
        run = json.loads((Path(config.output_dir) / "valid" / "sasrec" / f"seed{seed}.json").read_text())
        assert run["rows"]["target_rank"] == expected["default"]
        assert run["other_lists"]["sdpo-compat"]["rows"]["target_rank"] == expected["sdpo-compat"]


@needs_recbole
def test_dpo_through_sdpo_trainer_equals_trl_dpo_with_the_reference_computed_once(tiny_study, monkeypatch):
    from tolerances import assert_fp32_close

    from trl_sdpo.rec import training

    config, _ = tiny_study
    config.bf16, config.seeds = False, [0]  # fp32: the two trainers agree to fp32 rounding
    dpo = config.methods["dpo"]
    config.methods = {
        "dpo": dpo,
        "sdpo": config.methods["sdpo"],
        "dpo-trl": MethodConfig("dpo-trl", "dpo", copy.deepcopy(dpo.settings), trainer="trl"),
    }
    calls = []
    precompute = training.precompute_reference
    monkeypatch.setattr(training, "precompute_reference", lambda *args: calls.append(1) or precompute(*args))
    runner.run_experiment(config, "valid", show_progress=False)
    runs = {p.parent.name: json.loads(p.read_text()) for p in Path(config.output_dir).glob("valid/*/seed0.json")}
    assert calls == [1]  # one reference pass for the seed, read by dpo and sdpo
    assert runs["dpo"]["trainer"].startswith("trl_sdpo.SDPOTrainer (k=1") and "method" in runs["dpo"]["config"]
    assert runs["dpo-trl"]["trainer"].startswith("trl.DPOTrainer")
    assert "trainer" not in runs["dpo"]["config"]["method"]  # the default is not written (older runs match)
    assert {run["precision"] for run in runs.values()} == {"fp32"}
    log, trl_log = (next(h for h in runs[m]["log_history"] if "loss" in h) for m in ("dpo", "dpo-trl"))
    scale = abs(trl_log["logps/chosen"]) + abs(trl_log["logps/rejected"])
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert_fp32_close(log[key], trl_log[key], scale=scale, msg=key)
    assert runs["dpo"]["rows"]["target_rank"] == runs["dpo-trl"]["rows"]["target_rank"]


@needs_recbole
def test_dpo_pairs_trains_pairwise_on_the_rows_and_reference_of_sdpo(tiny_study, monkeypatch):
    from trl_sdpo.rec import training

    config, _ = tiny_study
    config.bf16, config.seeds = False, [0]
    sdpo = config.methods["sdpo"]
    config.methods = {
        "sdpo": sdpo,
        "dpo-pairs": MethodConfig("dpo-pairs", "dpo-pairs", copy.deepcopy(sdpo.settings)),
    }
    calls = []
    precompute = training.precompute_reference
    monkeypatch.setattr(training, "precompute_reference", lambda *args: calls.append(1) or precompute(*args))
    runner.run_experiment(config, "valid", show_progress=False)
    runs = {p.parent.name: json.loads(p.read_text()) for p in Path(config.output_dir).glob("valid/*/seed0.json")}
    assert calls == [1]  # one reference pass for the seed's rows, read by both
    assert "ranking_loss=pairwise" in runs["dpo-pairs"]["trainer"] and "ranking_loss" not in runs["sdpo"]["trainer"]
    first = {m: next(h for h in runs[m]["log_history"] if "loss" in h) for m in runs}
    k = sdpo.settings.num_negatives
    assert first["sdpo"]["num_negatives"] == first["dpo-pairs"]["num_negatives"] == k
    # At the first step the policy is the reference (the SFT model): every reward is 0, so S-DPO's loss is log(1 + k)
    # and each DPO pair's log 2. Logged losses are rounded to 4 decimals.
    assert first["sdpo"]["loss"] == pytest.approx(math.log(1 + k), abs=1e-3)
    assert first["dpo-pairs"]["loss"] == pytest.approx(math.log(2), abs=1e-3)
