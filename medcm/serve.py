"""Start the review app, and build the embedded demo it opens with on a fresh machine.

Like `medcm.cli`, this is a composition root: it alone wires the library, the case store (`db`)
and the browser app (`ui`) together; the library modules import none of them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medcm.draft import DraftConfig

log = logging.getLogger(__name__)

DEMO_NOTICE = (
    "Demo: every image and report here is a synthetic drawing made by medcm, not a patient. "
    "Try uploading a held-out study the demo has not stored, e.g. {example}."
)
# Bump when the demo data, model or layout changes, so a stale cache is rebuilt instead of reused.
DEMO_VERSION = 1
DEMO_SETTINGS = {"version": DEMO_VERSION, "n_train": 480, "n_dev": 60, "size": 192, "config": "cpu-small", "epochs": 12}


def data_dirs(db_url: str, base: Path | None = None) -> tuple[Path, Path]:
    """Folders for uploaded files (kept: the store points at them) and Gradio's own temp files.

    Beside a SQLite database file (`cases.db` → `cases.db.uploads/`), else under `base` or the cwd.
    """
    from medcm.engine import sqlite_file

    file = sqlite_file(db_url)
    root = file.with_name(file.name + ".uploads") if file else (base or Path.cwd()) / "medcm-uploads"
    return root / "files", root / "gradio-tmp"


def serve(db_url: str, checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860,
          demo_notice: str | None = None, block: bool = True, device: str | None = None,
          draft_config: DraftConfig | None = None):
    """Open the store and the model once, then serve the review app (blocking unless `block=False`).

    Returns:
        The launched `gr.Blocks` app (useful with `block=False`; call `.close()` to stop it).
    """
    upload_dir, gradio_tmp = data_dirs(db_url)
    upload_dir.mkdir(parents=True, exist_ok=True)
    # Uploads hold patient data: Gradio's copies go to a managed folder, emptied at every start.
    shutil.rmtree(gradio_tmp, ignore_errors=True)
    gradio_tmp.mkdir(parents=True)
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_tmp)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from db.store import CaseStore
    from medcm.draft import DraftConfig
    from medcm.engine import Engine
    from ui.app import LAUNCH_OPTIONS, build_app

    store = CaseStore(db_url)
    engine = Engine(store, checkpoint=checkpoint, device=device, draft_config=draft_config or DraftConfig())
    app = build_app(engine, store, upload_dir=upload_dir, demo_notice=demo_notice)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False, quiet=not block,
               max_file_size="2gb", **LAUNCH_OPTIONS)
    return app


def demo_held_out(folder: str | Path) -> list[Path]:
    """The demo's held-out (dev) study files: not in the store, so they make honest test uploads."""
    folder = Path(folder).resolve() / "archive"
    lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [folder / line["image"] for line in lines if line.get("split") == "dev"]


def prepare_demo(folder: str | Path, rebuild: bool = False, progress: bool = True) -> tuple[str, Path]:
    """Generate the synthetic archive, train cpu-small on it and fill a store — once.

    The result is cached in `folder` (with a `READY` file naming the settings), so the second start
    takes seconds. Returns the database URL and the trained run folder.
    """
    from db.store import CaseStore
    from medcm.config import get_config, with_overrides
    from medcm.data import read_manifest, split_records
    from medcm.demo import write_demo_archive
    from medcm.engine import Engine
    from medcm.train import train

    folder = Path(folder).resolve()
    ready, db_url, run = folder / "READY", f"sqlite:///{folder / 'cases.db'}", folder / "model"
    if not rebuild and ready.is_file() and json.loads(ready.read_text()) == DEMO_SETTINGS:
        return db_url, run
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = DEMO_SETTINGS
    log.info("building the synthetic demo in %s (once; a few minutes on 2 CPU cores)", folder)
    manifest = write_demo_archive(folder / "archive", settings["n_train"], settings["n_dev"], 0, settings["size"])
    train_records, dev_records = split_records(read_manifest(manifest), "train", "dev", 0.0, 0)
    config = with_overrides(get_config(settings["config"]), epochs=settings["epochs"])
    train(config, train_records, dev_records, run, progress=progress)
    engine = Engine(CaseStore(db_url), checkpoint=run)
    engine.ingest([folder / "archive" / "studies" / r.case_id for r in train_records], user="demo")
    for kind in ("image", "report"):  # build and save the indexes now, not at the first search
        engine.index(kind)
    ready.write_text(json.dumps(DEMO_SETTINGS))  # written last: a half-built demo is rebuilt
    return db_url, run
