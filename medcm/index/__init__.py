"""The vector-search room: exact cosine search in memory (`exact`, the reference every backend must
equal), the same answers on FAISS (`faiss`) and inside PostgreSQL with pgvector (`pgvector`), and the
top-k helpers they share (`topk`). Rows are keyed by plain string ids, the join key with the store."""

from medcm.index.exact import Hit, VectorIndex

__all__ = ["Hit", "VectorIndex"]
