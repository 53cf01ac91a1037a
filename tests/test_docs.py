"""The documentation stays true to the repository: links resolve, the config reference is current."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docker").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip())
    text = re.sub(r"[^\w\- ]", "", unicodedata.normalize("NFKC", text).lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text)


def test_slug_follows_github():
    assert slug("Rotate the Ray auth token") == "rotate-the-ray-auth-token"
    assert slug("`kafka.client_options`") == "kafkaclient_options"
    assert slug("10,000x: a large cluster, and a different design") == "10000x-a-large-cluster-and-a-different-design"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    problems = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists():
            problems.append(f"{target}: {resolved} does not exist")
        elif not resolved.is_relative_to(REPO):
            problems.append(f"{target}: points outside the repository")
        elif anchor:
            if resolved.suffix != ".md" or resolved.is_dir():
                problems.append(f"{target}: anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(REPO)}")
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(problems)


def test_docs_link_each_other():
    readme = {t.partition("#")[0] for t in links(REPO / "README.md")}
    for name in ("architecture", "operations", "configuration", "scaling"):
        assert f"docs/{name}.md" in readme, f"README.md does not link docs/{name}.md"


def test_configuration_reference_is_current_and_complete():
    """docs/configuration.md is what scripts/gen_config_docs.py generates from the code today."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gen_config_docs
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert not gen_config_docs.undocumented(), (
        f"config keys without a comment or description (add one in the model's source): "
        f"{gen_config_docs.undocumented()}")
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == gen_config_docs.render(), (
        "docs/configuration.md is out of date: run python scripts/gen_config_docs.py")
    from precise.config import PreciseConfig

    for section in PreciseConfig.model_fields:  # every top-level section has its own heading
        assert section == "name" or f"## `{section}`" in committed


def test_gen_config_docs_check_mode_runs():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_config_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
