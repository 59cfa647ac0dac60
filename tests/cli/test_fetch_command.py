"""`medcm fetch` and `medcm serve --dicomweb`: their options, and one `error:` line (exit 1) for a bad UID or a server that does not answer."""

from __future__ import annotations

import pytest

from medcm.cli.commands import build_parser, main
from medcm.cli.fetch_command import PASSWORD_ENV, dicomweb_server_from_args
from pacs_peers import free_port  # tests/pacs_peers.py


def test_the_parser_has_fetch_with_its_defaults():
    args = build_parser().parse_args(["fetch", "--from", "http://pacs/dicom-web", "--study", "1.2.3", "--db", "c.db"])
    assert (args.url, args.study, args.db, args.user) == ("http://pacs/dicom-web", "1.2.3", "c.db", "cli")
    assert args.checkpoint is None and args.username is None and not args.no_deid and not args.no_draft


def test_fetch_errors_are_one_line(tmp_path, capsys):
    db = str(tmp_path / "cases.db")
    assert main(["fetch", "--from", "http://127.0.0.1:1/dicom-web", "--study", "1.2.x", "--db", db]) == 1
    assert capsys.readouterr().err == "error: --study: got '1.2.x', expected a DICOM UID (digits and dots, 64 " \
                                      "characters at most)\n"
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["fetch", "--from", url, "--study", "1.2.3", "--db", db]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: DICOMweb {url}, study 1.2.3: server unreachable") and error.count("\n") == 1


def test_serve_takes_a_dicomweb_server_with_its_password_from_the_environment(monkeypatch):
    parser = build_parser()
    assert dicomweb_server_from_args(parser.parse_args(["serve", "--db", "c.db", "--checkpoint", "c"])) is None
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    args = parser.parse_args(["serve", "--db", "c.db", "--checkpoint", "c", "--dicomweb", "http://pacs:8042/dicom-web",
                              "--dicomweb-user", "medcm"])
    server = dicomweb_server_from_args(args)
    assert (server.url, server.username, server.password) == ("http://pacs:8042/dicom-web", "medcm", "s3cret")
    assert "s3cret" not in repr(server)
    with pytest.raises(ValueError, match="expected an http"):
        dicomweb_server_from_args(parser.parse_args(["serve", "--db", "c.db", "--checkpoint", "c", "--dicomweb", "pacs"]))
    with pytest.raises(ValueError, match="expected --dicomweb URL"):
        dicomweb_server_from_args(parser.parse_args(["serve", "--db", "c.db", "--checkpoint", "c",
                                                     "--dicomweb-user", "medcm"]))
