"""The embedded demo is built once and cached (with its own login); `serve` binds to loopback, keeps uploads in
managed folders and needs an account; `medcm users` manages the accounts."""

from __future__ import annotations

import io
import json
import os
import urllib.request

import pytest

import medcm.cli.serve as serve_module
from medcm.cli.commands import main
from medcm.cli.serve import data_dirs, demo_held_out, demo_login, prepare_demo, serve

SMALL_DEMO = {"version": 1, "n_train": 24, "n_dev": 6, "size": 64, "config": "cpu-small", "epochs": 1}


def test_demo_is_built_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_module, "DEMO_SETTINGS", SMALL_DEMO)
    db_url, run = prepare_demo(tmp_path / "demo", progress=False)
    assert json.loads((tmp_path / "demo" / "READY").read_text()) == SMALL_DEMO
    assert (run / "best" / "config.json").is_file() and db_url == f"sqlite:///{tmp_path / 'demo' / 'cases.db'}"
    from db.store import CaseStore

    assert len(CaseStore(db_url).list_studies()) == 24  # the training pool; dev studies stay out
    assert len(demo_held_out(tmp_path / "demo")) == 6
    monkeypatch.setattr("medcm.model.train.train", lambda *a, **k: pytest.fail("the cached demo was rebuilt"))
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
    from db.store import CaseStore

    with CaseStore(db_url) as store:
        store.add_user("boss", "admin", "admin-password")
    app = serve(db_url, trained_run.best_dir.parent, port=None, block=False, device="cpu")
    try:
        assert app.local_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(app.local_url, timeout=30) as response:
            assert response.status == 200 and "auth_required" in response.read().decode()  # the login page
        assert not stale.exists()
    finally:
        app.close()


def test_serve_refuses_to_start_without_an_enabled_account(tmp_path, trained_run, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    with pytest.raises(ValueError, match=r"no enabled user account.*medcm users add NAME --role admin --db"):
        serve(db_url, trained_run.best_dir.parent, port=None, block=False, device="cpu")
    from db.store import CaseStore

    with CaseStore(db_url) as store:
        store.add_user("boss", "admin", "admin-password")
        store.set_disabled("boss")
    with pytest.raises(ValueError, match="no enabled user account"):
        serve(db_url, trained_run.best_dir.parent, port=None, block=False, device="cpu")


def test_the_demo_login_is_made_once_and_kept_private(tmp_path):
    from db.store import CaseStore

    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    name, password, file = demo_login(tmp_path, db_url)
    assert (name, file) == ("demo", tmp_path / "demo-login.txt") and len(password) >= 12
    assert oct(os.stat(file).st_mode & 0o777) == "0o600" and f"password: {password}" in file.read_text()
    assert demo_login(tmp_path, db_url) == (name, password, file)  # the second start reuses it
    with CaseStore(db_url) as store:
        assert store.authenticate("demo", password) == "clinician"
    file.unlink()
    _, renewed, _ = demo_login(tmp_path, db_url)
    with CaseStore(db_url) as store:
        assert renewed != password and store.authenticate("demo", renewed) == "clinician"
        assert [u.name for u in store.users()] == ["demo"]


def _users(monkeypatch, capsys, stdin: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["users", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_users_command_adds_lists_changes_and_disables_accounts(tmp_path, monkeypatch, capsys):
    from db.store import CaseStore

    db = str(tmp_path / "cases.db")
    assert _users(monkeypatch, capsys, "s3cret-pass\n", "add", "dr.a", "--role", "clinician", "--db", db)[0] == 0
    code, _, err = _users(monkeypatch, capsys, "short\n", "add", "dr.b", "--role", "viewer", "--db", db)
    assert code == 1 and err.strip() == "error: password: got 5 characters, expected 8 to 1024"
    code, _, err = _users(monkeypatch, capsys, "s3cret-pass\n", "add", "dr.a", "--role", "viewer", "--db", db)
    assert code == 1 and "already exists" in err
    assert _users(monkeypatch, capsys, "new-password\n", "passwd", "dr.a", "--db", db)[0] == 0
    assert _users(monkeypatch, capsys, "", "role", "dr.a", "--role", "admin", "--db", db)[0] == 0
    with CaseStore(f"sqlite:///{tmp_path / 'cases.db'}") as store:
        assert store.authenticate("dr.a", "s3cret-pass") is None and store.authenticate("dr.a", "new-password") == "admin"
        (added, *_) = store.events(kind="user")[::-1]
        assert (added["user"], added["detail"]) == ("cli", {"action": "add", "name": "dr.a", "role": "clinician"})
    assert _users(monkeypatch, capsys, "", "disable", "dr.a", "--db", db)[0] == 0
    code, out, _ = _users(monkeypatch, capsys, "", "list", "--db", db)
    assert code == 0 and out.startswith("dr.a\tadmin\t") and out.rstrip().endswith("(disabled)")
    code, _, err = _users(monkeypatch, capsys, "", "disable", "nobody", "--db", db)
    assert code == 1 and "no such account" in err
