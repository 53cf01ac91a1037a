"""Every command in the README's shell blocks stays runnable: files it names exist, flags it passes exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from precise.cli import main

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
PATH = re.compile(r"(?<![\w/.-])((?:scripts|jobs|benchmarks|configs|docker|serve)/[\w./-]+)")
SCRIPT = re.compile(r"python ((?:jobs|benchmarks|scripts)/[\w/-]+\.py)((?: [^#|]*)?)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line.partition("  #")[0].strip() for block in BLOCK.findall(text) for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _sources() -> str:
    # flags are parsed by the script itself or by shared parsers (jobs/_common.py, precise modules)
    files = [*ROOT.glob("jobs/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("platform/precise/**/*.py")]
    return "\n".join(f.read_text() for f in files)


def test_readme_has_commands() -> None:
    assert any(line.startswith("precise ") for line in _lines())
    assert any(SCRIPT.search(line) for line in _lines())


@pytest.mark.parametrize("line", _lines())
def test_files_named_exist(line: str) -> None:
    for path in PATH.findall(line):
        if "<" in path:
            continue
        assert (ROOT / path.rstrip(".")).exists(), f"README names {path}, which does not exist: {line}"


@pytest.mark.parametrize("line", [x for x in _lines() if SCRIPT.search(x)])
def test_script_flags_exist(line: str) -> None:
    sources = _sources()
    for match in SCRIPT.finditer(line):
        for flag in FLAG.findall(match.group(2)):
            assert f'"{flag}"' in sources, f"README passes {flag} to {match.group(1)}, which no parser defines"


@pytest.mark.parametrize("line", [x for x in _lines() if x.startswith("precise ")])
def test_precise_verbs_and_flags_exist(line: str, capsys) -> None:
    words = line.split()
    verb = words[1]
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0, line
    helptext = capsys.readouterr().out
    for flag in FLAG.findall(line):
        assert flag in helptext, f"`precise {verb}` has no {flag}: {line}"
    for action in words[2].split("|") if len(words) > 2 and not words[2].startswith("-") else []:
        assert action in helptext, f"`precise {verb}` has no action {action}: {line}"
