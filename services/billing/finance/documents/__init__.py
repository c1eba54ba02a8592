"""Renderers: the same documents as CSV, JSON, PDF and ZIP archives of PDFs."""
