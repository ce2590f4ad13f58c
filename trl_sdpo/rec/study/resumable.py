"""
Training that outlives a sitting: Trainer checkpoints to resume from, a record of each sitting, and the points of a
learning curve saved from one run.

A study's long stages (the SFT learning curve, preference runs of thousands of rows) take longer than one sitting on
a 2-core machine. Each such stage trains in `<trainer folder>`, where TRL's Trainer keeps its latest checkpoint
(`checkpoint-<step>/`: weights, optimizer, scheduler, RNG states, data position) and this module keeps
`trl_sdpo_settings.json` (what the checkpoints were trained with: a folder trained otherwise is refused, never resumed)
and `trl_sdpo_sittings.json` (one entry per sitting: start, end, seconds, steps, machine, precision). The next
`trl-sdpo experiment` call finds the checkpoint and resumes; the sittings end up in the run JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

SETTINGS_FILE = "trl_sdpo_settings.json"
SITTINGS_FILE = "trl_sdpo_sittings.json"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def last_checkpoint(folder: str | Path) -> Path | None:
    """The Trainer checkpoint with the highest step in `folder` (complete ones only: `trainer_state.json` is written
    last by the Trainer), or `None`."""
    folder = Path(folder)
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def prepare_folder(folder: str | Path, settings: dict[str, Any], precision: str | None = None) -> Path | None:
    """
    Make `folder` the trainer folder of a stage trained with `settings`; return the checkpoint to resume from.

    A folder holding checkpoints of other settings raises `ValueError` (resuming them would mix two runs); a folder
    with settings but no complete checkpoint is started over. So does a checkpoint whose sittings trained in another
    `precision` than this one would resume in (`"bf16"` or `"fp32"`: `bf16: auto` in `settings` resolves per machine,
    so a run moved to a machine without native bf16 would otherwise switch precision halfway).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recorded = folder / SETTINGS_FILE
    if recorded.is_file():
        if json.loads(recorded.read_text()) != json.loads(json.dumps(settings, default=str)):
            raise ValueError(
                f"{folder} holds Trainer checkpoints of other settings than this run's; delete the folder to train "
                "it again from the start."
            )
    else:
        for stale in folder.glob("checkpoint-*"):  # from before the settings were recorded: not ours to resume
            shutil.rmtree(stale)
        _write(recorded, settings)
    resume = last_checkpoint(folder)
    trained_in = {s["precision"] for s in read_sittings(folder) if s.get("precision")} - {precision}
    if resume is not None and precision is not None and trained_in:
        raise ValueError(
            f"{folder} holds a Trainer checkpoint trained in {', '.join(sorted(trained_in))}, and this machine would "
            f"resume it in {precision}: finish it where that precision is native, set `bf16` to match, or delete "
            "the folder to train it again from the start."
        )
    return resume


def fresh_folder(folder: str | Path) -> None:
    """Make `folder` the trainer folder of a run that keeps no checkpoints (returns `None`: nothing to resume): the
    sittings of a killed earlier attempt, which started over, are not this run's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SITTINGS_FILE).unlink(missing_ok=True)


def read_sittings(folder: str | Path) -> list[dict[str, Any]]:
    """The sittings recorded in a trainer folder (an empty list when none)."""
    path = Path(folder) / SITTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


class SittingCallback(TrainerCallback):
    """
    Record this sitting in `<folder>/trl_sdpo_sittings.json`: its start, and at every log, save and the end of training
    its end time, seconds and last step, so a killed sitting is recorded up to its last log line.

    Args:
        folder (`str` or `Path`): The trainer folder.
        machine (`dict`): [`~trl_sdpo.rec.machine.machine_info`] of this machine.
        resumed_from (`str` or `None`): The checkpoint this sitting started from.
        precision (`str`, *optional*): What this sitting trains in (`"bf16"` or `"fp32"`), checked on resuming.
    """

    def __init__(
        self,
        folder: str | Path,
        machine: dict[str, Any],
        resumed_from: str | None = None,
        precision: str | None = None,
    ):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / SITTINGS_FILE
        self.sittings = read_sittings(folder)
        self.entry = {
            "started": _now(),
            "ended": None,
            "seconds": 0.0,
            "resumed_from": resumed_from,
            "from_step": None,
            "to_step": None,
            "machine": machine,
        }
        if precision is not None:
            self.entry["precision"] = precision
        self.sittings.append(self.entry)
        self._start = time.perf_counter()

    def record(self, state) -> None:
        """Write this sitting's entry as of `state` (also called by the curve's saves)."""
        if self.entry["from_step"] is None:
            self.entry["from_step"] = state.global_step
        self.entry.update(ended=_now(), seconds=round(time.perf_counter() - self._start, 1), to_step=state.global_step)
        _write(self.path, self.sittings)

    def on_train_begin(self, args, state, control, **kwargs):
        self.entry["from_step"] = state.global_step
        self.record(state)

    def on_log(self, args, state, control, **kwargs):
        self.record(state)

    def on_save(self, args, state, control, **kwargs):
        self.record(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.record(state)


class CurveCallback(TrainerCallback):
    """
    Save the model (and tokenizer) after the optimizer steps of a learning curve, each into its own folder, written
    to `<folder>.tmp` and renamed when complete (with `marker` written last), so a killed sitting leaves no half
    point. Points already saved are not saved again after a resume.

    Args:
        points (`dict[int, Path]`): Optimizer step -> folder.
        marker (`str`): File name written last into each folder.
        record (`callable`): `record(step)` -> the JSON-able record written as `marker`.
        save (`callable`): `save(model, folder)` saves the plain model and tokenizer (adapters merged).
        stop_at (`int`, *optional*): Stop training after this step's point is saved, with a Trainer checkpoint there
            (the next call resumes from it): a curve is evaluated point by point, and a point that does not improve
            on the last spares the rest of the run. The schedule is the whole stage's either way.
    """

    def __init__(self, points: dict[int, Path], marker: str, record, save, stop_at: int | None = None):
        self.points, self.marker, self.record, self.save = points, marker, record, save
        self.stop_at = stop_at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.stop_at:
            control.should_save = True
            control.should_training_stop = True
        folder = self.points.get(state.global_step)
        if folder is None or (folder / self.marker).is_file():
            return
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.save(model, tmp)
        (tmp / self.marker).write_text(json.dumps(self.record(state), indent=1, default=str) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        self._just_saved = folder

    def on_log(self, args, state, control, **kwargs):
        # The step's own log line comes after `on_step_end`: the record of the point just saved gets it here
        folder, self._just_saved = getattr(self, "_just_saved", None), None
        if folder is not None and self.points.get(state.global_step) == folder:
            _write(folder / self.marker, self.record(state))


def checkpoint_kwargs(save_steps: int | None) -> dict[str, Any]:
    """Trainer arguments that keep the latest checkpoint every `save_steps` optimizer steps (None: no saving)."""
    if save_steps is None:
        return {"save_strategy": "no"}
    # Only the newest is kept: a checkpoint of SmolLM2-135M with AdamW's state is ~1.6 GB
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1, "save_only_model": False}
