"""Logging: routine worker jobs stay out of the console; everything else gets through."""

from __future__ import annotations

import logging

import pytest

from tally.config import load_settings
from tally.log import configure_logging


def test_arq_lines_of_routine_jobs_are_dropped_but_their_failures_and_other_jobs_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(load_settings({"TALLY_LOG_FORMAT": "json"}))
    configure_logging(load_settings({"TALLY_LOG_FORMAT": "json"}))  # idempotent: one filter
    arq = logging.getLogger("arq.worker")
    assert len(arq.filters) == 1
    arq.info("%6.2fs → %s(%s)", 0.5, "billing.fold:0/1:billing.fold_shard", "0, 1")
    arq.info("%6.2fs ← %s ● %s", 0.0, "cron:record_heartbeat", "")
    arq.info("%6.2fs → %s", 0.1, "payments.process_stripe_event")
    arq.error("%6.2fs ! %s failed", 0.1, "billing.fold:0/1:billing.fold_shard")
    err = capsys.readouterr().err
    assert "record_heartbeat" not in err
    assert "payments.process_stripe_event" in err
    lines = [line for line in err.splitlines() if "fold_shard" in line]
    assert len(lines) == 1 and "failed" in lines[0]
