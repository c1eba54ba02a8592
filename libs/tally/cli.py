"""The `tally` command: run the stack, its services and workers, and operate it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from tally.config import SettingsError, get_settings

SERVICES = ("gateway", "billing", "tenant")

# Operator commands register here: name -> function adding their subparsers.
CommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


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

    settings = get_settings()
    port = {
        "gateway": settings.gateway_port,
        "billing": settings.billing_port,
        "tenant": settings.tenant_port,
    }[args.service]
    uvicorn.run(
        f"{args.service}.app:create_app",
        factory=True,
        host=settings.host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
        server_header=False,
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except SettingsError as exc:
        print(f"tally: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
