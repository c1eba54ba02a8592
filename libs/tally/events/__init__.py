"""Every event type of the log, one module per domain; importing this registers them all."""
