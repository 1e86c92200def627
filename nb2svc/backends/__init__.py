"""Backends: thin adapters that put the runtime core behind another server's contract."""
