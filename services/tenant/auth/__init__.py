"""Signing in: passwords, single sign-on (OIDC), sessions with rotating refresh tokens."""
