"""The `tally` command: run the stack, its services and workers, and operate it."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import signal
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from tally.config import SettingsError, get_settings

SERVICES = ("gateway", "billing", "tenant")

# Each module adds its operator commands through `register(commands)`, where `commands` is the
# argparse sub-parsers object; every handler takes the parsed args and returns an exit code.
COMMAND_MODULES = ("tenant.cli", "billing.cli", "billing.payments.cli", "billing.finance.cli")


class CommandError(Exception):
    """An operator command failed for a reason the operator can fix; printed without a trace."""


def emit(args: argparse.Namespace, result: Any, human: str) -> None:
    """Print a command's result: one JSON object with `--json`, a readable line otherwise."""
    if getattr(args, "json", False):
        print(msgspec.json.encode(result).decode())  # noqa: T201
    else:
        print(human)  # noqa: T201


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _cmd_up(_args: argparse.Namespace) -> int:
    from tally.log import configure_logging
    from tally.supervisor import run_up

    settings = get_settings()
    configure_logging(settings)
    run_up(settings)
    return 0


def _cmd_migrate(_args: argparse.Namespace) -> int:
    from tally.log import configure_logging
    from tally.migrations import apply_migrations

    settings = get_settings()
    configure_logging(settings)
    if not settings.database_url:
        raise SettingsError("TALLY_DATABASE_URL: required by `tally migrate`")
    applied = asyncio.run(apply_migrations(settings.database_url))
    print(f"applied {len(applied)} migration(s)")  # noqa: T201
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tally.gc_tuning import tune_garbage_collector

    settings = get_settings()
    port = {
        "gateway": settings.gateway_port,
        "billing": settings.billing_port,
        "tenant": settings.tenant_port,
    }[args.service]
    # uvicorn drains in-flight requests on SIGTERM, then restores the handler it found and
    # raises the signal again, so under the default handler a clean shutdown would still end
    # "killed by SIGTERM". Our handler turns that re-raise into exit 0, what orchestrators read
    # as a graceful stop.
    signal.signal(signal.SIGTERM, _drained)
    http: Any = "httptools"
    # X-Forwarded-For rewriting is for the services that look at the client's address (the
    # sign-in throttle); the gateway never does, and skips the middleware on every request.
    proxy_headers = args.service != "gateway"
    if args.service == "gateway":
        # httptools, writing each response's head and body in one system call.
        from gateway.http_server import GatewayHttpProtocol

        http = GatewayHttpProtocol
    # The app is built here, not by uvicorn, so that everything start-up allocated can be
    # frozen out of the garbage collector's sight before the first request (tally.gc_tuning).
    app = importlib.import_module(f"{args.service}.app").create_app(settings)
    tune_garbage_collector()
    uvicorn.run(
        app,
        host=settings.host,
        port=port,
        loop="uvloop",
        http=http,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
        server_header=False,
        proxy_headers=proxy_headers,
    )
    return 0


def _drained(_signum: int, _frame: object) -> None:
    """SIGTERM re-raised by uvicorn after its graceful shutdown (or before it started)."""
    raise SystemExit(0)


def _cmd_settings(args: argparse.Namespace) -> int:
    from tally.config import settings_markdown, settings_reference

    if args.markdown:
        print(settings_markdown(), end="")  # noqa: T201
    else:
        for variable, default, description in settings_reference():
            print(f"{variable}={default.strip(chr(39))}\t# {description}")  # noqa: T201
    return 0


def _cmd_worker(_args: argparse.Namespace) -> int:
    from tally.worker import run

    run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="run the whole stack on this machine").set_defaults(
        handler=_cmd_up
    )
    commands.add_parser("migrate", help="apply pending database migrations").set_defaults(
        handler=_cmd_migrate
    )
    serve = commands.add_parser("serve", help="run one HTTP service")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(handler=_cmd_serve)
    commands.add_parser("worker", help="run a background worker").set_defaults(handler=_cmd_worker)
    settings = commands.add_parser("settings", help="list every TALLY_* setting")
    settings.add_argument("--markdown", action="store_true", help="the docs reference table")
    settings.set_defaults(handler=_cmd_settings)
    for module_name in COMMAND_MODULES:
        if _module_exists(module_name):
            importlib.import_module(module_name).register(commands)
    return parser


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except SettingsError as exc:
        print(f"tally: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except CommandError as exc:
        if getattr(args, "json", False):
            error = {"error": {"message": str(exc), "type": "command_error"}}
            print(msgspec.json.encode(error).decode())  # noqa: T201
        print(f"tally: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
