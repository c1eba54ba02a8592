"""The Dockerfile and its build context, read the way Docker reads them.

The Dockerfile is parsed by Docker's own parser (the `dockerfile` package wraps BuildKit's Go
code). `.dockerignore` is matched with Docker's rules: patterns in order, the last match wins,
`!` re-includes, `**` spans directories, and a pattern that matches a folder covers its contents.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [i for i in self.instructions if i.cmd == cmd.upper()]

    def last(self, cmd: str) -> dockerfile.Command | None:
        found = self.all(cmd)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """Variables set by ENV in this stage (`$PATH`-style references left as written)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            pairs = instruction.value
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                values[key] = value
        return values


def parse_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The build stages, with `ARG` defaults declared before the first FROM substituted."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in dockerfile.parse_file(str(path)):
        if instruction.cmd == "ARG" and not stages:
            name, _, default = instruction.value[0].partition("=")
            global_args[name] = default
        elif instruction.cmd == "FROM":
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)),
                instruction.value[0],
            )
            name = instruction.value[2] if len(instruction.value) > 2 else str(len(stages))
            stages.append(Stage(name=name, base=base))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def ignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per `.dockerignore` line, in order."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:] if exception else line
        pattern = pattern.strip().strip("/")
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def in_context(relative_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends this file (path relative to the context root) to the builder."""
    parts = relative_path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exception, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not exception
    return not excluded


def context_files(root: Path = ROOT) -> list[str]:
    """The files of this checkout that reach the build (tracked or new, but not git-ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rules = ignore_rules(root / ".dockerignore")
    return sorted(p for p in listed if (root / p).is_file() and in_context(p, rules))
