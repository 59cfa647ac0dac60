"""Evaluation: retrieval metrics (and, later, draft metrics and baselines)."""
