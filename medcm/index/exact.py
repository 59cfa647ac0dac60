"""Exact cosine-similarity vector index over case embeddings, saved as a folder of .npy and JSON.

    INDEX_DIR/
      index.json    {"format": "medcm-index", "format_version": 1, "model_id", "dim", "count", "dtype"}
      vectors.npy   float32 or float16 [N, D], rows L2-normalised
      keys.json     [N] keys (SOPInstanceUIDs, study UIDs, ...)
      meta.json     [N] dicts of str -> str (study_uid, modality, body_part, ...)

Rows are stored as float32, or as float16 (`dtype="float16"`: half the memory and file size; each
chunk is cast to float32 for scoring, so scores stay within ~1e-3 of float32's). The index is a cache:
the case store is the source of truth and the caller rebuilds the index from rows read there. Search
scores rows in chunks with a running top-k, so memory stays O(chunk + k) (O(groups) with `group_by`).
Scoring uses numpy matmul: on 100k x 256 float32 with 2 CPU threads, `V @ q` took 2.3 ms against
8.3 ms for torch (`from_numpy` + `@` + `topk`); batched 64 queries, numpy took 28 ms against 45 ms.
`medcm.index.faiss.FaissIndex` answers the same searches on FAISS (the `faiss` extra).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

from medcm.fileio import replace_folder
from medcm.index.query import Hit, SingleQuerySearch, filter_values, normalised_queries, positive_int
from medcm.index.topk import GroupTop, TopK

FORMAT = "medcm-index"
FORMAT_VERSION = 1
CHUNK_ROWS = 32_768  # rows scored at once: ~flat speed from 16k up, bounded memory
QUERY_BLOCK = 64  # queries scored together in search_batch
_GATHER_BELOW = 0.25  # a filter keeping fewer rows than this scores only those rows
_GROUP_STATE = 1 << 22  # group_by state elements (queries x groups) held at once
_FILES = ("index.json", "vectors.npy", "keys.json", "meta.json")
DTYPES = ("float32", "float16")  # storage types of the rows; scoring is always float32


class VectorIndex(SingleQuerySearch):
    """Exact cosine-similarity index: L2-normalised rows [N, D] (float32 or float16) with string keys and metadata."""

    def __init__(self, dim: int, model_id: str, chunk_rows: int = CHUNK_ROWS, dtype: str = "float32") -> None:
        """An empty index for `dim`-dimensional embeddings of the model `model_id`.

        Args:
            dim: embedding size D.
            model_id: which model produced the embeddings (saved with the index, checked by callers).
            chunk_rows: rows scored at once; bounds search memory to about chunk_rows x 4 bytes per query
                (plus a float32 copy of the chunk, chunk_rows x D x 4 bytes, for float16 storage).
            dtype: row storage, "float32" or "float16" (half the memory; scores within ~1e-3).
        """
        self.dim, self.model_id = positive_int("dim", dim), str(model_id)
        self.chunk_rows = positive_int("chunk_rows", chunk_rows)
        if dtype not in DTYPES:
            raise ValueError(f"dtype is {dtype!r}, expected one of {DTYPES}")
        self.dtype = np.dtype(dtype)
        self._buf = np.empty((0, dim), self.dtype)  # capacity grows by doubling; rows [:_n] are live
        self._n = 0
        self._keys: list[str] = []
        self._meta: list[dict[str, str]] = []
        self._pos: dict[str, int] = {}
        self._codes: dict[tuple[str, bool], tuple[np.ndarray, dict[str, int]]] = {}

    @classmethod
    def build(cls, keys: list[str], vectors: np.ndarray, meta: list[dict[str, str]] | None, model_id: str,
              *, chunk_rows: int = CHUNK_ROWS, dtype: str = "float32") -> VectorIndex:
        """An index of `vectors` [N, D] (L2-normalised on the way in, stored as `dtype`) under unique `keys` [N].

        Raises:
            ValueError: duplicate keys, vectors not [N, D], zero or non-finite rows, bad metadata, bad dtype.
        """
        shape = np.shape(vectors)
        if len(shape) != 2 or shape[1] < 1:
            raise ValueError(f"vectors has shape {shape}, expected [N, D]")
        index = cls(int(shape[1]), model_id, chunk_rows, dtype)
        index.add(keys, vectors, meta)
        return index

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    @property
    def keys(self) -> list[str]:
        """The keys in row order (a copy)."""
        return list(self._keys)

    @property
    def meta(self) -> list[dict[str, str]]:
        """The metadata in row order (copies)."""
        return [dict(m) for m in self._meta]

    @property
    def vectors(self) -> np.ndarray:
        """Read-only view of the normalised rows [N, D], in the index's dtype."""
        view = self._buf[: self._n].view()
        view.flags.writeable = False
        return view

    def add(self, keys: list[str], vectors: np.ndarray, meta: list[dict[str, str]] | None = None) -> None:
        """Upsert rows: `vectors` [M, D] under `keys` [M]; a key already present is replaced.

        Raises:
            ValueError: keys repeated within the call, wrong shape, zero or non-finite rows, bad metadata.
        """
        keys, rows, meta = self._prepare(keys, vectors, meta)
        old = [(i, self._pos[k]) for i, k in enumerate(keys) if k in self._pos]
        for i, pos in old:
            self._buf[pos] = rows[i]
            self._meta[pos] = meta[i]
        fresh = [i for i, k in enumerate(keys) if k not in self._pos]
        if fresh and self._n == 0 and len(fresh) == len(keys):
            self._buf = rows  # adopt the prepared copy: build() holds one array, not two
        elif fresh:
            self._reserve(len(fresh))
            self._buf[self._n : self._n + len(fresh)] = rows[fresh]
        for i in fresh:
            self._pos[keys[i]] = len(self._keys)
            self._keys.append(keys[i])
            self._meta.append(meta[i])
        self._n = len(self._keys)
        self._codes.clear()

    def remove(self, keys: list[str]) -> int:
        """Delete the rows of `keys` (absent keys are ignored) and compact; returns how many were removed."""
        drop = sorted({self._pos[k] for k in _as_keys(keys) if k in self._pos})
        if not drop:
            return 0
        keep = np.ones(self._n, bool)
        keep[drop] = False
        self._buf = np.ascontiguousarray(self._buf[: self._n][keep])
        self._keys = [k for k, kept in zip(self._keys, keep.tolist()) if kept]
        self._meta = [m for m, kept in zip(self._meta, keep.tolist()) if kept]
        self._pos = {k: i for i, k in enumerate(self._keys)}
        self._n = len(self._keys)
        self._codes.clear()
        return len(drop)

    def search_batch(self, queries: np.ndarray, k: int = 10, filters: dict[str, str | Collection[str]] | None = None,
                     exclude: Collection[str] = (), group_by: str | None = None) -> list[list[Hit]]:
        """`search` for each row of `queries` [Q, D], sharing filters, exclude and group_by; [Q] hit lists."""
        q = normalised_queries(queries, self.dim)
        k = positive_int("k", k)
        mask = self._row_mask(filters, exclude)
        groups = None if group_by is None else self._groups(group_by)
        n_groups = 0 if groups is None else int(groups.max(initial=-1)) + 1
        block = max(1, min(QUERY_BLOCK, _GROUP_STATE // max(1, n_groups)))  # each query holds [groups] state
        results: list[list[Hit]] = []
        for a in range(0, len(q), block):
            sub = q[a : a + block]
            tops = [TopK(self._keys, k) if groups is None else GroupTop(self._keys, groups, n_groups) for _ in sub]
            for scores, rows in self._blocks(sub, mask):
                for top, row_scores in zip(tops, scores):
                    top.push(row_scores, rows)
            results.extend(self._hits(*top.result(k)) for top in tops)
        return results

    def save(self, folder: str | Path) -> Path:
        """Write the index folder atomically (an existing one is replaced only once the new one is complete).

        Returns:
            The index folder.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))  # unique per call
        try:
            np.save(staging / "vectors.npy", self._buf[: self._n], allow_pickle=False)
            _write_json(staging / "keys.json", self._keys)
            _write_json(staging / "meta.json", self._meta)
            info = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": self.model_id,
                    "dim": self.dim, "count": self._n, "dtype": self.dtype.name}
            _write_json(staging / "index.json", info)  # written last: its presence marks a complete folder
            replace_folder(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, chunk_rows: int = CHUNK_ROWS, dtype: str | None = None) -> VectorIndex:
        """Read an index folder written by `save`, checking its format, shapes and counts.

        Args:
            folder: the index folder.
            chunk_rows: rows scored at once.
            dtype: "float32" or "float16" to convert the stored rows on loading; None keeps the stored dtype.

        Raises:
            FileNotFoundError: no such folder, or a file missing from it.
            ValueError: a foreign or corrupted folder (wrong format, shapes, counts or types).
        """
        folder = Path(folder)
        for name in _FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: not a medcm index (no {name})")
        info = _read_json(folder / "index.json", dict)
        if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: format {info.get('format')!r} v{info.get('format_version')}, "
                             f"expected {FORMAT!r} v{FORMAT_VERSION}")
        dim, count = info.get("dim"), info.get("count")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (dim, count)):
            raise ValueError(f"{folder}/index.json: dim={dim!r} count={count!r}, expected ints")
        try:
            vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        except (ValueError, EOFError) as err:  # object arrays, truncated or foreign files
            raise ValueError(f"{folder}/vectors.npy: unreadable without pickle ({err})") from err
        stored = info.get("dtype", "float32")  # folders written before float16 storage have no dtype
        if stored not in DTYPES or vectors.dtype != np.dtype(stored) or vectors.shape != (count, dim):
            raise ValueError(f"{folder}/vectors.npy: {vectors.dtype} {vectors.shape}, "
                             f"expected {stored} ({count}, {dim}) with {stored} one of {DTYPES}")
        keys = _read_json(folder / "keys.json", list)
        meta = _read_json(folder / "meta.json", list)
        if len(keys) != count or len(meta) != count:
            raise ValueError(f"{folder}: {len(keys)} keys and {len(meta)} meta entries, expected {count} each")
        keys, meta = cls._check_keys_meta(keys, meta)
        return cls._adopt(keys, meta, vectors.astype(dtype or stored, copy=False), str(info.get("model_id", "")),
                          chunk_rows)

    @classmethod
    def _adopt(cls, keys: list[str], meta: list[dict[str, str]], vectors: np.ndarray, model_id: str,
               chunk_rows: int = CHUNK_ROWS) -> VectorIndex:
        """An index holding already checked `keys` [N], `meta` [N] and normalised `vectors` [N, D] as they are.

        `vectors` is not copied when it is C-contiguous (medcm.index.faiss shares FAISS's storage this way).
        """
        index = cls(vectors.shape[1], model_id, chunk_rows, vectors.dtype.name)
        index._buf, index._n, index._keys, index._meta = np.ascontiguousarray(vectors), len(keys), keys, meta
        index._pos = {key: i for i, key in enumerate(keys)}
        return index

    # --- internals -----------------------------------------------------------------------------

    def _prepare(self, keys, vectors, meta) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
        """Checked keys [M], normalised copy of vectors [M, D] in the index's dtype, metadata copies [M]."""
        keys = _as_keys(keys)
        keys, meta = self._check_keys_meta(keys, [{} for _ in keys] if meta is None else list(meta))
        shape = np.shape(vectors)
        if shape != (len(keys), self.dim):
            raise ValueError(f"vectors has shape {shape}, expected ({len(keys)}, {self.dim}) for {len(keys)} keys")
        rows = np.array(vectors, dtype=np.float32, order="C")  # a copy: the caller's array is left alone
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))  # no [N, D] temporary, unlike linalg.norm
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if bad.size:
            raise ValueError(f"vector of key {keys[bad[0]]!r} has norm {norms[bad[0]]}, expected finite and non-zero")
        rows /= norms[:, None]
        return keys, rows.astype(self.dtype, copy=False), meta

    @staticmethod
    def _check_keys_meta(keys: list, meta: list) -> tuple[list[str], list[dict[str, str]]]:
        """Keys [M] as given; meta [M] copied, None values dropped (a NULL column is a missing field)."""
        if len(meta) != len(keys):
            raise ValueError(f"got {len(meta)} meta entries for {len(keys)} keys, expected one per key")
        seen: set[str] = set()
        for key in keys:
            if not isinstance(key, str):
                raise ValueError(f"key {key!r} is a {type(key).__name__}, expected str")
            if key in seen:
                raise ValueError(f"duplicate key {key!r}, expected unique keys")
            seen.add(key)
        meta = [{a: b for a, b in m.items() if b is not None} if isinstance(m, dict) else m for m in meta]
        for key, m in zip(keys, meta):
            if not isinstance(m, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in m.items()):
                raise ValueError(f"meta of key {key!r} is {m!r}, expected a dict of str to str")
        return list(keys), meta

    def _reserve(self, extra: int) -> None:
        need = self._n + extra
        if need > len(self._buf):  # amortised doubling keeps repeated small adds O(total rows)
            grown = np.empty((max(need, 2 * len(self._buf), 16), self.dim), self.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown

    def _field_codes(self, field: str, fold: bool) -> tuple[np.ndarray, dict[str, int]]:
        """Per-row int code of meta `field` ([N], -1 where missing) and value -> code; cached until a change."""
        cached = self._codes.get((field, fold))
        if cached is None:
            table: dict[str, int] = {}
            values = (m.get(field) for m in self._meta)
            codes = np.fromiter(
                (-1 if v is None else table.setdefault(v.casefold() if fold else v, len(table)) for v in values),
                dtype=np.int64, count=self._n)
            cached = self._codes[(field, fold)] = (codes, table)
        return cached

    def _row_mask(self, filters, exclude) -> np.ndarray | None:
        """Rows allowed by `filters` and not in `exclude`, bool [N]; None when every row is allowed."""
        mask = None
        for field, values in filter_values(filters).items():
            codes, table = self._field_codes(field, fold=True)
            allowed_set = {v.casefold() for v in values}
            # A comma-separated value (a study with several modalities: "CT,MR") matches on any part.
            wanted = [code for value, code in table.items() if allowed_set & set(value.split(","))]
            hit = np.isin(codes, wanted)
            mask = hit if mask is None else mask & hit
        drop = [self._pos[key] for key in _as_keys(exclude) if key in self._pos]
        if drop:
            mask = np.ones(self._n, bool) if mask is None else mask
            mask[drop] = False
        return mask

    def _groups(self, field: str) -> np.ndarray:
        """Group id per row, int [N]: the exact value of `field`, or a group of its own where missing."""
        codes, table = self._field_codes(field, fold=False)
        return np.where(codes >= 0, codes, len(table) + np.arange(self._n))

    def _blocks(self, queries: np.ndarray, mask: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Scores [Q, m] and row numbers [m] of successive chunks of allowed rows."""
        vecs, step = self._buf[: self._n], self.chunk_rows
        if mask is not None and mask.sum() < _GATHER_BELOW * self._n:  # selective filter: score only its rows
            allowed = np.flatnonzero(mask)
            for a in range(0, len(allowed), step):
                rows = allowed[a : a + step]
                yield queries @ vecs[rows].astype(np.float32, copy=False).T, rows
            return
        for a in range(0, self._n, step):
            chunk = vecs[a : a + step].astype(np.float32, copy=False)  # float16: one chunk cast at a time
            scores, rows = queries @ chunk.T, np.arange(a, min(a + step, self._n))
            if mask is not None:
                keep = mask[a : a + step]
                scores, rows = scores[:, keep], rows[keep]
            yield scores, rows

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        order = sorted(zip(scores.tolist(), rows.tolist()), key=lambda t: (-t[0], self._keys[t[1]]))
        return [Hit(self._keys[r], s, dict(self._meta[r])) for s, r in order]


def _as_keys(keys: Collection[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)  # one key, not its characters


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


def _read_json(path: Path, kind: type) -> object:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(value, kind):
        raise ValueError(f"{path}: holds a {type(value).__name__}, expected a {kind.__name__}")
    return value
