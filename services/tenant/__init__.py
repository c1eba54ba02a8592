"""tenant service."""
