"""Alembic migrations of the case store (a package so that `env.py` ships with an installed medcm)."""
