"""helm/README.md documents every value of the chart, with the default values.yaml really has."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.ops.manifests import CHART

README = CHART.parent / "README.md"
# A reference row: | `key.path` | `json default` | description |
_ROW = re.compile(r"^\| `(?P<key>[A-Za-z0-9_.]+)` \| `(?P<default>.*?)` \| .+ \|$")


def leaf_values(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to every leaf; an empty map or a list counts as one value."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaf_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def documented_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in README.read_text().splitlines():
        if match := _ROW.match(line):
            assert match["key"] not in rows, f"{match['key']} is documented twice"
            rows[match["key"]] = match["default"]
    return rows


VALUES = dict(leaf_values(yaml.safe_load((CHART / "values.yaml").read_text())))


def test_every_value_is_documented() -> None:
    assert len(VALUES) > 50  # guards against a parse that finds nothing
    missing = sorted(set(VALUES) - set(documented_rows()))
    assert missing == [], f"add these keys to helm/README.md: {missing}"


def test_every_documented_value_exists() -> None:
    stale = sorted(set(documented_rows()) - set(VALUES))
    assert stale == [], f"helm/README.md documents keys values.yaml lacks: {stale}"


def test_documented_defaults_are_the_real_ones() -> None:
    rows = documented_rows()
    wrong = {
        key: (rows[key], json.dumps(value))
        for key, value in VALUES.items()
        if key in rows and json.loads(rows[key]) != value
    }
    assert wrong == {}, "README default vs values.yaml"


def test_every_key_mentioned_in_the_prose_exists() -> None:
    # Prose refers to values as `a.b.c`; a renamed value must not leave a dangling reference.
    prose = "\n".join(line for line in README.read_text().splitlines() if not _ROW.match(line))
    mentioned = set(re.findall(r"`((?:[a-z][A-Za-z]*\.)+[a-z][A-Za-z]*)`", prose))
    known = set(VALUES) | {k.rsplit(".", n)[0] for k in VALUES for n in range(1, k.count(".") + 1)}
    file_names = {m for m in mentioned if m.endswith((".yaml", ".json", ".md"))}
    assert "postgres.url" in mentioned  # the pattern does find references
    assert mentioned - file_names - known == set()
