"""A local Stripe: the API endpoints Tally uses, over real HTTP, plus a webhook sender.

`FakeStripe` is an aiohttp.web server that speaks Stripe's wire format: form-encoded requests
with bracketed keys (`line_items[0][price_data][currency]=usd`), bearer API keys, JSON objects
with `id`/`object`, list pages (`data`, `has_more`, `starting_after`/`ending_before`,
`created[gte]`/`created[lt]`, newest first), `expand[]`, error bodies (`{"error": {"type",
"code", "message", ...}}`, 402 `card_error` for declined off-session charges) and
idempotency-key semantics: the first outcome of a key is stored once execution begins and
replayed (`Idempotent-Replayed: true`) for the same parameters, a different body gets 400
`idempotency_error`, a concurrent duplicate gets 409. Tests drive it through the real `stripe`
package by pointing TALLY_STRIPE_API_BASE at `base_url`.

What a person or a bank does outside the API (paying on the hosted page, a delayed payment
settling, a dispute opening or closing) are methods (`complete_checkout`, `open_dispute`, ...);
they return the Stripe events they caused, which `WebhookSender` delivers signed with Stripe's
scheme: `Stripe-Signature: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<body>"))`.

Faults: `fail_next(method, path, kind="500")` answers 500 before executing (nothing stored, as
when Stripe's edge fails); `kind="timeout"` executes and stores the result, then holds the
response longer than the client waits, so only a retry with the same key can learn it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

API_VERSION = "2026-10-28.endive"
# Stripe's test payment methods by behaviour (docs.stripe.com/testing).
CARD_OK = "pm_card_visa"
CARD_DECLINED = "pm_card_chargeDeclinedInsufficientFunds"
CARD_NEEDS_AUTH = "pm_card_authenticationRequired"


class StripeFakeError(Exception):
    def __init__(
        self, status: int, type_: str, message: str, *, code: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "message": message}
        if code:
            self.body["code"] = code
        self.body.update(extra)


@dataclass
class Fault:
    method: str
    path: str
    kind: str  # "500" | "timeout"
    remaining: int
    seconds: float = 2.0


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int = 0
    replayed: bool = False


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: bytes


def parse_stripe_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][0][c]=v` pairs -> nested dicts, with all-digit keys turned into lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *re.findall(r"([^\[\]]*)\]", "[" + rest)] if rest else [head]
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # `a[]=v` appends
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {k: _listify(v) for k, v in node.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    return node


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def _int(params: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise StripeFakeError(
                400, "invalid_request_error", f"Missing required param: {name}.", param=name
            )
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeFakeError(
            400, "invalid_request_error", f"Invalid integer: {value}", param=name
        ) from None


class FakeStripe:
    def __init__(self, *, api_key: str = "sk_test_tally_fake") -> None:
        self.api_key = api_key
        self.base_url = ""
        self.clock: Callable[[], int] = lambda: int(time.time())
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self._session_private: dict[str, dict[str, Any]] = {}
        self._order: dict[str, int] = {}
        self._sequence = 0
        self._idempotency: dict[str, _Stored] = {}
        self._inflight: set[str] = set()
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._path = ""

    # --- server -------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(
        self, method: str, path: str, *, kind: str = "500", times: int = 1, seconds: float = 2.0
    ) -> None:
        """The next `times` requests to `method path` (prefix) fail with `kind`."""
        self._faults.append(Fault(method.upper(), path, kind, times, seconds))

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method.upper() and r.path.startswith(path)]

    async def _handle(self, request: web.Request) -> web.Response:
        method, path = request.method, request.path
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(
                StripeFakeError(401, "invalid_request_error", "Invalid API Key provided")
            )
        if method == "POST":
            raw = await request.text()
            params = parse_stripe_form(parse_qsl(raw, keep_blank_values=True))
        else:
            params = parse_stripe_form(list(request.query.items()))
        key = request.headers.get("Idempotency-Key")
        record = RecordedRequest(method, path, params, key)
        self.requests.append(record)
        fault = self._take_fault(method, path)
        if fault is not None and fault.kind == "500":
            record.status = 500
            return self._error(
                StripeFakeError(500, "api_error", "An unknown error occurred (fake fault).")
            )
        fingerprint = hashlib.sha256(
            f"{method} {path} {raw if method == 'POST' else ''}".encode()
        ).hexdigest()
        if method == "POST" and key:
            stored = self._idempotency.get(key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    record.status = 400
                    return self._error(
                        StripeFakeError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same"
                            " parameters they were first used with.",
                        )
                    )
                record.status, record.replayed = stored.status, True
                return web.Response(
                    body=stored.body,
                    status=stored.status,
                    content_type="application/json",
                    headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
                )
            if key in self._inflight:
                record.status = 409
                return self._error(
                    StripeFakeError(
                        409,
                        "idempotency_error",
                        "There is currently another in-progress request using this key.",
                    )
                )
            self._inflight.add(key)
        try:
            try:
                status, payload = 200, self._route(method, path, params, key)
            except StripeFakeError as exc:
                status, payload = exc.status, {"error": exc.body}
            body = json.dumps(payload).encode()
            if method == "POST" and key:
                self._idempotency[key] = _Stored(fingerprint, status, body)
        finally:
            if key:
                self._inflight.discard(key)
        record.status = status
        if fault is not None and fault.kind == "timeout":
            # The work is done and stored; the answer comes too late for the client.
            await asyncio.sleep(fault.seconds)
        headers = {"Request-Id": f"req_{secrets.token_hex(7)}"}
        if key:
            headers["Idempotency-Key"] = key
        return web.Response(
            body=body, status=status, content_type="application/json", headers=headers
        )

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.method == method and path.startswith(fault.path) and fault.remaining > 0:
                fault.remaining -= 1
                return fault
        return None

    def _error(self, exc: StripeFakeError) -> web.Response:
        return web.json_response({"error": exc.body}, status=exc.status)

    # --- routing ------------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, params: dict[str, Any], key: str | None
    ) -> dict[str, Any]:
        self._path = path
        parts = [p for p in path.split("/") if p][1:]  # drop "v1"
        match method, parts:
            case "POST", ["customers"]:
                return self._create_customer(params)
            case "GET", ["customers", cid]:
                return self._get(self.customers, cid, "customer")
            case "POST", ["checkout", "sessions"]:
                return self._create_session(params)
            case "GET", ["checkout", "sessions"]:
                return self._list(self.sessions, params, ("payment_intent", "customer", "status"))
            case "GET", ["checkout", "sessions", sid]:
                return self._get(self.sessions, sid, "checkout.session")
            case "POST", ["payment_intents"]:
                return self._create_payment_intent(params, key)
            case "GET", ["payment_intents"]:
                return self._list(self.payment_intents, params, ("customer",))
            case "GET", ["payment_intents", pid]:
                intent = self._get(self.payment_intents, pid, "payment_intent")
                return self._expand(intent, params)
            case "GET", ["charges"]:
                return self._list(self.charges, params, ("customer", "payment_intent"))
            case "GET", ["charges", cid]:
                return self._get(self.charges, cid, "charge")
            case "POST", ["refunds"]:
                refund, _ = self._refund(params, key)
                return refund
            case "GET", ["refunds"]:
                return self._list(self.refunds, params, ("charge", "payment_intent"))
            case "GET", ["refunds", rid]:
                return self._get(self.refunds, rid, "refund")
            case "GET", ["disputes", did]:
                return self._get(self.disputes, did, "dispute")
            case "GET", ["events"]:
                return self._list(self.events, params, ("type",))
            case "GET", ["events", eid]:
                return self._get(self.events, eid, "event")
        raise StripeFakeError(
            404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(12)}"

    def _remember(self, store: dict[str, dict[str, Any]], obj: dict[str, Any]) -> dict[str, Any]:
        self._sequence += 1
        self._order[obj["id"]] = self._sequence
        store[obj["id"]] = obj
        return obj

    def _get(self, store: dict[str, dict[str, Any]], oid: str, kind: str) -> dict[str, Any]:
        obj = store.get(oid)
        if obj is None:
            raise StripeFakeError(
                404,
                "invalid_request_error",
                f"No such {kind}: '{oid}'",
                code="resource_missing",
                param="id",
            )
        return copy.deepcopy(obj)

    def _expand(self, intent: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        if "latest_charge" in (params.get("expand") or []) and intent.get("latest_charge"):
            intent["latest_charge"] = copy.deepcopy(self.charges[intent["latest_charge"]])
        return intent

    def _list(
        self, store: dict[str, dict[str, Any]], params: dict[str, Any], filters: tuple[str, ...]
    ) -> dict[str, Any]:
        items = sorted(
            store.values(), key=lambda o: (o.get("created", 0), self._order[o["id"]]), reverse=True
        )
        for name in filters:
            if name in params:
                items = [o for o in items if o.get(name) == params[name]]
        created = params.get("created")
        if isinstance(created, dict):
            for op, value in created.items():
                bound = int(value)
                test = {
                    "gt": lambda c, b=bound: c > b,
                    "gte": lambda c, b=bound: c >= b,
                    "lt": lambda c, b=bound: c < b,
                    "lte": lambda c, b=bound: c <= b,
                }[op]
                items = [o for o in items if test(o["created"])]
        elif created is not None:
            items = [o for o in items if o["created"] == int(created)]
        limit = _int(params, "limit", required=False) or 10
        if not 1 <= limit <= 100:
            raise StripeFakeError(400, "invalid_request_error", "limit must be 1..100")
        ids = [o["id"] for o in items]
        if after := params.get("starting_after"):
            start = ids.index(after) + 1 if after in ids else len(ids)
            page, has_more = items[start : start + limit], start + limit < len(items)
        elif before := params.get("ending_before"):
            end = ids.index(before) if before in ids else 0
            page, has_more = items[max(0, end - limit) : end], end - limit > 0
        else:
            page, has_more = items[:limit], limit < len(items)
        return {
            "object": "list",
            "data": [copy.deepcopy(o) for o in page],
            "has_more": has_more,
            # The client pages on with this path (and starting_after).
            "url": self._path,
        }

    # --- objects ------------------------------------------------------------------------------

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "created": self.clock(),
            "email": params.get("email"),
            "name": params.get("name"),
            "metadata": params.get("metadata") or {},
            "livemode": False,
            "invoice_settings": {"default_payment_method": None},
        }
        return copy.deepcopy(self._remember(self.customers, customer))

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("mode") != "payment":
            raise StripeFakeError(
                400, "invalid_request_error", "mode must be payment", param="mode"
            )
        for name in ("success_url", "cancel_url"):
            if not params.get(name):
                raise StripeFakeError(
                    400, "invalid_request_error", f"Missing required param: {name}.", param=name
                )
        customer = params.get("customer")
        if customer and customer not in self.customers:
            raise StripeFakeError(
                400, "invalid_request_error", f"No such customer: '{customer}'", param="customer"
            )
        items = params.get("line_items") or []
        if not items:
            raise StripeFakeError(400, "invalid_request_error", "line_items required")
        total, currency = 0, None
        for item in items:
            data = item.get("price_data") or {}
            currency = data.get("currency")
            total += int(data["unit_amount"]) * int(item.get("quantity", 1))
        now = self.clock()
        session = {
            "id": self._new_id("cs_test"),
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "amount_subtotal": total,
            "amount_total": total,
            "currency": currency,
            "customer": customer,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "payment_intent": None,
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "created": now,
            "expires_at": now + 86_400,
            "livemode": False,
        }
        session["url"] = f"{self.base_url}/c/pay/{session['id']}"
        self._session_private[session["id"]] = {
            "payment_intent_data": params.get("payment_intent_data") or {},
            "line_items": items,
        }
        return copy.deepcopy(self._remember(self.sessions, session))

    def _payment_method(self, token: str, customer: str | None) -> dict[str, Any]:
        if token in self.payment_methods:
            return self.payment_methods[token]
        pm = {
            "id": self._new_id("pm"),
            "object": "payment_method",
            "type": "card",
            "card": {"brand": "visa", "last4": "4242" if token == CARD_OK else "9995"},
            "customer": customer,
            "created": self.clock(),
            "_behaviour": token,
        }
        return self._remember(self.payment_methods, pm)

    def _intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        metadata: dict[str, Any],
        payment_method: str | None,
        description: str | None = None,
        status: str = "requires_payment_method",
    ) -> dict[str, Any]:
        intent = {
            "id": self._new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "customer": customer,
            "metadata": metadata,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "description": description,
            "status": status,
            "latest_charge": None,
            "last_payment_error": None,
            "created": self.clock(),
            "livemode": False,
        }
        return self._remember(self.payment_intents, intent)

    def _charge(self, intent: dict[str, Any]) -> dict[str, Any]:
        charge = {
            "id": self._new_id("ch"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"],
            "amount_refunded": 0,
            "currency": intent["currency"],
            "customer": intent["customer"],
            "payment_intent": intent["id"],
            "paid": True,
            "captured": True,
            "refunded": False,
            "disputed": False,
            "status": "succeeded",
            "metadata": dict(intent["metadata"]),
            "payment_method": intent["payment_method"],
            "payment_method_details": {"type": "card", "card": {"brand": "visa"}},
            "created": self.clock(),
            "livemode": False,
        }
        self._remember(self.charges, charge)
        intent.update(
            status="succeeded", amount_received=intent["amount"], latest_charge=charge["id"]
        )
        return charge

    def _create_payment_intent(self, params: dict[str, Any], key: str | None) -> dict[str, Any]:
        amount = _int(params, "amount")
        assert amount is not None
        if amount < 50:
            raise StripeFakeError(
                400,
                "invalid_request_error",
                "Amount must be at least 50 cents",
                code="amount_too_small",
                param="amount",
            )
        customer = params.get("customer")
        pm_id = params.get("payment_method")
        pm = self.payment_methods.get(pm_id or "")
        if pm_id and pm is None:
            raise StripeFakeError(
                400,
                "invalid_request_error",
                f"No such PaymentMethod: '{pm_id}'",
                code="resource_missing",
                param="payment_method",
            )
        if _bool(params.get("off_session")) and pm is not None and pm.get("customer") != customer:
            raise StripeFakeError(
                400,
                "invalid_request_error",
                "The provided PaymentMethod was previously used without being attached to a"
                " Customer or was detached; it may not be used again.",
                param="payment_method",
            )
        intent = self._intent(
            amount=amount,
            currency=str(params.get("currency")),
            customer=customer,
            metadata=params.get("metadata") or {},
            payment_method=pm_id,
            description=params.get("description"),
            status="requires_confirmation" if pm_id else "requires_payment_method",
        )
        if _bool(params.get("confirm")) and pm is not None:
            behaviour = pm["_behaviour"]
            if behaviour in (CARD_DECLINED, CARD_NEEDS_AUTH):
                declined = behaviour == CARD_DECLINED
                error = {
                    "code": "card_declined" if declined else "authentication_required",
                    "decline_code": "insufficient_funds" if declined else "authentication_required",
                    "message": "Your card has insufficient funds."
                    if declined
                    else "Your card was declined. This transaction requires authentication.",
                    "type": "card_error",
                    "payment_method": {"id": pm_id, "object": "payment_method"},
                }
                intent.update(
                    status="requires_payment_method" if declined else "requires_action",
                    last_payment_error=error,
                )
                self._emit("payment_intent.payment_failed", intent, key)
                raise StripeFakeError(
                    402,
                    "card_error",
                    error["message"],
                    code=error["code"],
                    decline_code=error["decline_code"],
                    payment_intent=copy.deepcopy(intent),
                )
            charge = self._charge(intent)
            self._emit("charge.succeeded", charge, key)
            self._emit("payment_intent.succeeded", intent, key)
        return self._expand(copy.deepcopy(intent), params)

    def _refund(
        self, params: dict[str, Any], key: str | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        charge_id = params.get("charge")
        if charge_id is None and params.get("payment_intent"):
            intent = self.payment_intents.get(params["payment_intent"])
            charge_id = intent["latest_charge"] if intent else None
        charge = self.charges.get(charge_id or "")
        if charge is None:
            raise StripeFakeError(
                404,
                "invalid_request_error",
                f"No such charge: '{charge_id}'",
                code="resource_missing",
                param="charge",
            )
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        amount = _int(params, "amount", required=False)
        amount = remaining if amount is None else amount
        if amount <= 0 or amount > remaining:
            raise StripeFakeError(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge"
                f" ({remaining})",
                param="amount",
            )
        refund = {
            "id": self._new_id("re"),
            "object": "refund",
            "amount": amount,
            "currency": charge["currency"],
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "status": "succeeded",
            "reason": params.get("reason"),
            "metadata": params.get("metadata") or {},
            "created": self.clock(),
        }
        self._remember(self.refunds, refund)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
        events = [
            self._emit("refund.created", refund, key),
            self._emit("charge.refunded", charge, key),
        ]
        return copy.deepcopy(refund), events

    def _emit(self, type_: str, obj: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        event = {
            "id": self._new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.clock(),
            "type": type_,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {
                "id": f"req_{secrets.token_hex(7)}" if key else None,
                "idempotency_key": key,
            },
            "data": {
                "object": {k: v for k, v in copy.deepcopy(obj).items() if not k.startswith("_")}
            },
        }
        return copy.deepcopy(self._remember(self.events, event))

    # --- what happens outside the API (the customer, the bank) --------------------------------

    def complete_checkout(
        self, session_id: str, *, card: str = CARD_OK, delayed: bool = False
    ) -> list[dict[str, Any]]:
        """The customer pays on the hosted page. `delayed`: a bank debit that settles later."""
        session = self.sessions[session_id]
        if session["status"] != "open":
            raise ValueError(f"session {session_id} is {session['status']}")
        private = self._session_private[session_id]
        intent_data = private["payment_intent_data"]
        customer = session["customer"]
        pm = self._payment_method(card, None)
        if intent_data.get("setup_future_usage") == "off_session" and customer:
            pm["customer"] = customer  # Checkout attaches a card saved for later use
        intent = self._intent(
            amount=session["amount_total"],
            currency=session["currency"],
            customer=customer,
            metadata=intent_data.get("metadata") or {},
            payment_method=pm["id"],
            description=intent_data.get("description"),
        )
        session.update(status="complete", payment_intent=intent["id"])
        events: list[dict[str, Any]] = []
        if delayed:
            intent["status"] = "processing"
            intent["payment_method_types"] = ["sepa_debit"]
            session["payment_status"] = "unpaid"
        else:
            charge = self._charge(intent)
            session["payment_status"] = "paid"
            events += [
                self._emit("charge.succeeded", charge),
                self._emit("payment_intent.succeeded", intent),
            ]
        events.append(self._emit("checkout.session.completed", session))
        return events

    def settle_delayed_payment(self, session_id: str, *, succeed: bool) -> list[dict[str, Any]]:
        session = self.sessions[session_id]
        intent = self.payment_intents[session["payment_intent"]]
        if succeed:
            charge = self._charge(intent)
            session["payment_status"] = "paid"
            return [
                self._emit("charge.succeeded", charge),
                self._emit("payment_intent.succeeded", intent),
                self._emit("checkout.session.async_payment_succeeded", session),
            ]
        intent.update(
            status="requires_payment_method",
            last_payment_error={
                "code": "payment_method_provider_decline",
                "message": "The bank declined the debit.",
            },
        )
        return [
            self._emit("payment_intent.payment_failed", intent),
            self._emit("checkout.session.async_payment_failed", session),
        ]

    def expire_checkout(self, session_id: str) -> list[dict[str, Any]]:
        session = self.sessions[session_id]
        session["status"] = "expired"
        return [self._emit("checkout.session.expired", session)]

    def refund(self, charge_id: str, amount: int | None = None) -> list[dict[str, Any]]:
        """An operator refunds from the Stripe dashboard."""
        params: dict[str, Any] = {"charge": charge_id}
        if amount is not None:
            params["amount"] = str(amount)
        _, events = self._refund(params, None)
        return events

    def open_dispute(self, charge_id: str, amount: int | None = None) -> list[dict[str, Any]]:
        charge = self.charges[charge_id]
        dispute = {
            "id": self._new_id("dp"),
            "object": "dispute",
            "amount": charge["amount"] if amount is None else amount,
            "currency": charge["currency"],
            "charge": charge_id,
            "payment_intent": charge["payment_intent"],
            "reason": "fraudulent",
            "status": "needs_response",
            "is_charge_refundable": False,
            "created": self.clock(),
            "livemode": False,
        }
        self._remember(self.disputes, dispute)
        charge["disputed"] = True
        return [self._emit("charge.dispute.created", dispute)]

    def close_dispute(self, dispute_id: str, *, won: bool) -> list[dict[str, Any]]:
        dispute = self.disputes[dispute_id]
        dispute["status"] = "won" if won else "lost"
        return [self._emit("charge.dispute.closed", dispute)]

    def payment_intent_of(self, session_id: str) -> dict[str, Any]:
        return self.payment_intents[self.sessions[session_id]["payment_intent"]]

    def charge_of(self, session_id: str) -> dict[str, Any]:
        return self.charges[self.payment_intent_of(session_id)["latest_charge"]]


@dataclass
class WebhookSender:
    """Delivers events to the webhook endpoint signed as Stripe signs them."""

    secrets: list[str]
    path: str = "/webhooks/stripe"
    sent: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def body(event: dict[str, Any]) -> str:
        return json.dumps(event, indent=2)

    def sign(
        self, body: str, *, timestamp: int | None = None, secrets: list[str] | None = None
    ) -> str:
        """`t=<unix>,v1=<hex>[,v1=<hex>]`: one v1 per active secret, as during a rotation."""
        t = int(time.time()) if timestamp is None else timestamp
        signed = f"{t}.{body}".encode()
        v1s = [
            hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
            for secret in (self.secrets if secrets is None else secrets)
        ]
        return ",".join([f"t={t}", *(f"v1={v}" for v in v1s)])

    async def deliver(
        self,
        client: Any,
        event: dict[str, Any],
        *,
        timestamp: int | None = None,
        secrets: list[str] | None = None,
        signature: str | None = None,
    ) -> Any:
        """POST the event with a fresh signature (or the given header) through an httpx-style
        client (litestar's AsyncTestClient, httpx.AsyncClient)."""
        body = self.body(event)
        header = (
            signature
            if signature is not None
            else self.sign(body, timestamp=timestamp, secrets=secrets)
        )
        self.sent.append((body, header))
        return await client.post(
            self.path,
            content=body.encode(),
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )

    async def replay(self, client: Any, body: str, header: str) -> Any:
        """Send a captured delivery again, byte for byte (what an attacker could do)."""
        return await client.post(
            self.path,
            content=body.encode(),
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )
