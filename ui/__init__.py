"""The browser review app of medcm (Gradio): upload a study, see similar cases, edit and sign the draft.

`build_app` is imported lazily, so `import ui` loads neither gradio nor a model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app"]


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from ui.app import build_app

        return build_app
    raise AttributeError(f"module 'ui' has no attribute {name!r}")
