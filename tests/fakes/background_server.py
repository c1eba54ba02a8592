"""Run an aiohttp fake on its own event loop in a thread.

Litestar's test client drives the app through a blocking portal, which blocks the test's event
loop for the length of each request; a fake the app calls during that request must therefore
be served from another loop.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class BackgroundServer:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            runner = web.AppRunner(self._app)
            try:
                self._loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, "127.0.0.1", 0)
                self._loop.run_until_complete(site.start())
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.url = f"http://127.0.0.1:{port}"
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"fake server did not start: {failure}")
        return self.url

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
