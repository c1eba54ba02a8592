"""Buying credits: packs, Stripe Checkout, webhooks, refunds, disputes, auto top-up."""
