"""The operator docs link to files and sections that exist: a renamed heading or moved file
fails here instead of leaving a dead link in the middle of an incident."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ops.compose_file import ROOT

DOCS = sorted([*ROOT.glob("docs/*.md"), ROOT / "helm" / "README.md", ROOT / "README.md"])
# [text](target) outside code; targets with a scheme (https:, mailto:) are not checked.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")


def anchors_of(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    text = _FENCE.sub("", path.read_text())
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", heading).replace(" ", "-"))
    return anchors


def links_of(path: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", path.read_text()))
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for target in links_of(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == []


def test_the_link_check_finds_links_and_catches_a_dead_one(tmp_path: Path) -> None:
    assert "configuration.md" in links_of(ROOT / "docs" / "operations.md")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nothing) [gone](missing.md)\n")
    assert links_of(page) == ["#title", "#nothing", "missing.md"]
    assert anchors_of(page) == {"title"}
