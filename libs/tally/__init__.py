"""Tally shared library: settings, logging, database, event log, money."""
