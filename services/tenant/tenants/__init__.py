"""Tenants: the customer businesses, their billing profile, mode, status and margin."""
