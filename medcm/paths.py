"""Where a store's companions live: files beside a SQLite database (de-identified copies, indexes).

A SQLite store is one file, so what belongs to it sits beside it under its name (`cases.db` →
`cases.db.files/`, `cases.db.index/`); other databases have no folder, so their callers must name
one (files) or keep things in memory (indexes).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_files_dir", "default_index_dir", "sqlite_file"]


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL; None for in-memory SQLite or another database."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
        return Path(url[len(prefix):])
    return None


def default_files_dir(url: str) -> Path | None:
    """`sqlite:///x/cases.db` → `x/cases.db.files`; None for other databases."""
    file = sqlite_file(url)
    return file.with_name(file.name + ".files") if file else None


def default_index_dir(url: str) -> Path | None:
    """`sqlite:///x/cases.db` → `x/cases.db.index`; other databases keep indexes in memory."""
    file = sqlite_file(url)
    return file.with_name(file.name + ".index") if file else None
