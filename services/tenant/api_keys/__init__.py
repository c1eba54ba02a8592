"""API keys: issued to tenants for the gateway; shown once, stored as a hash."""
