"""The library's store records and the store's input dataclasses must not drift apart."""

from __future__ import annotations

import dataclasses

import pytest

from medcm.engine.records import EmbeddingRecord, InstanceRecord, ReportRecord

store = pytest.importorskip("db.store")


@pytest.mark.parametrize(
    "ours, theirs",
    [(InstanceRecord, "InstanceInput"), (ReportRecord, "ReportInput"), (EmbeddingRecord, "EmbeddingInput")],
)
def test_records_mirror_store_inputs(ours, theirs):
    def fields(cls):
        return [(f.name, str(f.type), f.default) for f in dataclasses.fields(cls)]

    assert fields(ours) == fields(getattr(store, theirs))
