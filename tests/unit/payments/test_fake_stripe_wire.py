"""The fake speaks Stripe's form encoding: what the real client encodes, the fake decodes."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from stripe._encode import _api_encode

from tests.fakes.stripe_api import parse_stripe_form


def test_the_fake_decodes_the_real_clients_nested_form_encoding() -> None:
    params = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 1249,
                    "product_data": {"name": "999 credits"},
                },
            }
        ],
        "metadata": {"tally_order_id": "o1", "tenant_id": "t1"},
        "payment_intent_data": {
            "metadata": {"tally_order_id": "o1"},
            "setup_future_usage": "off_session",
        },
        "expand": ["latest_charge"],
        "off_session": True,
        "created": {"gte": 10, "lt": 20},
    }
    wire = urlencode(list(_api_encode(params)))
    decoded = parse_stripe_form(parse_qsl(wire))
    assert decoded == {
        "mode": "payment",
        "line_items": [
            {
                "quantity": "1",
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "1249",
                    "product_data": {"name": "999 credits"},
                },
            }
        ],
        "metadata": {"tally_order_id": "o1", "tenant_id": "t1"},
        "payment_intent_data": {
            "metadata": {"tally_order_id": "o1"},
            "setup_future_usage": "off_session",
        },
        "expand": ["latest_charge"],
        "off_session": "true",
        "created": {"gte": "10", "lt": "20"},
    }
