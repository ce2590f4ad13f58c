"""The TRL versions trl-sdpo is tested with: one range, in pyproject.toml and in the warning a TRL outside it gets."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import pytest

from trl_sdpo import versions
from trl_sdpo.versions import TESTED_TRL, untested_trl_message, warn_if_untested_trl

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_pyproject_requires_exactly_the_tested_trl_range():
    (requirement,) = [r for r in PYPROJECT["project"]["dependencies"] if re.match(r"trl\s*[<>=!~]", r)]
    assert requirement.replace(" ", "") == f"trl{TESTED_TRL}"


def test_the_tested_range_starts_at_the_floor_ci_installs():
    # .ci/floors.py installs every `>=` bound exactly; the floor leg's TRL must be inside the tested range
    assert untested_trl_message(re.search(r">=([\d.]+)", TESTED_TRL).group(1)) is None


@pytest.mark.parametrize("installed", ["1.16.0", "1.16.3", "1.16.1.dev0"])
def test_a_tested_trl_gets_no_message(installed):
    assert untested_trl_message(installed) is None


@pytest.mark.parametrize("installed", ["1.17.0", "1.17.0.dev0", "2.0.0", "1.15.0"])
def test_a_trl_outside_the_range_gets_a_message_naming_the_range_and_the_version(installed):
    message = untested_trl_message(installed)
    assert message.startswith("trl-sdpo is tested with trl>=1.16.0,<1.17 and TRL ")
    assert f"TRL {installed} is installed" in message


def test_the_warning_is_given_once_per_process(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_untested_trl("1.17.0")
        warn_if_untested_trl("1.17.0")
    assert [str(w.message)[:40] for w in caught] == ["trl-sdpo is tested with trl>=1.16.0,<1.1"]
    assert caught[0].category is UserWarning


def test_a_tested_trl_is_not_warned_about(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_untested_trl("1.16.0")
    assert caught == []


def test_importing_the_trainers_with_an_untested_trl_warns_once_naming_the_range():
    import subprocess
    import sys

    # A fresh process (the warning is once per process) that reports TRL 1.17.0 once trl itself is imported
    code = (
        "import importlib.metadata as m, warnings, trl; real = m.version; "
        "m.version = lambda name: '1.17.0' if name == 'trl' else real(name); warnings.simplefilter('always'); "
        "import trl_sdpo.trainer, trl_sdpo.sft, trl_sdpo.commands.sdpo"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("trl-sdpo is tested with trl>=1.16.0,<1.17 and TRL 1.17.0 is installed") == 1
