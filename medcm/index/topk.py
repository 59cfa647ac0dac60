"""Running top-k selections for exact search: rows under (score descending, key ascending), or the best row per group."""

from __future__ import annotations

import numpy as np


class TopK:
    """Running top-k under the order (score descending, key ascending), fed chunk by chunk."""

    def __init__(self, keys: list[str], k: int) -> None:
        self.keys, self.k = keys, k
        self.scores, self.rows = np.empty(0, np.float32), np.empty(0, np.intp)

    def push(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """Fold in scores [m] of rows [m]."""
        scores, rows = select_top(scores, rows, self.k, self.keys)
        self.scores, self.rows = select_top(np.concatenate([self.scores, scores]),
                                            np.concatenate([self.rows, rows]), self.k, self.keys)

    def result(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores [<=k] and rows [<=k] of the k best, unordered."""
        return self.scores, self.rows  # already the k best


class GroupTop:
    """Best (score, then smallest key) row per group, fed chunk by chunk; O(groups) memory."""

    def __init__(self, keys: list[str], groups: np.ndarray, size: int) -> None:
        self.keys, self.groups = keys, groups
        self.best = np.full(size, -np.inf, np.float32)
        self.row = np.full(size, -1, np.intp)

    def push(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """Fold in scores [m] of rows [m]."""
        g = self.groups[rows]
        before = self.best[g]
        np.maximum.at(self.best, g, scores)
        win = scores == self.best[g]  # rows equal to their group's best so far
        gw, rw, improved = g[win], rows[win], scores[win] > before[win]
        self.row[gw[improved]] = rw[improved]  # one of possibly several tied rows: fixed below
        lost = self.row[gw] != rw  # exact ties (e.g. duplicated images) go to the smaller key
        for group, row in zip(gw[lost].tolist(), rw[lost].tolist()):
            if self.keys[row] < self.keys[self.row[group]]:
                self.row[group] = row

    def result(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best scores [<=k] and rows [<=k] of the k best groups, unordered."""
        found = np.flatnonzero(self.row >= 0)
        return select_top(self.best[found], self.row[found], k, self.keys)


def select_top(scores: np.ndarray, rows: np.ndarray, k: int, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The k best of scores/rows [m] under (score descending, key ascending), unordered."""
    if len(scores) <= k:
        return scores, rows
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # k-th largest score
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    if len(tied) > k - len(above):  # exact ties at the cut: the smaller keys stay
        tied = np.array(sorted(tied.tolist(), key=lambda i: keys[rows[i]])[: k - len(above)], np.intp)
    keep = np.concatenate([above, tied])
    return scores[keep], rows[keep]
