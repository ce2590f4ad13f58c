"""The dependency floors declared in pyproject.toml, for the CI leg that installs them exactly.

    python .ci/floors.py constraints [EXTRA...]  # prints `name==floor` for every `>=` floor (pip constraints file)
    python .ci/floors.py check [EXTRA...]        # exit 1 unless every floor is the installed version

The floors are the `>=` lower bounds of `[project] dependencies` and of the extras named. Only the standard library
is needed to list them (run before anything is installed); `check` runs in the floor environment afterwards.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(extras: list[str], pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{canonical name: lower bound} for every requirement with a `>=` specifier, in declaration order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"pyproject.toml has no extra {unknown}; extras: {sorted(optional)}")
    requirements = list(project["dependencies"]) + [req for extra in extras for req in optional[extra]]
    found: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot parse requirement {requirement!r}")
        name, specifiers = _canonical(match.group(1)), match.group(3)
        for specifier in filter(None, (part.strip() for part in specifiers.split(","))):
            if specifier.startswith(">="):
                floor = specifier[2:].strip()
                if found.get(name, floor) != floor:
                    raise SystemExit(f"{name} has two different floors: {found[name]} and {floor}")
                found[name] = floor
    return found


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version with its zero padding and any local label (`2.13.0+cpu`) dropped."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise ValueError(f"not a release version: {version!r}")
    numbers = [int(part) for part in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def same_version(installed: str, floor: str) -> bool:
    """`installed` is exactly the floor: `2.13.0+cpu` is 2.13 and 2.13.0; a pre- or post-release is not."""
    base = installed.split("+", 1)[0]
    return re.fullmatch(r"v?\d+(\.\d+)*", base) is not None and _release(base) == _release(floor)


def check(extras: list[str]) -> list[str]:
    """The disagreements between the declared floors and this environment, one line each (empty when none)."""
    problems = []
    for name, floor in floors(extras).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: floor {floor}, not installed")
            continue
        status = "ok" if same_version(installed, floor) else "MISMATCH"
        print(f"{name:16} floor {floor:10} installed {installed:16} {status}")
        if status != "ok":
            problems.append(f"{name}: floor {floor} in pyproject.toml, {installed} installed")
    return problems


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"constraints", "check"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, extras = argv[0], argv[1:]
    if command == "constraints":
        for name, floor in floors(extras).items():
            print(f"{name}=={floor}")
        return 0
    problems = check(extras)
    for problem in problems:
        print(f"floor check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
