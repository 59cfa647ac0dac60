"""The store's ingest writes in batches: its statements do not grow with the number of studies or
reports, and batching keeps what one report at a time did (versions, repeats, errors, owners)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import event

from db.store import CaseStore, EmbeddingInput, InstanceInput, ReportInput, StoreError


def _instance(study: int, n: int) -> InstanceInput:
    sop = f"2.{study}.{n}"
    metadata = {"modality": "CR", "body_part": "CHEST", "study_date": "20240131"}
    return InstanceInput(sop, f"1.{study}", f"1.{study}.1", f"P{study}", f"/a/{sop}.dcm",
                         hashlib.sha256(sop.encode()).hexdigest(), metadata, preview_png=b"\x89PNG")


def _archive(studies: int) -> tuple[list[InstanceInput], list[ReportInput], list[EmbeddingInput]]:
    rng = np.random.default_rng(studies)
    instances = [_instance(s, n) for s in range(studies) for n in range(2)]
    reports = [ReportInput(f"1.{s}", f"FINDINGS: case {s}.", [("FINDINGS", f"case {s}.")]) for s in range(studies)]
    embeddings = [EmbeddingInput("image", i.sop_instance_uid, "m", rng.standard_normal(8)) for i in instances]
    embeddings += [EmbeddingInput("report", r.study_uid, "m", rng.standard_normal(8)) for r in reports]
    return instances, reports, embeddings


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'cases.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))  # skips without a server
    with CaseStore(url) as opened:
        yield opened


def _statements(store: CaseStore, call) -> int:
    seen = []
    listener = lambda *args: seen.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    event.listen(store._engine, "before_cursor_execute", listener)
    try:
        call()
    finally:
        event.remove(store._engine, "before_cursor_execute", listener)
    return len(seen)


def test_ingest_statements_do_not_grow_with_studies_or_reports(tmp_path):
    """One study or forty, with a report and vectors each: the same number of SQL statements."""
    counts = []
    for n, studies in enumerate((1, 40)):
        store = CaseStore(f"sqlite:///{tmp_path / f'{n}.db'}")
        counts.append(_statements(store, lambda: store.ingest(*_archive(studies))))
        assert store.count_embeddings("report", "m") == studies and store.count_embeddings("image", "m") == 2 * studies
    assert counts[0] == counts[1], counts


def test_report_texts_gives_every_stored_version_of_known_studies(store):
    instances, reports, _ = _archive(3)
    store.ingest(instances, reports[:2])
    store.sign_report("1.0", "FINDINGS: amended.", [], signer="dr.a")
    assert store.report_texts(["1.0", "1.1", "1.2", "9.9"]) == {
        "1.0": {"FINDINGS: case 0.", "FINDINGS: amended."}, "1.1": {"FINDINGS: case 1."}, "1.2": set()}
    assert store.report_texts([]) == {}


def test_reports_of_one_study_in_one_call_become_successive_versions(store):
    instances, reports, _ = _archive(1)
    store.ingest(instances, reports)
    again = [ReportInput("1.0", "FINDINGS: second.", []), ReportInput("1.0", "FINDINGS: case 0.", []),
             ReportInput("1.0", "FINDINGS: third.", [], status="draft"), ReportInput("1.0", "FINDINGS: second.", [])]
    summary = store.ingest([], again, [EmbeddingInput("report", "1.0", "m", np.ones(4))])
    assert summary.added_reports == 2 and summary.added_embeddings == 1
    versions = store.report_versions("1.0")
    assert [(v.version, v.text, v.status) for v in versions] == [
        (1, "FINDINGS: case 0.", "signed"), (2, "FINDINGS: second.", "signed"), (3, "FINDINGS: third.", "draft")]
    assert store.get_study("1.0").status == "drafted"
    assert store.embedding_matrix("report", "m").meta[0]["report_version"] == "3"  # the latest version's


@pytest.mark.parametrize(("report", "message"), [
    (ReportInput("9.9", "text", []), "'9.9': not in the store"),
    (ReportInput("1.0", "  ", []), "report of study 1.0: text"),
    (ReportInput("1.0", "text", [], status="final"), "status 'final'"),
])
def test_a_bad_report_fails_the_whole_call(store, report, message):
    instances, reports, _ = _archive(2)
    store.ingest(instances[:2], reports[:1])
    with pytest.raises(StoreError, match=message):
        store.ingest(instances[2:], [reports[1], report])
    assert [s.study_uid for s in store.list_studies()] == ["1.0"] and len(store.report_versions("1.0")) == 1


@pytest.mark.parametrize(("key", "message"), [("9.9", "'9.9': not in the store"), ("1.1", "study has no report")])
def test_a_report_vector_needs_a_stored_study_with_a_report(store, key, message):
    instances, reports, _ = _archive(2)
    store.ingest(instances, reports[:1])
    with pytest.raises(StoreError, match=message):
        store.ingest([], [], [EmbeddingInput("report", "1.0", "m", np.ones(4)),
                              EmbeddingInput("report", key, "m", np.ones(4))])
    assert store.count_embeddings("report", "m") == 0
