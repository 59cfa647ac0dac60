"""Options shared by the `medcm` verbs: database URLs and the de-identification settings they ask for."""

from __future__ import annotations

import argparse
from argparse import Namespace

import pytest

from medcm.cli.options import add_deid_options, db_url, deid_config_from_args


def test_a_plain_path_becomes_an_absolute_sqlite_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert db_url("cases.db") == f"sqlite:///{tmp_path / 'cases.db'}"
    assert db_url("postgresql+psycopg://host/medcm") == "postgresql+psycopg://host/medcm"


def test_command_line_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 'cases.db'}"
    config = deid_config_from_args(Namespace(no_deid=False, deid_key=None, burned_in="flag"), url)
    assert config.refuse_burned_in is False and (tmp_path / "cases.db.deid-key").is_file()
    assert deid_config_from_args(Namespace(no_deid=True), url) is None
    with pytest.raises(ValueError, match=r"--deid-key: not given, and a postgresql\+psycopg:// database") as err:
        deid_config_from_args(Namespace(no_deid=False, deid_key=None), "postgresql+psycopg://u:secret@h/db")
    assert "secret" not in str(err.value)


def test_deid_options_parse_to_a_config_that_refuses_burned_in_text(tmp_path):
    parser = argparse.ArgumentParser()
    add_deid_options(parser)
    args = parser.parse_args(["--deid-key", str(tmp_path / "site.key"), "--files", str(tmp_path / "f")])
    assert args.files == str(tmp_path / "f") and args.no_deid is False
    config = deid_config_from_args(args, "postgresql+psycopg://host/medcm")
    assert config.refuse_burned_in is True and (tmp_path / "site.key").is_file()
