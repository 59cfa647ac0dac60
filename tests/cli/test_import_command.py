"""`medcm import` on the command line: its summary, its errors and its refusals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from medcm.cli.import_command import add_import_parser, files_dir_option, run_import

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # the paired archive of the import tests
from paired_archive import write_manifest  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcm")
    add_import_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_command_line_prints_a_summary_and_errors(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data", "jsonl")
    (tmp_path / "data" / "images" / "c1b.jpg").write_bytes(b"broken")
    db = tmp_path / "db" / "cases.db"
    args = _parser().parse_args(["import", "manifest", str(manifest), "--db", str(db), "--quiet"])
    assert args.handler(args) == 0
    out, err = capsys.readouterr()
    assert out == ("imported 3 of 3 case(s) into 3 study(ies): 3 new instance(s), 0 already stored; 3 report(s); "
                   "0 embedding(s); 1 error(s)\n")
    assert err.startswith(f"error: {tmp_path / 'data' / 'images' / 'c1b.jpg'}: cannot read image")
    assert len(err.splitlines()) == 1
    files = tmp_path / "db" / "cases.db.files"  # default: beside the database
    stored = sorted(files.glob("2.25.*/*.dcm"))  # de-identified copies, one folder per (new) study UID
    assert len(stored) == 3 and not (files / "c1").exists()  # the converted originals were only staged
    assert not [p for p in files.iterdir() if p.name.startswith(".")]
    assert len(bytes.fromhex((tmp_path / "db" / "cases.db.deid-key").read_text())) == 32

    args = _parser().parse_args(["import", "manifest", str(manifest), "--db", str(tmp_path / "raw.db"), "--quiet",
                                 "--no-deid"])
    assert args.handler(args) == 0
    assert (tmp_path / "raw.db.files" / "c1" / "1.dcm").is_file()  # --no-deid: the converted files are stored
    capsys.readouterr()

    args = _parser().parse_args(["import", "manifest", str(manifest), "--db", str(db), "--split", "train", "--quiet"])
    assert run_import(args) == 0  # everything already stored is still a success
    assert "0 new instance(s), 3 already stored; 0 report(s)" in capsys.readouterr().out


def test_command_line_refusals(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data", "jsonl")
    db = str(tmp_path / "cases.db")
    with pytest.raises(ValueError, match=r"--split: got 'dev', which has no cases; expected one of \['train'\]"):
        run_import(_parser().parse_args(["import", "manifest", str(manifest), "--db", db, "--split", "dev"]))
    with pytest.raises(ValueError, match=r"--files: not given, and a postgresql\+psycopg:// database") as err:
        files_dir_option("postgresql+psycopg://user:secret@host/medcm", None)
    assert "secret" not in str(err.value)
    assert files_dir_option("postgresql+psycopg://host/medcm", str(tmp_path / "f")) == tmp_path / "f"
    for name in ("c1a.png", "c1b.jpg", "c2.dcm", "c3.png"):
        (tmp_path / "data" / "images" / name).write_bytes(b"broken")
    assert run_import(_parser().parse_args(["import", "manifest", str(manifest), "--db", db, "--quiet"])) == 1
    out, err = capsys.readouterr()
    assert out.startswith("imported 0 of 3 case(s)") and len(err.splitlines()) == 4
