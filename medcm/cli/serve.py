"""Start the review app, and build the embedded demo it opens with on a fresh machine.

Like `medcm.cli.commands`, this is a composition root: it alone wires the library, the case store (`db`)
and the browser app (`ui`) together; the library modules import none of them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medcm.config import AbstentionConfig
    from medcm.dicom.deid import DeidConfig
    from medcm.engine.dicomweb import DicomWebServer
    from medcm.engine.outbox import Outbox
    from medcm.report.draft import DraftConfig

log = logging.getLogger(__name__)

DEMO_NOTICE = (
    "Demo: every image and report here is a synthetic drawing made by medcm, not a patient. "
    "Try uploading a held-out study the demo has not stored, e.g. {example}."
)
# Bump when the demo data, model or layout changes, so a stale cache is rebuilt instead of reused.
DEMO_VERSION = 4
DEMO_SETTINGS = {"version": DEMO_VERSION, "n_train": 480, "n_dev": 60, "size": 192, "config": "demo-cpu", "epochs": 12}


def data_dirs(db_url: str, base: Path | None = None) -> tuple[Path, Path]:
    """Folders for uploaded files (kept: the store points at them) and Gradio's own temp files.

    Beside a SQLite database file (`cases.db` → `cases.db.uploads/`), else under `base` or the cwd.
    """
    from medcm.paths import sqlite_file

    file = sqlite_file(db_url)
    root = file.with_name(file.name + ".uploads") if file else (base or Path.cwd()) / "medcm-uploads"
    return root / "files", root / "gradio-tmp"


def serve(db_url: str, checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860,
          demo_notice: str | None = None, block: bool = True, device: str | None = None,
          draft_config: DraftConfig | None = None, deid: DeidConfig | None = None,
          files_dir: str | Path | None = None, index_backend: str = "exact",
          abstention: AbstentionConfig | None = None, outbox: Outbox | None = None,
          dicomweb: DicomWebServer | None = None):
    """Open the store and the model once, then serve the review app (blocking unless `block=False`).

    Uploads are de-identified with `deid` (None: stored as they are) into `files_dir` (default
    beside a SQLite database file, see `medcm.paths.default_files_dir`). `index_backend` is
    "exact" or "faiss" (see `medcm.engine.facade.Engine`). `abstention` says when a draft abstains (None:
    the defaults of `AbstentionConfig`). With an `outbox`, signed reports are queued as DICOM SR and sent
    by a background thread (`medcm.engine.sender`), stopped when the server stops (or by `app.close()`).
    With `dicomweb` (`medcm serve --dicomweb URL`), clinicians can fetch a study from that PACS in the app.

    Every page and call needs a login (`medcm users add`); the store's accounts are checked by
    `ui.auth.make_auth`. The same server answers STOW-RS at `POST /dicomweb/studies` (`ui.stow.StowRS`:
    HTTP Basic credentials of an account that may upload; stored studies are drafted).

    Returns:
        The launched `gr.Blocks` app (useful with `block=False`; call `.close()` to stop it).

    Raises:
        ValueError: the store has no enabled account to log in with.
    """
    upload_dir, gradio_tmp = data_dirs(db_url)
    upload_dir.mkdir(parents=True, exist_ok=True)
    # Uploads hold patient data: Gradio's copies go to a managed folder, emptied at every start.
    shutil.rmtree(gradio_tmp, ignore_errors=True)
    gradio_tmp.mkdir(parents=True)
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_tmp)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from db.store import CaseStore
    from medcm.config import AbstentionConfig
    from medcm.report.draft import DraftConfig
    from medcm.engine.facade import Engine
    from starlette.middleware import Middleware

    from ui.app import build_app, launch_options
    from ui.auth import make_auth
    from ui.stow import StowRS

    store = CaseStore(db_url)
    if not any(not user.disabled for user in store.users()):
        store.close()
        raise ValueError(f"{db_url}: no enabled user account to log in with; "
                         f"create one with `medcm users add NAME --role admin --db {db_url}`")
    engine = Engine(store, checkpoint=checkpoint, device=device, draft_config=draft_config or DraftConfig(),
                    deid=deid, files_dir=files_dir, index_backend=index_backend,
                    abstention=abstention or AbstentionConfig(), outbox=outbox)
    app = build_app(engine, store, upload_dir=upload_dir, demo_notice=demo_notice, dicomweb=dicomweb)
    options = launch_options()
    options["app_kwargs"]["middleware"].append(Middleware(StowRS, engine=engine, draft=True))  # inside the guards
    engine.start_sending()  # with an outbox: signed reports leave in the background
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                   quiet=not block, max_file_size="2gb", auth=make_auth(store), **options)
    except BaseException:
        engine.stop_sending()
        raise
    if block:  # the server has stopped (Ctrl+C)
        engine.stop_sending()
    else:
        _stop_sending_on_close(app, engine)
    return app


def _stop_sending_on_close(app: Any, engine: Any) -> None:
    """Make `app.close()` also stop the engine's outbox sender (for `serve(block=False)`)."""
    close = app.close

    def close_and_stop(*args: Any, **kwargs: Any) -> Any:
        engine.stop_sending()
        return close(*args, **kwargs)

    app.close = close_and_stop


def demo_deid(folder: str | Path) -> DeidConfig:
    """The demo's de-identification settings: the app's defaults, with a key kept in the demo folder."""
    from medcm.dicom.deid import DeidConfig
    from medcm.dicom.deid_copies import load_or_create_key

    return DeidConfig(load_or_create_key(Path(folder).resolve() / "cases.db.deid-key"))


DEMO_USER = "demo"
DEMO_LOGIN_FILE = "demo-login.txt"


def demo_login(folder: str | Path, db_url: str) -> tuple[str, str, Path]:
    """The demo's clinician login: created once with a random password kept in `<folder>/demo-login.txt` (0600).

    A missing or unreadable file, or an account that no longer matches it, gets a new password.

    Returns:
        The name, the password and the file holding them.
    """
    import secrets

    from db.store import CaseStore

    file = Path(folder).resolve() / DEMO_LOGIN_FILE
    lines = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
    saved = dict(line.split(": ", 1) for line in lines if ": " in line)
    with CaseStore(db_url) as store:
        if saved.get("password") and store.authenticate(DEMO_USER, saved["password"]) == "clinician":
            return DEMO_USER, saved["password"], file
        password = secrets.token_urlsafe(12)
        if DEMO_USER in {user.name for user in store.users()}:
            store.set_password(DEMO_USER, password, actor="medcm demo")
            store.set_role(DEMO_USER, "clinician", actor="medcm demo")
            store.set_disabled(DEMO_USER, False, actor="medcm demo")
        else:
            store.add_user(DEMO_USER, "clinician", password, actor="medcm demo")
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"username: {DEMO_USER}\npassword: {password}\n")
    os.chmod(file, 0o600)  # an older file keeps its mode through O_TRUNC
    return DEMO_USER, password, file


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
    from medcm.data.manifest import read_manifest, split_records
    from medcm.data.demo_archive import write_demo_archive
    from medcm.engine.facade import Engine
    from medcm.model.train import train

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
    engine = Engine(CaseStore(db_url), checkpoint=run, deid=demo_deid(folder))
    engine.ingest([folder / "archive" / "studies" / r.case_id for r in train_records], user="demo")
    for kind in ("image", "report"):  # build and save the indexes now, not at the first search
        engine.index(kind)
    ready.write_text(json.dumps(DEMO_SETTINGS))  # written last: a half-built demo is rebuilt
    return db_url, run
