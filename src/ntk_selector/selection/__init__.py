"""Choosing rows: pool filters, pre-selection, scoring rules, the method registry, the select pipeline, the pool
index, and the run report (report.py: select writes it while it holds its output folder; diagnose draws it too)."""
