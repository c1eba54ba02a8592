"""The balance view: the folded balance, the log tail not folded yet, and Redis's holds.

Reads never wait for the fold: the tail after the tenant's shard checkpoint is applied in memory
with the fold's own code, so a grant shows up in the balance the moment it is committed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from billing.balances import repository
from billing.balances.schemas import BalanceOut
from billing.fold import repository as fold_repository
from billing.fold.credits import PAID
from billing.fold.projector import BatchProjection, Projector, referenced_lots
from tally.db import Connection
from tally.live_balance import LiveBalances, fold_consumer_name
from tally.log import get_logger
from tally.money import format_credits
from tally.pricebook import PriceBookSnapshot

log = get_logger(__name__)

# Beyond this many unfolded events the view shows the fold's lag instead of projecting it all.
MAX_TAIL = 50_000


class BalanceService:
    async def balance(
        self,
        conn: Connection,
        live: LiveBalances | None,
        tenant_id: UUID,
        *,
        fold_shards: int,
    ) -> BalanceOut:
        """The tenant's balance now (read-only; never writes a projection)."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            shard = await repository.shard_of(conn, tenant_id, fold_shards)
            checkpoint = await repository.checkpoint(conn, fold_consumer_name(shard, fold_shards))
            states = await fold_repository.load_states(conn, [tenant_id])
            state = states[tenant_id]
            folded_balance, folded_events = state.balance_nano, state.folded_events
            tail = await repository.unfolded_tail(conn, tenant_id, checkpoint, MAX_TAIL)
            refs = [(tenant_id, lot) for e in tail if (lot := referenced_lots(e, state))]
            await fold_repository.load_lots(conn, states, refs)
            has_usage = any(e.type == "UsageRecorded" for e in tail)
            book = await PriceBookSnapshot.load(conn) if has_usage else None
        if tail:
            projector = Projector(
                book
                or PriceBookSnapshot(
                    model_prices=[], default_margins=[], credit_prices=[], tenant_margins=[]
                )
            )
            out = BatchProjection()
            for stored in tail:
                projector.apply(stored, tenant_id, state, out)
        tail_request_ids: set[str] = set()
        for stored in tail:
            if stored.type == "UsageRecorded":
                tail_request_ids.add(getattr(stored.event, "request_id", ""))
        holds = in_flight = 0
        has_live = False
        if live is not None:
            try:
                snapshot = await live.snapshot(tenant_id)
                if snapshot is not None:
                    has_live = True
                    holds = snapshot.holds_nano
                    unfolded = await live.unfolded_charges(tenant_id)
                    in_flight = sum(
                        charge for rid, charge in unfolded.items() if rid not in tail_request_ids
                    )
            except Exception as exc:  # Redis down: the log's balance is still right
                log.warning("live balance unavailable", error=repr(exc))
        # Charges of usage already folded can linger in Redis for a moment (until the fold
        # tells it); a lagging Redis then understates availability, never overstates it.
        available = state.balance_nano - holds - in_flight
        totals = state.totals
        open_lots = [lot for lot in state.lots.values() if lot.open]
        return BalanceOut(
            tenant_id=tenant_id,
            balance_nano=state.balance_nano,
            available_nano=available,
            holds_nano=holds,
            in_flight_nano=in_flight,
            balance_credits=format_credits(state.balance_nano),
            available_credits=format_credits(available),
            folded_balance_nano=folded_balance,
            folded_events=folded_events,
            pending_events=len(tail),
            live=has_live,
            granted_nano=totals.granted,
            purchased_nano=totals.purchased,
            adjusted_nano=totals.adjusted,
            refunded_nano=totals.refunded,
            expired_nano=totals.expired,
            charged_nano=totals.charged,
            frozen_nano=totals.frozen,
            dispute_lost_nano=totals.dispute_lost,
            paid_remaining_nano=sum(lot.remaining_nano for lot in open_lots if lot.funding == PAID),
            promotional_remaining_nano=sum(
                lot.remaining_nano for lot in open_lots if lot.funding != PAID
            ),
            debt_nano=state.debt_usage_nano + state.debt_other_nano,
            as_of=datetime.now(UTC),
        )


balance_service = BalanceService()
