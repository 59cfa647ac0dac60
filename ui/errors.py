"""Turning domain failures into one readable line for the clinician (a `gr.Error`), never a traceback."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from medcm.dicom.read import DicomReadError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_MAX_CHARS = 300


def one_line(text: str, limit: int = _MAX_CHARS) -> str:
    """`text` with all whitespace runs collapsed to single spaces, cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def user_error(message: str) -> gr.Error:
    """A `gr.Error` carrying one line of plain text (escaped: the browser renders it as HTML)."""
    return gr.Error(html.escape(one_line(message), quote=False), title="medcm")


def readable_errors(fn: F) -> F:
    """Decorate a handler so expected failures reach the user as one `gr.Error` line.

    `gr.Error` passes through unchanged. A `DicomReadError`, `ValueError` (the store's `StoreError`
    is one), `FileNotFoundError` or other `OSError` becomes `gr.Error(str(err))`; anything else is
    logged with its traceback and shown as a short internal-error line.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:  # gr.Error is a ValueError too: let it through as it is
            raise
        except (DicomReadError, ValueError, OSError) as err:
            raise user_error(str(err)) from None
        except Exception as err:  # noqa: BLE001 - the browser must get a line, the log the traceback
            log.exception("%s failed", getattr(fn, "__name__", "handler"))
            raise user_error(f"internal error ({type(err).__name__}); the server log has the details") from None

    return wrapper  # type: ignore[return-value]
