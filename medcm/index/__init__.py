"""The vector-search room: exact cosine search in memory (`exact`, the reference every backend must
equal), the same answers on FAISS (`faiss`) and inside PostgreSQL with pgvector (`pgvector`), the result
type and query checks every backend shares (`query`), the top-k helpers of exact search (`topk`) and
similarity calibrated against the archive's own neighbour similarities (`calibration`).
Rows are keyed by plain string ids, the join key with the store."""

from medcm.index.exact import VectorIndex
from medcm.index.query import Hit

__all__ = ["Hit", "VectorIndex"]
