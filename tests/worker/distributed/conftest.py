"""Fixtures of the data-parallel tests (the rank launcher lives in ranks.py)."""
