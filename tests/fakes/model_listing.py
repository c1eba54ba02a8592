"""A fake provider API answering the model-list calls that "test connection" makes.

Speaks each wire format's authentication: OpenAI-style `GET /v1/models` with a Bearer key,
Anthropic `GET /v1/models` with `x-api-key` and a required `anthropic-version`, Gemini
`GET /v1beta/models` with `x-goog-api-key`. Like OpenAI, a refused key is echoed (partly) in the
error message, so tests can check that Tally never passes such text on.
"""

from __future__ import annotations

from aiohttp import web

from tests.fakes.background_server import BackgroundServer


class FakeProviderApi:
    def __init__(self, valid_keys: set[str]) -> None:
        self.valid_keys = valid_keys
        self.requests: list[dict[str, str]] = []
        self._server: BackgroundServer | None = None
        self.url = ""

    def start(self) -> FakeProviderApi:
        """Serve on 127.0.0.1 (a free port) from a thread of its own."""
        app = web.Application()
        app.router.add_get("/v1/models", self._openai_or_anthropic)
        app.router.add_get("/v1beta/models", self._gemini)
        app.router.add_get("/broken/v1/models", self._broken)
        self._server = BackgroundServer(app)
        self.url = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    async def _openai_or_anthropic(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if "x-api-key" in request.headers:
            if request.headers.get("anthropic-version") != "2023-06-01":
                return web.json_response(
                    {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": "bad version"},
                    },
                    status=400,
                )
            key = request.headers["x-api-key"]
            if key not in self.valid_keys:
                return web.json_response(
                    {
                        "type": "error",
                        "error": {
                            "type": "authentication_error",
                            "message": f"invalid x-api-key {key}",
                        },
                    },
                    status=401,
                )
            return web.json_response({"data": [{"id": "claude-x", "type": "model"}]})
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or key not in self.valid_keys:
            return web.json_response(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {key}.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                status=401,
            )
        return web.json_response({"object": "list", "data": [{"id": "gpt-x", "object": "model"}]})

    async def _gemini(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        key = request.headers.get("x-goog-api-key", "")
        if key not in self.valid_keys:
            return web.json_response(
                {
                    "error": {
                        "code": 400,
                        "message": f"API key not valid: {key}",
                        "status": "INVALID_ARGUMENT",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                "reason": "API_KEY_INVALID",
                                "domain": "googleapis.com",
                            }
                        ],
                    }
                },
                status=400,
            )
        return web.json_response({"models": [{"name": "models/gemini-x"}]})

    async def _broken(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        return web.Response(status=503, text="upstream down")
