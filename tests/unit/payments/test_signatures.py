from __future__ import annotations

import json
import time

import pytest
import stripe

from billing.payments.signatures import InvalidWebhook, verify_stripe_event, webhook_secrets
from tests.fakes.stripe_api import WebhookSender

EVENT = {
    "id": "evt_1",
    "object": "event",
    "type": "charge.refunded",
    "created": 1,
    "data": {"object": {"id": "ch_1"}},
}
BODY = json.dumps(EVENT)


def test_the_fake_sender_signs_exactly_as_stripe_verifies() -> None:
    header = WebhookSender(["whsec_a"]).sign(BODY)
    assert stripe.WebhookSignature.verify_header(BODY, header, "whsec_a", 300)
    expected = stripe.WebhookSignature.generate_signature_header(
        BODY, "whsec_a", timestamp=int(header.split(",")[0][2:])
    )
    assert header == expected


def test_any_secret_of_the_rotation_verifies() -> None:
    header = WebhookSender(["whsec_new"]).sign(BODY)
    event = verify_stripe_event(BODY.encode(), header, webhook_secrets("whsec_old, whsec_new"))
    assert (event.id, event.type, event.data.object["id"]) == ("evt_1", "charge.refunded", "ch_1")


def test_a_stale_signature_reports_the_tolerance_even_with_other_secrets() -> None:
    header = WebhookSender(["whsec_new"]).sign(BODY, timestamp=int(time.time()) - 301)
    with pytest.raises(InvalidWebhook, match="tolerance"):
        verify_stripe_event(BODY.encode(), header, ["whsec_old", "whsec_new"])


def test_a_signature_just_inside_five_minutes_passes() -> None:
    header = WebhookSender(["whsec_a"]).sign(BODY, timestamp=int(time.time()) - 290)
    assert verify_stripe_event(BODY.encode(), header, ["whsec_a"]).id == "evt_1"


def test_blank_entries_of_the_secret_setting_are_dropped() -> None:
    assert webhook_secrets(" whsec_a ,, whsec_b,") == ["whsec_a", "whsec_b"]
    assert webhook_secrets("") == []
