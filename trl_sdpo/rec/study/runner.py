"""
Run a recommendation study: every (method, seed) of an [`ExperimentConfig`] on one split, one JSON per run.

Choices, stated once (the stages' own are in `trl_sdpo.rec.study.stages`):
- Eval rows are a sample of the split drawn by `data_seed`, with candidates drawn by `data_seed`: the same rows and
  candidate lists for every method and seed, so comparisons are paired by row.
- `base` does not depend on the seed: it is evaluated once per split and the same result is written for every seed
  (`"seed_independent": true` in its JSON).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..machine import precision_name, resolve_bf16
from . import models, stages
from .config import (
    BASELINE_KINDS,
    LM_KINDS,
    PREFERENCE_KINDS,
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    StageSettings,
    for_split,
    stage_steps,
)
from .context import StudyContext
from .records import (
    SCHEMA,
    STAGE_MARKER,
    check_existing,
    check_precision,
    compare_with_recorded_sft,
    json_safe,
    ranking_record,
    row_ids_of,
    run_path,
    run_settings,
    sft_checkpoint_dir,
    sft_start_rows,
    sitting_seconds,
    stage_record,
    timed,
    write_json_atomic,
)

logger = logging.getLogger(__name__)


def _steps_text(stage: StageSettings) -> str:
    steps = stage_steps(stage)
    return f"{steps} steps" if steps is not None else f"{stage.epochs} epochs"


def resolve_start(config: ExperimentConfig, required: bool = True):
    """
    `config` with `sft.start_rows: auto` replaced by the curve point the rule picks from the valid runs in
    `output_dir` (`trl_sdpo.rec.study.curve`), and the pick; `(config, None)` when nothing is `auto`.

    Args:
        required (`bool`, *optional*, defaults to `True`): Raise `ConfigError` when a method of the study needs the
            start point and the curve does not decide it yet; `False` leaves `auto` in place then.
    """
    if config.sft.start_rows != "auto":
        return config, None
    from .analysis import load_study
    from .curve import pick_sft_point

    needs = [m.name for m in config.methods.values() if sft_needs_start(m)]
    pick = pick_sft_point(load_study(config.output_dir, missing_ok=True), planned=config.sft.curve_rows)
    if not pick.decided:
        if required and needs:
            raise ConfigError(
                f"`sft.start_rows: auto`: the SFT curve on valid does not decide the start point yet (methods "
                f"{', '.join(needs)} need it); evaluate the point after {pick.next_rows} rows first "
                f"(`--split valid --methods <its sft method>`). {pick.describe()}"
            )
        return config, pick
    config = copy.deepcopy(config)
    config.sft.start_rows = pick.rows
    return config, pick


def sft_needs_start(method: MethodConfig) -> bool:
    """Whether a method starts from the SFT start point (`sft.start_rows`): the preference kinds and plain `sft`."""
    return method.kind in PREFERENCE_KINDS or (method.kind == "sft" and method.sft_rows is None)


def plan(config: ExperimentConfig, split: str | None = None) -> dict[str, Any]:
    """
    What a call of [`run_experiment`] would do: the runs still to do, those done, the SFT checkpoints to train,
    the optimizer steps and the rows to evaluate.
    """
    split = split or config.eval_split
    config, _ = resolve_start(for_split(config, split), required=False)
    context = StudyContext(config)  # only for where trained models are kept (no data loaded)
    todo, done, sft_to_train = [], [], []
    steps = 0
    lm_evaluations = 0
    for seed in config.seeds:
        needs_sft = False
        for name, method in config.methods.items():
            path = run_path(config.output_dir, split, name, seed)
            (done if path.exists() else todo).append((name, seed))
            if path.exists():
                continue
            if method.kind in ("sft", *PREFERENCE_KINDS):
                needs_sft = True
            if method.kind in PREFERENCE_KINDS:
                kept = config.sft.start_rows != "auto" and stages.kept_model_dir(context, method, seed)
                if not (kept and (kept / STAGE_MARKER).exists()):  # a model another run kept is only evaluated
                    steps += stage_steps(method.settings) or 0
            if method.kind in LM_KINDS and not (method.kind == "base" and lm_evaluations and seed != config.seeds[0]):
                lm_evaluations += 1
        sft_seed = seed if config.sft_seed is None else config.sft_seed
        if needs_sft and sft_seed not in sft_to_train:
            points = {
                sft_start_rows(config, m) for m in config.methods.values() if m.kind in ("sft", *PREFERENCE_KINDS)
            }
            points.discard("auto")  # not decided yet: run_experiment says so
            if not all((sft_checkpoint_dir(config, sft_seed, rows) / STAGE_MARKER).exists() for rows in points):
                sft_to_train.append(sft_seed)
                steps += stage_steps(config.sft) or 0
    return {
        "split": split,
        "todo": todo,
        "done": done,
        "sft_to_train": sft_to_train,
        "optimizer_steps": steps,
        "lm_evaluations": lm_evaluations,
        "eval_rows": config.eval_rows,
    }


def describe_plan(config: ExperimentConfig, split: str | None = None) -> str:
    """The plan as text (`trl-sdpo experiment --dry-run`)."""
    config = for_split(config, split or config.eval_split)
    p = plan(config, split)
    lines = [
        f"study {config.study!r}, preset {config.preset!r}, split {p['split']}, output {config.output_dir}",
        f"model {config.model or 'SmolLM2-135M-Instruct (embedded)'}, {config.num_candidates} candidates, "
        f"{config.eval_rows or 'all'} eval rows (data seed {config.data_seed}), seeds {config.seeds}, "
        f"generation {'on' if config.generation else 'off'}, candidate lists {config.sampler}, "
        f"precision {precision_name(resolve_bf16(config.bf16))} (bf16: {config.bf16})"
        + "".join(f", also ranked on the {sampler} lists" for sampler in config.extra_eval_samplers)
        + (
            f" (methods {', '.join(config.extra_eval_methods)})"
            if config.extra_eval_samplers and config.extra_eval_methods is not None
            else ""
        ),
        f"SFT stage: {config.sft.train_rows or 'all'} rows, {_steps_text(config.sft)} x {config.sft.batch_size} rows "
        f"x {config.sft.gradient_accumulation_steps} accumulation, lr {config.sft.learning_rate}",
    ]
    for name, method in config.methods.items():
        line = f"  {name:<16} kind {method.kind:<14}"
        if method.settings is not None:
            s = method.settings
            line += (
                f"{s.train_rows or 'all'} rows, {_steps_text(s)} x {s.batch_size} x {s.gradient_accumulation_steps}, "
                f"lr {s.learning_rate}"
            )
            if method.kind != "sft-continued":
                line += f", beta {s.beta}, k {1 if method.kind == 'dpo' else s.num_negatives} {s.negative_strategy}"
                if method.kind == "dpo-pairs":
                    line += ", pairwise"
            if method.trainer == "trl":
                line += ", TRL's DPOTrainer"
        if method.sft_rows is not None:
            line += f"the SFT curve point after {method.sft_rows} rows"
        if method.options:
            line += ", ".join(f"{key} {value}" for key, value in method.options.items())
        lines.append(line)
    lines.append(f"runs to do: {len(p['todo'])} ({', '.join(f'{m}/seed{s}' for m, s in p['todo']) or 'none'})")
    lines.append(f"runs done (skipped): {len(p['done'])}")
    lines.append(f"SFT checkpoints to train: seeds {p['sft_to_train'] or 'none'}")
    lines.append(
        f"estimated: {p['optimizer_steps']} optimizer steps (stages given in epochs of the whole split not counted), "
        f"{p['lm_evaluations']} LM evaluations of "
        f"{config.eval_rows or 'all'} rows"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- the runner
class Runner:
    def __init__(self, config: ExperimentConfig, split: str, show_progress: bool):
        self.config, self.split, self.show_progress = config, split, show_progress
        # What the stages share (the dataset, the preference and reference rows of each seed); they get only this
        self.context = StudyContext(config)
        self.output_dir, self.bf16 = self.context.output_dir, self.context.bf16
        self.start_pick = None  # the curve rule's outcome when `sft.start_rows` is auto (set by run_experiment)
        self._base_result: dict[str, Any] | None = None

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        from ..builders import build_examples
        from ..loaders import load_dataset_by_name

        c = self.config
        self.dataset = load_dataset_by_name(c.dataset, data_dir=c.data_dir, min_history=c.min_history)
        self.context.dataset = self.dataset
        options = self.context.example_options()
        self.eval_examples = build_examples(
            self.dataset, self.split, seed=c.data_seed, max_rows=c.eval_rows, **options
        )
        self.row_ids = row_ids_of(self.eval_examples)
        # The same rows with other samplers' candidate lists (the rows are drawn before the lists, by `data_seed`)
        self.other_examples = {}
        for sampler in c.extra_eval_samplers:
            rows = options | {"sampler": sampler}
            examples = build_examples(self.dataset, self.split, seed=c.data_seed, max_rows=c.eval_rows, **rows)
            if row_ids_of(examples) != self.row_ids:
                raise RuntimeError(f"The {sampler} lists were built for other rows than the study's eval rows.")
            self.other_examples[sampler] = examples
        self._train_lists: dict[str, tuple[list, list]] = {}

    # ---------------------------------------------------------------- SFT checkpoint
    def sft_settings(self, seed: int) -> dict[str, Any]:
        """What the SFT stage of a seed was trained with (`start_rows` only picks a point afterwards)."""
        stage = stage_record(self.config.sft, drop=("start_rows",))
        return json_safe({"sft": stage, **self._model_settings(), "seed": seed})

    def sft_checkpoint(self, seed: int, rows: int | None = None) -> tuple[Path, dict[str, Any]]:
        """The seed's SFT model folder (the end of the stage, or the curve point after `rows` rows) and its record
        (settings, log history, time, sittings); the stage is trained (or resumed) if the folder is missing."""
        directory = sft_checkpoint_dir(self.config, seed, rows)
        settings = self.sft_settings(seed)
        marker = directory / STAGE_MARKER
        trained = not marker.is_file()
        if trained:
            end = sft_checkpoint_dir(self.config, seed)  # the stage's folder; `directory` may be a curve point
            stages.train_sft_checkpoint(self.context, seed, end, settings, until_rows=rows)
        record = json.loads(marker.read_text())
        if record.get("settings") != settings:
            raise ConfigError(
                f"{directory} holds an SFT model trained with other settings than this study's `sft:` "
                "section; choose another --output_dir or delete the folder."
            )
        if trained:
            # Trained again where the study's runs recorded it before (the folder was lost): say how close it is,
            # in the marker, so that every run from it records the comparison (`sft_retrained`)
            comparison = compare_with_recorded_sft(self.output_dir, directory, record)
            if comparison is not None:
                record["retrained"] = comparison
                write_json_atomic(marker, record)
                logger.info(
                    f"[experiment] {directory} was trained again; its training losses differ from those recorded "
                    f"in {comparison['compared_with']} by at most {comparison['max_abs_loss_diff']} over "
                    f"{comparison['steps']} steps (0: the same model as before)"
                )
        return directory, record

    def _model_settings(self) -> dict[str, Any]:
        c = self.config
        keys = ("dataset", "data_dir", "min_history", "sampler", "num_candidates", "conversational", "paraphrase")
        keys += ("model", "dtype", "max_length", "activation_checkpointing", "bf16")
        return {k: getattr(c, k) for k in keys} | {"lora": dataclasses.asdict(c.lora) if c.lora else None}

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model, tokenizer, timings, examples=None) -> tuple[dict, dict]:
        """Generation (if on) and ranking metrics and per-row records on the eval rows (`examples`: other lists)."""
        import torch
        from transformers import set_seed

        c = self.config
        other_lists = examples is not None
        examples = self.eval_examples if examples is None else examples
        model.eval()
        set_seed(c.data_seed)
        # The precision the methods trained in (autocast; log-softmax stays fp32 in the log-prob head)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._evaluate(model, tokenizer, timings, examples, other_lists)

    def _evaluate(self, model, tokenizer, timings, examples, other_lists: bool) -> tuple[dict, dict]:
        from ..evaluate import evaluate_generation
        from ..ranking import evaluate_ranking

        c = self.config
        generation, hits, valid = None, None, None
        if c.generation and not other_lists:
            with timed(timings, "eval_generation"):
                result = evaluate_generation(
                    model,
                    tokenizer,
                    examples[: c.generation_rows],  # the first rows only with `generation_rows`
                    batch_size=c.eval_batch_size,
                    max_new_tokens=c.max_new_tokens,
                    return_records=True,
                    show_progress=self.show_progress,
                )
            records = result.pop("records")
            generation = result
            hits = [int(r["hit"]) for r in records]
            valid = [int(r["valid"]) for r in records]
        with timed(timings, "eval_other_lists" if other_lists else "eval_ranking"):
            ranking = evaluate_ranking(
                model,
                tokenizer,
                examples,
                batch_size=c.eval_batch_size,
                return_records=True,
                show_progress=self.show_progress,
            )
        ranks = [r["rank"] for r in ranking.pop("records")]
        metrics = {"generation": generation, "ranking": ranking}
        rows = {"ids": self.row_ids, "target_rank": ranks, "generation_hit": hits, "generation_valid": valid}
        return metrics, rows

    # ---------------------------------------------------------------- methods
    def run_method(self, method: MethodConfig, seed: int) -> dict[str, Any] | None:
        timings: dict[str, float | None] = {"train": None, "eval_generation": None, "eval_ranking": None}
        if self.other_lists_for(method):
            timings["eval_other_lists"] = None
        extra: dict[str, Any] = {}
        log_history: list = []
        start = time.perf_counter()
        if method.kind in BASELINE_KINDS:
            every_ranks = self.baseline_ranks(method, seed, timings)
            if every_ranks is None:
                return None
            record = ranking_record(every_ranks.pop(None), self.row_ids)
            metrics, rows = record["metrics"], record["rows"]
            for sampler, other in every_ranks.items():
                extra.setdefault("other_lists", {})[sampler] = ranking_record(other, self.row_ids)
        elif method.kind == "base":
            if self._base_result is None:
                self._base_result = self.existing_base(method) or self.evaluate_base(timings, seed, method)
            metrics, rows, timings, extra["evaluated_with_seed"], other = copy.deepcopy(self._base_result)
            extra.update(other)
            extra["seed_independent"] = True
            extra["note"] = (
                "base does not depend on the seed: evaluated once per split, the same result for every seed"
            )
        else:
            sft_seed = seed if self.config.sft_seed is None else self.config.sft_seed
            directory, record = self.sft_checkpoint(sft_seed, sft_start_rows(self.config, method))
            extra["sft_checkpoint"] = str(directory)
            pick = self.start_pick
            if pick is not None and sft_needs_start(method):  # `start_rows: auto`: what the rule saw
                extra["sft_start"] = {"rows": pick.rows, "rule": pick.rule, "steps": pick.steps}
            extra["sft_train_s"] = record["train_s"]
            if "rows_seen" in record:
                extra["sft_rows_seen"] = record["rows_seen"]
            if record.get("sittings"):
                extra["sft_sittings"] = record["sittings"]
            if "retrained" in record:
                extra["sft_retrained"] = record["retrained"]
            kept = stages.kept_model_dir(self.context, method, seed)
            if method.kind == "sft":
                model, tokenizer = models.load_checkpoint(directory, self.config)
                log_history = record["log_history"]
                timings["train"] = record["train_s"]
            elif kept is not None and (kept / STAGE_MARKER).is_file():
                # Trained in an earlier call (on the other split, or under another name with the same settings)
                model, tokenizer = models.load_checkpoint(kept, self.config)
                kept_record = json.loads((kept / STAGE_MARKER).read_text())
                log_history, timings["train"] = kept_record["log_history"], kept_record["train_s"]
                extra.update(kept_record["info"], trained_model=str(kept))
            else:
                model, tokenizer = models.load_checkpoint(directory, self.config)
                with timed(timings, "train"):
                    model, log_history, info = stages.train_preference(
                        self.context, method, seed, model, tokenizer, kept
                    )
                if kept is not None:
                    timings["train"] = sitting_seconds(info["sittings"])
                    extra["trained_model"] = str(kept)
                extra.update(info)
            metrics, rows = self.evaluate(model, tokenizer, timings)
            extra.update(self.evaluate_other_lists(model, tokenizer, timings, method))
            del model
        timings["total"] = round(time.perf_counter() - start, 2) if method.kind != "base" else timings["total"]
        return {
            "metrics": metrics,
            "rows": rows,
            "log_history": json_safe(log_history),
            "timings_s": timings,
            **extra,
        }

    def other_lists_for(self, method: MethodConfig) -> dict[str, list]:
        """The eval rows with each `extra_eval_samplers` list that `method` is also evaluated on (`extra_eval_methods`)."""
        names = self.config.extra_eval_methods
        return self.other_examples if names is None or method.name in names else {}

    def evaluate_other_lists(self, model, tokenizer, timings, method: MethodConfig) -> dict[str, Any]:
        """`{"other_lists": {sampler: {"metrics", "rows"}}}` for `extra_eval_samplers` (ranking only); `{}` if none."""
        out = {}
        for sampler, examples in self.other_lists_for(method).items():
            metrics, rows = self.evaluate(model, tokenizer, timings, examples=examples)
            out[sampler] = {"metrics": metrics, "rows": rows}
        return {"other_lists": out} if out else {}

    def evaluate_base(self, timings, seed: int, method: MethodConfig):
        start = time.perf_counter()
        model, tokenizer = models.load_base_model(self.config)
        metrics, rows = self.evaluate(model, tokenizer, timings)
        other = self.evaluate_other_lists(model, tokenizer, timings, method)
        timings["total"] = round(time.perf_counter() - start, 2)
        return metrics, rows, timings, seed, other

    def existing_base(self, method: MethodConfig):
        """The base result of another seed of this split with the same settings, written in an earlier sitting."""
        settings = run_settings(self.config, method)  # base: no SFT seed
        for path in sorted((self.output_dir / self.split / method.name).glob("seed*.json")):
            data = json.loads(path.read_text())
            if data.get("config") == settings and data["rows"]["ids"] == self.row_ids:
                other = {"other_lists": data["other_lists"]} if "other_lists" in data else {}
                return data["metrics"], data["rows"], data["timings_s"], data.get("evaluated_with_seed"), other
        return None

    def baseline_ranks(self, method: MethodConfig, seed: int, timings) -> dict[str | None, list[int]] | None:
        """The target ranks of a baseline on the eval rows (key `None`) and on the same rows with each
        `extra_eval_samplers` list (key: the sampler); `None` if the baseline is not available."""
        from ..baselines import memorizer_ranks, popularity_ranks, random_ranks

        sets = {None: self.eval_examples, **self.other_lists_for(method)}
        if method.kind == "sasrec":
            try:  # the optional `baselines` extra: our module imports without it, replay-rec may not be there
                from ..sasrec import require_replay, sasrec_ranks

                require_replay()
            except ImportError as error:
                logger.warning(
                    f"Skipping {method.name}: SASRec is not available ({error}); pip install 'trl-sdpo[baselines]'."
                )
                return None
            # One model for every list: scoring a row reads only its history and its own candidates, so the rows of
            # all lists are scored in one pass after one training (minutes on CPU) instead of one training per list.
            with timed(timings, "train"):
                joined = [example for examples in sets.values() for example in examples]
                ranks = sasrec_ranks(self.dataset, joined, seed=seed, **method.options)
            out, start = {}, 0
            for sampler, examples in sets.items():
                out[sampler], start = ranks[start : start + len(examples)], start + len(examples)
            return out
        out = {}
        for sampler, examples in sets.items():
            with timed(timings, "train" if sampler is None else "eval_other_lists"):
                if method.kind == "random":
                    out[sampler] = random_ranks(examples, seed=seed)
                elif method.kind == "popular":
                    out[sampler] = popularity_ranks(self.dataset, examples)
                else:  # memorizer
                    lists = self.train_lists(sampler or self.config.sampler)
                    out[sampler] = memorizer_ranks(*lists, examples, seed=seed)
        return out

    def train_lists(self, sampler: str) -> tuple[list, list]:
        """The train split's candidate lists from `sampler` (seeded by `data_seed`) and targets: what the memorizer
        remembers. Built once per sampler."""
        from ..candidates import sample_candidates

        if sampler not in self._train_lists:
            rows = self.dataset.split("train")
            lists = sample_candidates(self.dataset, rows, self.config.num_candidates, sampler, self.config.data_seed)
            self._train_lists[sampler] = (lists, [row.target for row in rows])
        return self._train_lists[sampler]


def run_experiment(
    config: ExperimentConfig, split: str | None = None, show_progress: bool = True
) -> dict[str, list[tuple[str, int]]]:
    """
    Run every (method, seed) of `config` on `split` that has no JSON yet, writing one JSON per run.

    Args:
        config (`ExperimentConfig`): The validated study (see [`load_experiment_config`]).
        split (`str`, *optional*): `valid` or `test`; defaults to `config.eval_split`.
        show_progress (`bool`, *optional*, defaults to `True`): Progress bars over runs, training and evaluation.

    Returns:
        `dict` with `"written"`, `"skipped"` and `"unavailable"` lists of (method, seed).
    """
    from ..machine import machine_info, package_versions

    split = split or config.eval_split
    if split not in ("valid", "test"):
        raise ConfigError(f"`split` is {split!r}; expected valid or test.")
    config = for_split(config, split)
    config, pick = resolve_start(config)
    if pick is not None and pick.decided:
        logger.info(f"[experiment] {pick.describe()}")
    runner = Runner(config, split, show_progress)
    runner.start_pick = pick
    result: dict[str, list] = {"written": [], "skipped": [], "unavailable": []}
    todo = []
    for seed in config.seeds:
        for name, method in config.methods.items():
            path = run_path(config.output_dir, split, name, seed)
            if path.exists():
                check_existing(path, run_settings(config, method, seed))
                logger.info(f"[experiment] {split} {name} seed {seed}: {path} exists, skipped")
                result["skipped"].append((name, seed))
            else:
                todo.append((name, method, seed, path))
    if not todo:
        return result
    if any(method.kind not in BASELINE_KINDS for _, method, _, _ in todo):
        check_precision(config.output_dir, precision_name(runner.bf16))
    runner.load_data()
    machine, versions = machine_info(), package_versions()
    with tqdm(total=len(todo), desc="Runs", disable=not show_progress) as bar:
        for name, method, seed, path in todo:
            bar.set_postfix_str(f"{name} seed {seed}")
            logger.info(f"[experiment] {split} {name} (kind {method.kind}) seed {seed}")
            outcome = runner.run_method(method, seed)
            if outcome is None:
                result["unavailable"].append((name, seed))
            else:
                data = {
                    "schema": SCHEMA,
                    "study": config.study,
                    "preset": config.preset,
                    "method": name,
                    "kind": method.kind,
                    "seed": seed,
                    "split": split,
                    "config": run_settings(config, method, seed),
                    # What ran (config `bf16: auto` resolves per machine); baselines use no LM
                    "precision": None if method.kind in BASELINE_KINDS else precision_name(runner.bf16),
                    **outcome,
                    "versions": versions,
                    "machine": machine,
                    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                }
                write_json_atomic(path, data)
                result["written"].append((name, seed))
            bar.update(1)
    return result
