"""Release bookkeeping: one version everywhere, a dated changelog section for it, floors that CI can install."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

import trl_sdpo

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floors_module():
    path = ROOT / ".ci" / "floors.py"
    if not path.exists():
        pytest.skip(".ci/floors.py is in a clone of the repository, not in the source distribution")
    spec = importlib.util.spec_from_file_location("ci_floors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version_is_the_same_in_pyproject_and_the_package():
    assert trl_sdpo.__version__ == PYPROJECT["project"]["version"]


def test_the_license_file_is_the_apache_2_text_the_metadata_declares():
    # setuptools puts LICENSE into the wheel and the sdist by its default `license-files` patterns
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_changelog_has_a_dated_section_for_the_version_under_an_unreleased_one():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## \[([^\]]+)\](.*)$", changelog, flags=re.MULTILINE)
    assert sections[0][0] == "Unreleased", sections[:2]
    released = {name: rest for name, rest in sections[1:]}
    version = trl_sdpo.__version__
    assert version in released, f"CHANGELOG.md has no section for {version}"
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", released[version]), released[version]
    assert sections[1][0] == version, "the newest release section is not the package's version"


def test_every_runtime_dependency_but_tqdm_has_a_floor_the_floor_leg_installs():
    floors = _floors_module().floors(["dev", "rec"])
    names = {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() for req in PYPROJECT["project"]["dependencies"]}
    assert names - {"tqdm"} <= floors.keys(), names - floors.keys()
    # Written out in full: the floor leg pins `name==floor`, and the check compares them with what got installed
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", floor) for floor in floors.values()), floors


@pytest.mark.parametrize(
    ("installed", "floor", "same"),
    [
        ("2.13.0+cpu", "2.13.0", True),
        ("2.13.0", "2.13", True),
        ("1.16.0", "1.16.0", True),
        ("1.16.1", "1.16.0", False),
        ("5.23.0", "5.24.0", False),
        ("1.16.0rc1", "1.16.0", False),
        ("1.16.0.post1", "1.16.0", False),
    ],
)
def test_floor_check_compares_exact_release_versions(installed, floor, same):
    assert _floors_module().same_version(installed, floor) is same


def test_floor_parsing_reads_every_lower_bound(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["torch>=2.13.0", "trl >= 1.16.0, <2", "Foo_Bar[x]>=1.0; python_version>\'3\'", "tqdm"]\n'
        '[project.optional-dependencies]\nrec = ["gguf>=0.13.0", "matplotlib"]\n'
    )
    floors = _floors_module().floors(["rec"], pyproject)
    assert floors == {"torch": "2.13.0", "trl": "1.16.0", "foo-bar": "1.0", "gguf": "0.13.0"}
