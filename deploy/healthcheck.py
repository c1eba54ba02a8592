"""Container health check: GET /healthz on the port of the service this container runs.

Docker's HEALTHCHECK is one command for the whole image, but the image runs every role. The role
comes from the first argument (`healthcheck.py billing`) or else from PID 1's command line
(`tally serve billing`, also behind an init such as `docker run --init`). Roles without an HTTP
listener (`tally worker`, `tally migrate`) are healthy while they run: their process is the
container's life. Standard library only: it runs in the image with nothing else installed.
Exit status 0 means healthy, 1 unhealthy (what Docker expects).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

# The defaults of TALLY_GATEWAY_PORT / TALLY_BILLING_PORT / TALLY_TENANT_PORT (tally.config);
# a test keeps them equal.
DEFAULT_PORTS = {"gateway": 8080, "billing": 8081, "tenant": 8082}
TIMEOUT_SECONDS = 3.0
PID1_CMDLINE = "/proc/1/cmdline"


def role_from_command(argv: Sequence[str]) -> str | None:
    """The service `tally serve NAME` runs, or None for a role without HTTP."""
    for index, arg in enumerate(argv[:-1]):
        if arg == "serve":
            return argv[index + 1]
    return None


def read_pid1_command(path: str = PID1_CMDLINE) -> list[str]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def health_url(service: str, environ: Mapping[str, str]) -> str:
    """Where the service listens, from the same TALLY_* variables the service reads."""
    port = environ.get(f"TALLY_{service.upper()}_PORT") or str(DEFAULT_PORTS[service])
    host = environ.get("TALLY_HOST", "")
    # A wildcard bind is reachable on loopback; a specific address only on itself.
    if host in ("", "0.0.0.0"):  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def is_healthy(url: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    try:
        # The URL is built above from a fixed scheme and path, never from outside input.
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        # HTTPError (a non-2xx answer) is a URLError: unhealthy, like no answer at all.
        return False


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    pid1_cmdline: str = PID1_CMDLINE,
) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    service = argv[0] if argv else role_from_command(read_pid1_command(pid1_cmdline))
    if service is None:
        return 0
    if service not in DEFAULT_PORTS:
        print(f"healthcheck: unknown service {service!r}", file=sys.stderr)  # noqa: T201
        return 1
    url = health_url(service, environ)
    if is_healthy(url):
        return 0
    print(f"healthcheck: {url} did not answer 200", file=sys.stderr)  # noqa: T201
    return 1


if __name__ == "__main__":
    sys.exit(main())
