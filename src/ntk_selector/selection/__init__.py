"""Choosing rows: pool filters, pre-selection, scoring rules, the method registry, the select pipeline, the pool index."""
