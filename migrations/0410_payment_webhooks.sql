-- A failed payment or auto top-up is also sent to the tenant's webhook (the URL and signing
-- secret of its low-balance alert), through the same signed, retried delivery as balance.low.
-- Those notifications have no log position: payment_notifications.dedupe_key makes them once.
ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('low_balance', 'payment_failed', 'auto_topup_failed'));
ALTER TABLE notifications ALTER COLUMN position DROP NOT NULL;
