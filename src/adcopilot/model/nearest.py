"""Nearest-neighbour search of query patches in a product memory's bank of normal patches.

The memory's anomaly value of a query patch is its cosine distance to the nearest bank patch, so
each inspection asks, for N = (S/8)^2 query patches, the largest inner product with M unit-norm
bank patches. Two ways to answer:

* **exact**: a matrix product in blocks of bank rows (a (N, 4096) block at a time instead of one
  (N, M) product: the same result, a quarter less time on one core at M = 32,768, and memory that
  does not grow with M). Its cost grows with M.
* **approximate** (FAISS, ``pip install 'adcopilot[faiss]'``): an inverted-file index (IVF-Flat,
  L2 on the unit vectors, ``M / 128`` lists found by k-means, ``nprobe`` = 8 of them searched per
  query). A query then meets the list centres and about ``8 * 128`` bank patches, not all M. The
  neighbour it finds is scored by its exact inner product, so an approximate distance is never
  below the exact one. The index is built on the first search (k-means on the bank, about a second
  for 32,768 patches on one core) and kept.

``PatchIndex(bank)`` chooses the approximate search when FAISS is installed and the bank holds at
least :data:`APPROXIMATE_FROM` patches (below that the exact search was as fast; the figures, with
the recall of the exact nearest distance, are in benchmarks/RESULTS.md), else the exact search.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

log = logging.getLogger(__name__)

try:
    import faiss
except ImportError:  # optional: the exact search serves without it
    faiss = None

#: Banks of at least this many patches are searched approximately when FAISS is installed.
APPROXIMATE_FROM = 16384
#: Bank patches per inverted list, and lists searched per query.
LIST_SIZE, NPROBE = 128, 8
#: Bank rows per block of the exact search.
BLOCK = 4096
MODES = ("auto", "exact", "approximate")


def exact_max_similarity(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """queries (N, C), bank (M, C) -> (N,) the largest inner product of each query with the bank."""
    best = (queries @ bank[:BLOCK].T).max(dim=1).values
    for i in range(BLOCK, bank.shape[0], BLOCK):
        best = torch.maximum(best, (queries @ bank[i : i + BLOCK].T).max(dim=1).values)
    return best


class PatchIndex:
    """The largest inner product of query patches with a fixed bank (M, C) of unit-norm patches."""

    def __init__(self, bank: torch.Tensor, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; one of {', '.join(MODES)}")
        if mode == "approximate" and faiss is None:
            raise ImportError("the approximate search needs faiss: pip install 'adcopilot[faiss]'")
        self.bank = bank.float().contiguous()
        self.approximate = mode == "approximate" or (
            mode == "auto" and faiss is not None and self.bank.shape[0] >= APPROXIMATE_FROM
        )
        self._index = None

    def _built(self):
        if self._index is None:
            t = time.perf_counter()
            m, c = self.bank.shape
            lists = max(1, m // LIST_SIZE)
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(c), c, lists)
            data = self.bank.numpy()
            index.train(data)  # k-means with FAISS's fixed seed: the same lists every time
            index.add(data)
            index.nprobe = min(NPROBE, lists)
            self._index = index
            log.info("memory index: %d patches in %d lists, built in %.2f s", m, lists, time.perf_counter() - t)
        return self._index

    def max_similarity(self, queries: torch.Tensor) -> torch.Tensor:
        """queries (N, C) -> (N,) the largest inner product with the bank (approximate: a lower bound)."""
        if not self.approximate:
            return exact_max_similarity(queries, self.bank)
        index = self._built()
        faiss.omp_set_num_threads(torch.get_num_threads())
        q = np.ascontiguousarray(queries.float().numpy())
        _, ids = index.search(q, 1)  # (N, 1); -1 where the searched lists were empty
        ids = torch.from_numpy(ids[:, 0]).clamp_min(0)
        return (queries * self.bank[ids]).sum(dim=1)  # the exact inner product with the neighbour found
