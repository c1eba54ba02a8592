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
            " the first signs, all verify. Required in production by the services that issue or"
            " verify tokens (tenant, billing); outside production a key is generated in the data"
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
    # --- finance ---
    finance_timezone: Annotated[
        str,
        _doc(
            "IANA time zone of the accounting calendar: statement months, invoice dates and the"
            " month-end close follow it."
        ),
    ] = "UTC"
    finance_close_grace_minutes: Annotated[
        int,
        msgspec.Meta(ge=0, le=1440),
        _doc("Minutes after a month ends before the period close runs (late commits settle)."),
    ] = 10
    tax_rates: Annotated[
        str,
        _doc(
            "VAT rate in percent per customer country (ISO 3166-1 alpha-2): `DE:19,FR:20,...`;"
            " `*:RATE` applies to countries not listed."
        ),
    ] = ""
    issuer_name: Annotated[str, _doc("Legal name of the platform on invoices.")] = ""
    issuer_address: Annotated[
        str, _doc("Postal address of the platform on invoices; lines separated by `|`.")
    ] = ""
    issuer_tax_id: Annotated[
        str, _doc("VAT id of the platform (e.g. `DE123456789`); invoice numbers run per issuer.")
    ] = ""
    issuer_country: Annotated[
        str, _doc("Country of the platform (ISO 3166-1 alpha-2), for VAT and reverse charge.")
    ] = ""
    issuer_email: Annotated[str, _doc("Contact e-mail printed on invoices.")] = ""
    issuer_logo_path: Annotated[
        str, _doc("PNG or JPEG printed at the top of invoice and statement PDFs.")
    ] = ""
    invoice_font_path: Annotated[
        str,
        _doc(
            "TrueType font for PDFs (e.g. DejaVuSans.ttf), needed for names outside Latin-1;"
            " empty uses the built-in Helvetica."
        ),
    ] = ""
    invoice_font_bold_path: Annotated[
        str, _doc("Bold TrueType font for PDFs; empty uses the regular one.")
    ] = ""
    # --- TENANT ---
    starter_credits: Annotated[
        str,
        msgspec.Meta(pattern=r"^\d{1,12}(\.\d{1,9})?$"),
        _doc("Credits every new tenant is granted (decimal, e.g. `5` or `2.5`); 0 grants none."),
    ] = "0"
    starter_credits_expire_days: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=36_500)] | None,
        _doc("Days after which starter credits expire; unset means they never expire."),
    ] = None
    refresh_token_ttl_seconds: Annotated[
        int,
        msgspec.Meta(ge=300, le=31_536_000),
        _doc("Lifetime of a refresh token (each use rotates it and starts a new lifetime)."),
    ] = 30 * 86_400
    invitation_ttl_seconds: Annotated[
        int, msgspec.Meta(ge=300, le=31_536_000), _doc("How long an invitation can be accepted.")
    ] = 7 * 86_400
    signin_max_failures_per_account: Annotated[
        int,
        msgspec.Meta(ge=1, le=1000),
        _doc("Failed sign-ins on one email before each further failure locks it for a while."),
    ] = 5
    signin_max_failures_per_address: Annotated[
        int,
        msgspec.Meta(ge=1, le=100_000),
        _doc("Failed sign-ins from one client address before it is locked out for a while."),
    ] = 50
    signin_backoff_base_seconds: Annotated[
        int,
        msgspec.Meta(ge=1, le=3600),
        _doc("First lockout after the free failures; each further failure doubles it."),
    ] = 1
    signin_backoff_max_seconds: Annotated[
        int, msgspec.Meta(ge=1, le=86_400), _doc("Longest sign-in lockout.")
    ] = 900
    signin_failure_window_seconds: Annotated[
        int,
        msgspec.Meta(ge=60, le=86_400),
        _doc("Failure counters reset after this long without a failure."),
    ] = 3600
    oidc_issuer: Annotated[
        str,
        _doc(
            "OpenID Connect issuer URL for single sign-on (its `.well-known/openid-configuration`"
            " is read); empty disables single sign-on."
        ),
    ] = ""
    oidc_client_id: Annotated[
        str, _doc("The client id Tally is registered under at the issuer (the ID token's `aud`).")
    ] = ""
    oidc_jwks_ttl_seconds: Annotated[
        int,
        msgspec.Meta(ge=60, le=86_400),
        _doc("How long the issuer's signing keys (JWKS) are cached."),
    ] = 3600
    oidc_jwks_refresh_min_seconds: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600),
        _doc(
            "Least time between two JWKS fetches triggered by an unknown `kid`, so forged"
            " tokens cannot make Tally hammer the issuer."
        ),
    ] = 30.0
    provider_test_timeout_seconds: Annotated[
        float,
        msgspec.Meta(gt=0, le=120),
        _doc("Time limit of a provider credential's test-connection call."),
    ] = 10.0

    # --- payments (Stripe Checkout, webhooks, auto top-up) ---
    stripe_success_url: Annotated[
        str,
        _doc(
            "Where Stripe Checkout sends the customer after paying; `{CHECKOUT_SESSION_ID}` is"
            " replaced by Stripe."
        ),
    ] = "http://localhost:8081/billing/checkout/done?session_id={CHECKOUT_SESSION_ID}"
    stripe_cancel_url: Annotated[
        str, _doc("Where Stripe Checkout sends the customer who cancels.")
    ] = "http://localhost:8081/billing/checkout/cancelled"
    stripe_timeout_ms: Annotated[
        int,
        msgspec.Meta(ge=100, le=120_000),
        _doc("Timeout of one Stripe API request; a timed-out request is retried with its key."),
    ] = 20_000
    stripe_max_network_retries: Annotated[
        int,
        msgspec.Meta(ge=0, le=10),
        _doc("Retries of a Stripe request after a 409, a 5xx or a network error (same key)."),
    ] = 2
    checkout_custom_min_credits: Annotated[
        int, msgspec.Meta(ge=1), _doc("Smallest custom credit amount a tenant may buy.")
    ] = 1
    checkout_custom_max_credits: Annotated[
        int,
        msgspec.Meta(ge=0),
        _doc("Largest custom credit amount a tenant may buy; 0 allows only packs."),
    ] = 100_000
    autotopup_max_per_day: Annotated[
        int,
        msgspec.Meta(ge=1, le=100),
        _doc("Most automatic top-up charges per tenant per UTC day."),
    ] = 3

    # --- GATEWAY ---
    gateway_fast_path: Annotated[
        bool,
        _doc(
            "Serve `/v1/*` through the gateway's raw ASGI path (skips Litestar's request"
            " machinery, about 0.1 ms of CPU per request); `false` routes them through Litestar."
        ),
    ] = True
    gateway_connect_timeout_s: Annotated[
        float, msgspec.Meta(gt=0, le=300), _doc("Upstream connect timeout, seconds.")
    ] = 5.0
    gateway_read_timeout_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600),
        _doc("Longest silence from an upstream (before the answer, or between stream chunks)."),
    ] = 120.0
    gateway_max_attempts: Annotated[
        int,
        msgspec.Meta(ge=1, le=10),
        _doc("Most routes or credentials one request tries (failover on 429, 5xx, timeouts)."),
    ] = 3
    gateway_cooldown_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600),
        _doc("How long a failing route is skipped, unless the upstream said Retry-After."),
    ] = 15.0
    gateway_cache_ttl_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600),
        _doc("Safety-net lifetime of cached keys, tenants, catalog and prices (pub/sub first)."),
    ] = 30.0
    gateway_disconnect_drain_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=600),
        _doc("After a client leaves mid-stream, how long to keep reading upstream for usage."),
    ] = 30.0
    gateway_hold_ttl_s: Annotated[
        int,
        msgspec.Meta(ge=60, le=86_400),
        _doc("Credit holds of a request that never settled (a crash) are reaped after this."),
    ] = 3600
    gateway_default_max_output_tokens: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Output tokens a hold assumes when neither the request nor the model caps them."),
    ] = 4096
    gateway_image_part_tokens: Annotated[
        int,
        msgspec.Meta(ge=0),
        _doc("Input tokens a hold assumes for each image part of a chat message."),
    ] = 2000
    gateway_tenant_rpm: Annotated[
        int, msgspec.Meta(ge=0), _doc("Default requests per minute per tenant (0 = no limit).")
    ] = 0
    gateway_tenant_tpm: Annotated[
        int, msgspec.Meta(ge=0), _doc("Default tokens per minute per tenant (0 = no limit).")
    ] = 0
    gateway_append_timeout_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=300),
        _doc(
            "How long the commit of a finished request's usage event may take (a stalled "
            "Postgres) before the request gets 503."
        ),
    ] = 10.0

    # --- billing ---
    # (starter_credits and starter_credits_expire_days are in the tenant block above)
    fold_batch_size: Annotated[
        int,
        msgspec.Meta(ge=1, le=100_000),
        _doc(
            "Most events the billing fold applies per transaction (larger batches fold faster"
            " when catching up; each commits as one transaction)."
        ),
    ] = 25_000
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
    if settings.secret_key:
        from tally.crypto import KeyRing, SecretKeyError

        try:
            KeyRing.parse(settings.secret_key)
        except SecretKeyError as exc:
            raise SettingsError(str(exc)) from None
    if settings.jwt_keys:
        # Checked here, not only when a service first loads its signing keys, so a bad ring
        # stops every process at start instead of the first sign-in. Presence is not required:
        # only the services that issue or verify access tokens need the ring
        # (`tally.auth.load_signing_keys` refuses to run without it in production).
        from tally.auth import AuthError, SigningKeys

        try:
            SigningKeys.parse(settings.jwt_keys)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        except AuthError:  # every entry blank, e.g. TALLY_JWT_KEYS=","
            raise SettingsError("TALLY_JWT_KEYS: the key ring is empty") from None
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
