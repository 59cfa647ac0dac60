"""Tests for ui.render: the worklist's columns."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

pytest.importorskip("gradio")

from db.records import StudyView  # noqa: E402
from medcm.engine.sender import SendStatus  # noqa: E402
from ui.render import readable_date, send_status_text, worklist_rows  # noqa: E402


def test_the_worklist_shows_the_pseudonym_and_a_readable_date():
    study = StudyView("1.2.3", "ANON-1a2b3c4d5e6f", "20031113", "CT CHEST", "new", ("CT",), ("CHEST",), (),
                      datetime(2026, 1, 1, tzinfo=timezone.utc))
    row = worklist_rows([study]).iloc[0]
    assert (row["patient"], row["date"], row["modalities"]) == ("ANON-1a2b3c4d5e6f", "2003-11-13", "CT")
    assert readable_date("") == "" and readable_date("2003") == "2003"


def test_the_send_status_says_queued_failed_or_sent():
    assert send_status_text([]) == ""
    text = send_status_text([
        SendStatus("PACS@pacs:104", 2, "failed", 3, "association with PACS@pacs:104 not established (no connection)",
                   "2026-12-04T10:32:05.120+00:00"),
        SendStatus("ARCHIVE@a:104", 2, "pending", 0, None, None),
        SendStatus("PACS@pacs:104", 1, "sent", 1, None, None),
    ])
    assert text == ("v2 to PACS@pacs:104: not delivered after 3 attempt(s), retried at 10:32:05 UTC (association "
                    "with PACS@pacs:104 not established (no connection)); v2 to ARCHIVE@a:104: queued, sent in the "
                    "background; v1 to PACS@pacs:104: sent")
