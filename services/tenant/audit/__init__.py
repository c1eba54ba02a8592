"""The audit log: every admin action, read straight from the event log."""
