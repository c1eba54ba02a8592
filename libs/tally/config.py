"""Settings: one typed struct, loaded once from `TALLY_*` environment variables.

Every field `foo_bar` is read from `TALLY_FOO_BAR`. Values are validated at start-up and a bad
value fails with an error naming the variable, never later in the middle of a request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Literal

import msgspec

ENV_PREFIX = "TALLY_"


class SettingsError(Exception):
    """A `TALLY_*` variable is missing or malformed; the message names it."""


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    env: Annotated[
        Literal["dev", "test", "production"],
        _doc("Deployment kind: `production` logs JSON; `dev` and `test` log readable lines."),
    ] = "dev"
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("Minimum log level.")
    ] = "info"
    log_format: Annotated[
        Literal["auto", "json", "console"],
        _doc("`auto` means JSON in production, console otherwise."),
    ] = "auto"
    database_url: Annotated[
        str,
        _doc("Postgres DSN. Empty under `tally up` starts an embedded Postgres in `./.tally/`."),
    ] = ""
    redis_url: Annotated[
        str, _doc("Redis URL. Empty under `tally up` starts an embedded Redis in `./.tally/`.")
    ] = ""
    data_dir: Annotated[str, _doc("Where `tally up` keeps the embedded Postgres and Redis.")] = (
        ".tally"
    )
    db_pool_min: Annotated[
        int, msgspec.Meta(ge=1, le=1000), _doc("Minimum connections per process pool.")
    ] = 2
    db_pool_max: Annotated[
        int, msgspec.Meta(ge=1, le=1000), _doc("Maximum connections per process pool.")
    ] = 10
    host: Annotated[str, _doc("Address the HTTP services bind to.")] = "127.0.0.1"
    gateway_port: Annotated[int, msgspec.Meta(ge=1, le=65535), _doc("Gateway port.")] = 8080
    billing_port: Annotated[int, msgspec.Meta(ge=1, le=65535), _doc("Billing port.")] = 8081
    tenant_port: Annotated[int, msgspec.Meta(ge=1, le=65535), _doc("Tenant port.")] = 8082
    max_body_bytes: Annotated[
        int,
        msgspec.Meta(ge=1024),
        _doc("Largest request body accepted by any service; larger bodies get 413."),
    ] = 4 * 1024 * 1024
    secret_key: Annotated[
        str,
        _doc(
            "Key for provider secrets (AES-256-GCM): `KID:BASE64KEY[,KID:BASE64KEY...]`, the first"
            " encrypts, all decrypt. Required in production."
        ),
    ] = ""
    event_batch_max: Annotated[
        int,
        msgspec.Meta(ge=1, le=100_000),
        _doc("Largest group-commit batch of the event appender."),
    ] = 2048
    jwt_keys: Annotated[
        str,
        _doc(
            "Ed25519 signing keys for access tokens: `KID:BASE64SEED[,KID:BASE64SEED...]`;"
            " the first signs, all verify. Outside production a key is generated in the data"
            " folder."
        ),
    ] = ""
    jwt_issuer: Annotated[str, _doc("`iss` of the access tokens Tally issues.")] = "tally"
    jwt_audience: Annotated[str, _doc("`aud` of the access tokens Tally issues.")] = "tally-api"
    access_token_ttl_seconds: Annotated[
        int, msgspec.Meta(ge=30, le=86_400), _doc("Lifetime of an access token.")
    ] = 900
    fold_shards: Annotated[
        int,
        msgspec.Meta(ge=1, le=1024),
        _doc("Number of tenant-hash shards the billing fold is split into (one checkpoint each)."),
    ] = 1
    stripe_api_key: Annotated[str, _doc("Stripe secret API key.")] = ""
    stripe_webhook_secret: Annotated[
        str, _doc("Stripe webhook signing secrets, comma-separated during rotation.")
    ] = ""
    stripe_api_base: Annotated[
        str, _doc("Stripe API base URL (tests point it at a local fake).")
    ] = ""
    # --- billing ---
    starter_credits: Annotated[
        str,
        _doc(
            "Credits granted to every new tenant (kind `starter`), a decimal such as `5` or"
            " `0.5`; 0 grants none."
        ),
    ] = "0"
    starter_credits_expire_days: Annotated[
        int,
        msgspec.Meta(ge=0, le=3650),
        _doc("Days after which unused starter credits expire; 0 means they never expire."),
    ] = 30
    fold_batch_size: Annotated[
        int,
        msgspec.Meta(ge=1, le=100_000),
        _doc(
            "Most events the billing fold applies per transaction (larger batches fold faster"
            " when catching up; each commits as one transaction)."
        ),
    ] = 10_000
    fold_poll_seconds: Annotated[
        float,
        msgspec.Meta(gt=0, le=60),
        _doc("Fallback polling interval of the fold when no commit notification arrives."),
    ] = 1.0
    live_balance_stale_seconds: Annotated[
        int,
        msgspec.Meta(ge=10),
        _doc(
            "Reconcile drops a Redis unfolded charge whose usage event is still not in the"
            " unfolded log tail after this long (folded without Redis hearing, or never"
            " appended)."
        ),
    ] = 120
    alert_webhook_timeout_seconds: Annotated[
        float, msgspec.Meta(gt=0, le=60), _doc("Timeout of one low-balance webhook delivery.")
    ] = 10.0
    alert_webhook_max_attempts: Annotated[
        int,
        msgspec.Meta(ge=1, le=50),
        _doc("Delivery attempts of a low-balance webhook before it is marked failed."),
    ] = 8
    alert_webhook_retry_seconds: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600),
        _doc("First retry delay of a failed webhook; doubles per attempt, at most one hour."),
    ] = 10.0

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def starter_credits_nano(self) -> int:
        """`starter_credits` in nano-credits (validated at load)."""
        from tally.money import parse_credits

        return parse_credits(self.starter_credits)


_FIELD_IN_PATH = re.compile(r"`\$\.(\w+)`")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `TALLY_*` variables; raise `SettingsError` naming a bad one."""
    environ = os.environ if environ is None else environ
    fields = set(Settings.__struct_fields__)
    raw: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX) :].lower()
        if field in fields:
            raw[field] = value
    try:
        # strict=False lets "8080" become an int, "true" a bool: env values are always strings.
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        match = _FIELD_IN_PATH.search(str(exc))
        variable = ENV_PREFIX + match.group(1).upper() if match else "a TALLY_ variable"
        raise SettingsError(f"{variable}: {exc}") from None
    if settings.db_pool_min > settings.db_pool_max:
        raise SettingsError("TALLY_DB_POOL_MIN: must not exceed TALLY_DB_POOL_MAX")
    try:
        if settings.starter_credits_nano < 0:
            raise SettingsError("TALLY_STARTER_CREDITS: must not be negative")
    except ValueError as exc:
        raise SettingsError(f"TALLY_STARTER_CREDITS: {exc}") from None
    if settings.production and not settings.secret_key:
        raise SettingsError("TALLY_SECRET_KEY: required when TALLY_ENV=production")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, loaded on first use."""
    return load_settings()


def settings_reference() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the source of the docs table."""
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    rows = []
    for field in info.fields:
        description = ""
        if isinstance(field.type, msgspec.inspect.Metadata):
            description = (field.type.extra_json_schema or {}).get("description", "")
        rows.append((ENV_PREFIX + field.name.upper(), repr(field.default), description))
    return rows


def settings_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated so it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `tally settings --markdown` from `tally.config.Settings`; a test fails when",
        "this file and the code disagree. Every setting is an environment variable; values are",
        "validated at start-up and a bad one stops the process with an error naming it.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for variable, default, description in settings_reference():
        shown = "(empty)" if default == "''" else f"`{default.strip(chr(39))}`"
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{variable}` | {shown} | {escaped} |")
    return "\n".join(lines) + "\n"
