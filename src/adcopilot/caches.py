"""Caches of encoded images bounded twice: by their number of entries and by the bytes their arrays hold.

A cached reference's encoding can grow after it is stored: the scores that read the reference's flipped and
turned views and its self-distance make them on first use and keep them with it (about 4.4 MB more at 256 px,
beside about 2.4 MB for the image and its comparison inputs). A bound on the number of entries alone then no
longer bounds the memory, so the bytes are counted over every entry as it is when a new one is stored, and the
oldest entries are dropped until both bounds hold (the newest is always kept).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

#: Bytes the inspection core's reference cache may hold: about what its 256 entries held before the
#: one-reference score kept each reference's views (2.4 MB an entry at 256 px).
REFERENCE_CACHE_BYTES = 640 * 2**20


def footprint(value: Any, seen: set[int] | None = None) -> int:
    """Bytes held by the arrays and tensors inside ``value`` (arrays, tensors, dataclasses, dicts, lists and
    tuples, nested), each object counted once however often it is referred to; other objects count nothing."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return int(value.element_size() * value.nelement())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(footprint(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(footprint(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(footprint(v, seen) for v in value)
    return 0


def put_bounded(cache: OrderedDict[str, Any], key: str, value: Any, entries: int, max_bytes: int | None) -> int:
    """Store ``value`` as the newest entry of ``cache``, then drop the oldest while there are more than
    ``entries`` or they hold more than ``max_bytes`` (None: no byte bound); the number dropped."""
    cache[key] = value
    cache.move_to_end(key)
    dropped = 0
    while len(cache) > max(entries, 1):
        cache.popitem(last=False)
        dropped += 1
    if max_bytes is None:
        return dropped
    sizes = [footprint(v) for v in cache.values()]  # oldest first
    total = sum(sizes)
    for size in sizes[:-1]:
        if total <= max_bytes:
            break
        cache.popitem(last=False)
        total -= size
        dropped += 1
    return dropped
