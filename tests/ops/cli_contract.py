"""What a deployment file may ask of Tally: real `tally` commands and real `TALLY_*` settings.

Every check goes through the code itself (the CLI's argparse parser, the `Settings` struct), so a
renamed command or setting fails these tests instead of a rollout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

import pytest

from tally.cli import build_parser
from tally.config import ENV_PREFIX, Settings

SETTING_VARIABLES = frozenset(ENV_PREFIX + name.upper() for name in Settings.__struct_fields__)
_DEFAULTS = Settings()
# The port each HTTP service binds by default: what every deployment file must agree with.
DEFAULT_PORTS = {
    "gateway": _DEFAULTS.gateway_port,
    "billing": _DEFAULTS.billing_port,
    "tenant": _DEFAULTS.tenant_port,
}


def parse_tally_command(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a container's command line with the real CLI; fail the test if `tally` rejects it."""
    if not argv or PurePosixPath(argv[0]).name != "tally":
        pytest.fail(f"{list(argv)} does not run the `tally` console script")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(list(argv[1:]))
    except SystemExit:
        pytest.fail(f"`{' '.join(argv)}` is not a tally command: {stderr.getvalue().strip()}")


def role_of(args: argparse.Namespace) -> str:
    """`serve gateway` -> "gateway"; `worker` -> "worker"; `migrate` -> "migrate"."""
    return str(args.service) if args.command == "serve" else str(args.command)


def unknown_settings(names: Iterable[str]) -> set[str]:
    """The TALLY_* names that no field of `Settings` reads (a typo or a removed setting)."""
    return {name for name in names if name.startswith(ENV_PREFIX)} - SETTING_VARIABLES
