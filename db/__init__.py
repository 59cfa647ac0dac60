"""The case store of medcm: studies, report versions, embeddings and an audit trail in SQL.

It imports nothing from `medcm`; the vector index joins on plain string ids (DICOM UIDs).
Use `db.store.CaseStore`; the public names of `db.store` are re-exported here.
"""

from db import store as _store
from db.store import *  # noqa: F403 - the re-export is the point; `__all__` below names it

__all__ = list(_store.__all__)
