"""Every event type of the log, one module per domain; importing this registers them all."""

from tally.events import billing, tenant

__all__ = ["billing", "tenant"]
