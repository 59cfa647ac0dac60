"""What a table or gallery selection points at: a row's first or last cell, or the item at a gallery position."""

from __future__ import annotations

from typing import Any

import gradio as gr


def row_key(evt: gr.SelectData) -> object:
    """The first cell of the selected table row (robust to the user sorting the table), else the row index."""
    if evt.row_value:
        return evt.row_value[0]
    return evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index


def last_cell(evt: gr.SelectData) -> object:
    """The last cell of the selected table row (the worklist's and the priors' full study UID), else the row index."""
    if evt.row_value:
        return evt.row_value[-1]
    return evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index


def picked(items: list[Any], evt: gr.SelectData) -> Any | None:
    """The case a gallery (by position) or a table (by the study uid in its last cell) selection points at."""
    key = evt.index if isinstance(evt.index, int) else last_cell(evt)
    if isinstance(key, int):
        return items[key] if 0 <= key < len(items) else None
    return next((item for item in items if item.study_uid == key), None)
