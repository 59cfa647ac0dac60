"""The embedded demo is built once and cached; `serve` binds to loopback and keeps uploads in managed folders."""

from __future__ import annotations

import json
import urllib.request

import pytest

import medcm.serve as serve_module
from medcm.serve import data_dirs, demo_held_out, prepare_demo, serve

SMALL_DEMO = {"version": 1, "n_train": 24, "n_dev": 6, "size": 64, "config": "cpu-small", "epochs": 1}


def test_demo_is_built_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_module, "DEMO_SETTINGS", SMALL_DEMO)
    db_url, run = prepare_demo(tmp_path / "demo", progress=False)
    assert json.loads((tmp_path / "demo" / "READY").read_text()) == SMALL_DEMO
    assert (run / "best" / "config.json").is_file() and db_url == f"sqlite:///{tmp_path / 'demo' / 'cases.db'}"
    from db.store import CaseStore

    assert len(CaseStore(db_url).list_studies()) == 24  # the training pool; dev studies stay out
    assert len(demo_held_out(tmp_path / "demo")) == 6
    monkeypatch.setattr("medcm.train.train", lambda *a, **k: pytest.fail("the cached demo was rebuilt"))
    assert prepare_demo(tmp_path / "demo", progress=False) == (db_url, run)


def test_changed_demo_settings_rebuild_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_module, "DEMO_SETTINGS", SMALL_DEMO)
    prepare_demo(tmp_path / "demo", progress=False)
    monkeypatch.setattr(serve_module, "DEMO_SETTINGS", {**SMALL_DEMO, "version": 2, "n_train": 12})
    db_url, _ = prepare_demo(tmp_path / "demo", progress=False)
    from db.store import CaseStore

    assert len(CaseStore(db_url).list_studies()) == 12


def test_data_dirs_sit_beside_a_sqlite_file(tmp_path):
    files, tmp = data_dirs(f"sqlite:///{tmp_path / 'cases.db'}")
    assert (files, tmp) == (tmp_path / "cases.db.uploads" / "files", tmp_path / "cases.db.uploads" / "gradio-tmp")


def test_serve_binds_to_loopback_and_empties_gradio_temp(tmp_path, trained_run, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    stale = tmp_path / "cases.db.uploads" / "gradio-tmp" / "old-upload.dcm"
    stale.parent.mkdir(parents=True)
    stale.write_text("left over from a previous run")
    app = serve(db_url, trained_run.best_dir.parent, port=None, block=False, device="cpu")
    try:
        assert app.local_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(app.local_url, timeout=30) as response:
            assert response.status == 200
        assert not stale.exists()
    finally:
        app.close()
