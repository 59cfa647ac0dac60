"""Tests for medcm.engine.ingest_plan: files planned from headers alone, chunks of whole series, one chunk decoded at a time."""

from __future__ import annotations

import zipfile

import numpy as np

from db.store import CaseStore
from medcm.dicom.write import write_image
from medcm.engine import ingest_plan
from medcm.engine.facade import Engine
from medcm.engine.ingest_plan import PlannedFile, plan_files, planned_chunks


def _series(folder, study: str, series: str, n: int, shape=(32, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(folder / f"{i}.dcm", np.random.default_rng(i).random(shape), modality="CT",
                    study_uid=study, series_uid=series)


def test_plan_reads_headers_only_and_groups_by_study_and_series(tmp_path, monkeypatch):
    _series(tmp_path / "a", "1.2.3.1", "1.2.3.1.1", 3, shape=(40, 30))
    _series(tmp_path / "b", "1.2.3.2", "1.2.3.2.1", 2)
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.write(tmp_path / "b" / "0.dcm", "x/0.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    monkeypatch.setattr(ingest_plan, "read_instance", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    files, errors = plan_files([tmp_path])
    by_label = {f.label.split(str(tmp_path))[-1]: f for f in files}
    assert by_label["/a/0.dcm"] == PlannedFile(str(tmp_path / "a" / "0.dcm"), str(tmp_path / "a"), "1.2.3.1",
                                               "1.2.3.1.1", 40 * 30)
    assert by_label["/c.zip:x/0.dcm"].study == "1.2.3.2"
    assert len(files) == 6 + ("/junk.dcm" in by_label) and all(f.samples in (1200, 1024, 0) for f in files)
    assert all("junk" in str(e) for e in errors)


def _planned(study: str, series: str, n: int, samples: int = 100) -> list[PlannedFile]:
    return [PlannedFile(f"{series}-{i}", "", study, series, samples) for i in range(n)]


def test_chunks_keep_series_whole_and_a_study_together_within_both_budgets():
    files = _planned("s1", "a", 3) + _planned("s2", "c", 4) + _planned("s1", "b", 2) + _planned("s3", "d", 10)
    chunks = [[f.label for f in chunk] for chunk in planned_chunks(files, max_images=6, max_samples=10_000)]
    assert chunks == [["a-0", "a-1", "a-2", "b-0", "b-1"], ["c-0", "c-1", "c-2", "c-3"], [f"d-{i}" for i in range(10)]]
    by_samples = [[f.label[0] for f in chunk] for chunk in planned_chunks(files, max_images=100, max_samples=450)]
    assert by_samples == [["a"] * 3, ["b"] * 2, ["c"] * 4, ["d"] * 10]  # 1,000 samples: a series alone
    assert list(planned_chunks([], 5)) == []


def test_ingest_decodes_one_chunk_at_a_time(tmp_path, monkeypatch):
    for s in range(4):
        _series(tmp_path / "in" / f"s{s}", f"1.2.3.{s}", f"1.2.3.{s}.1", 3)
    in_flight, peak = [], []
    real = ingest_plan.read_instance

    def counting(*args, **kwargs):
        in_flight.append(1)
        peak.append(len(in_flight))
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_plan, "read_instance", counting)
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    original_ingest = store.ingest

    def stored(*args, **kwargs):
        in_flight.clear()  # a chunk is stored: its images are let go
        return original_ingest(*args, **kwargs)

    monkeypatch.setattr(store, "ingest", stored)
    monkeypatch.setattr(ingest_plan, "CHUNK_SAMPLES", 2 * 3 * 32 * 32)  # two series a chunk
    result = Engine(store).ingest([tmp_path / "in"])
    assert result.added_instances == 12 and len(result.studies) == 4
    assert max(peak) == 6
