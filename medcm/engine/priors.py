"""A study's priors: the same patient's other stored studies, newest first, with their latest signed report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Prior", "PriorStoreLike", "format_study_date", "study_priors"]


class PriorStoreLike(Protocol):
    """The part of `db.store.CaseStore` that priors read."""

    def prior_studies(self, study_uid: str) -> list[tuple[Any, Any | None]]: ...


@dataclass(frozen=True)
class Prior:
    """One earlier (or later) study of the same patient.

    `study_date` is "YYYY-MM-DD" (as stored: shifted by de-identification, so intervals between a
    patient's studies stay true), "" when unknown; `modality` the study's modalities joined by ", ";
    `status` "new", "drafted" or "signed"; `report` the latest signed report's text, None if none,
    signed by `signed_by` as version `report_version`.
    """

    study_uid: str
    study_date: str
    modality: str
    description: str
    status: str
    report: str | None
    report_version: int | None = None
    signed_by: str | None = None


def format_study_date(value: str) -> str:
    """A DICOM DA value ("20240305") as "2024-03-05"; anything else as it is, stripped ("" stays "")."""
    value = (value or "").strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def study_priors(store: PriorStoreLike, study_uid: str) -> list[Prior]:
    """The other stored studies of `study_uid`'s patient (matched by the stored patient pseudonym), newest
    study date first; none for a study without a patient id.

    Raises:
        StoreError: unknown study.
    """
    priors = []
    for study, report in store.prior_studies(study_uid):
        priors.append(Prior(
            study_uid=study.study_uid, study_date=format_study_date(study.study_date),
            modality=", ".join(study.modalities), description=study.description, status=study.status,
            report=None if report is None else report.text,
            report_version=None if report is None else report.version,
            signed_by=None if report is None else report.signed_by,
        ))
    return priors
