"""Every `tally` command shown in docs/operators.md is one the CLI accepts."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

from tally.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "operators.md"


def documented_commands() -> list[str]:
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            match = re.search(r"(?:^\$ |\|\s+|^)(tally \S.*)$", line.strip())
            if match:
                commands.append(match.group(1).split("  #")[0].strip())
    return commands


def test_the_guide_shows_commands_of_every_group() -> None:
    groups = {shlex.split(c)[1] for c in documented_commands()}
    assert {"tenant", "key", "provider", "model", "user", "secrets"} <= groups


def test_every_documented_command_parses() -> None:
    parser = build_parser()
    for command in documented_commands():
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            raise AssertionError(f"{command!r}: {stderr.getvalue().strip()}") from None
