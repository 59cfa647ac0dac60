"""Tests for ui.render: the worklist's columns."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

pytest.importorskip("gradio")

from db.records import StudyView  # noqa: E402
from ui.render import readable_date, worklist_rows  # noqa: E402


def test_the_worklist_shows_the_pseudonym_and_a_readable_date():
    study = StudyView("1.2.3", "ANON-1a2b3c4d5e6f", "20031113", "CT CHEST", "new", ("CT",), ("CHEST",), (),
                      datetime(2026, 1, 1, tzinfo=timezone.utc))
    row = worklist_rows([study]).iloc[0]
    assert (row["patient"], row["date"], row["modalities"]) == ("ANON-1a2b3c4d5e6f", "2003-11-13", "CT")
    assert readable_date("") == "" and readable_date("2003") == "2003"
