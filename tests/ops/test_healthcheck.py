"""deploy/healthcheck.py, the image's HEALTHCHECK: asks the right service and reports honestly."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.ops.cli_contract import DEFAULT_PORTS
from tests.ops.docker_context import ROOT


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load_script()


class _Service:
    """A local HTTP server answering /healthz with a chosen status, counting the requests."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.paths.append(self.path)
                self.send_response(service.status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def service() -> Iterator[_Service]:
    running = _Service()
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


def test_default_ports_are_the_settings_defaults() -> None:
    assert healthcheck.DEFAULT_PORTS == DEFAULT_PORTS


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (
            ["/opt/tally/venv/bin/python", "/opt/tally/venv/bin/tally", "serve", "billing"],
            "billing",
        ),
        (["/sbin/docker-init", "--", "tally", "serve", "tenant"], "tenant"),
        (["tally", "worker"], None),
        (["tally", "migrate"], None),
        (["tally", "serve"], None),
        ([], None),
    ],
)
def test_role_comes_from_the_command_line(argv: list[str], role: str | None) -> None:
    assert healthcheck.role_from_command(argv) == role


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({}, "http://127.0.0.1:8080/healthz"),
        ({"TALLY_HOST": "0.0.0.0"}, "http://127.0.0.1:8080/healthz"),
        ({"TALLY_HOST": "::", "TALLY_GATEWAY_PORT": "9000"}, "http://[::1]:9000/healthz"),
        ({"TALLY_HOST": "10.1.2.3"}, "http://10.1.2.3:8080/healthz"),
    ],
)
def test_url_follows_the_services_own_settings(environ: dict[str, str], url: str) -> None:
    assert healthcheck.health_url("gateway", environ) == url


def test_a_service_answering_200_is_healthy(service: _Service) -> None:
    environ = {"TALLY_BILLING_PORT": str(service.port)}
    assert healthcheck.main(["billing"], environ) == 0
    assert service.paths == ["/healthz"]


def test_a_service_answering_an_error_is_unhealthy(service: _Service) -> None:
    service.status = 503
    assert healthcheck.main(["gateway"], {"TALLY_GATEWAY_PORT": str(service.port)}) == 1


def test_a_service_not_listening_is_unhealthy(service: _Service) -> None:
    port = service.port
    service.server.shutdown()
    service.server.server_close()
    assert healthcheck.main(["tenant"], {"TALLY_TENANT_PORT": str(port)}) == 1


def test_role_is_read_from_pid_1_without_arguments(service: _Service, tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"/opt/tally/venv/bin/python\0/opt/tally/venv/bin/tally\0serve\0tenant\0")
    environ = {"TALLY_TENANT_PORT": str(service.port)}
    assert healthcheck.main([], environ, pid1_cmdline=str(cmdline)) == 0
    assert service.paths == ["/healthz"]


def test_roles_without_http_are_healthy_while_they_run(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"/opt/tally/venv/bin/python\0/opt/tally/venv/bin/tally\0worker\0")
    assert healthcheck.main([], {}, pid1_cmdline=str(cmdline)) == 0


def test_an_unknown_service_is_unhealthy() -> None:
    assert healthcheck.main(["admin"], {}) == 1
