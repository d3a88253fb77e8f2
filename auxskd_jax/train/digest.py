"""Content digests of what a checkpoint holds, so that a restore can tell intact data from
damaged data (a truncated or bit-flipped file that orbax still reads without an error).

A digest covers an array's dtype, shape and bytes. SHA-256 is used: it is in the standard
library, and on CPUs with SHA extensions (x86 since ~2017, ARMv8) it hashes faster than
blake2b (measured in BENCHMARKS.md, "Checkpoint digests"). hashlib releases the GIL on large
buffers, so the leaves of a tree are hashed in parallel threads.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

ALGORITHM = "sha256"


def array_digest(x: Any) -> str:
  """The hex digest of one array: dtype, shape and raw bytes (C order)."""
  a = np.ascontiguousarray(np.asarray(x))
  h = hashlib.new(ALGORITHM)
  h.update(f"{a.dtype.name}{list(a.shape)}".encode())
  h.update(a.reshape(-1).view(np.uint8))
  return h.hexdigest()


def tree_digests(tree: Any, *, workers: int | None = None) -> dict[str, str]:
  """`{path: digest}` for every array leaf of `tree` (paths as `jax.tree_util.keystr`)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  names = [jax.tree_util.keystr(path) for path, _ in leaves]
  workers = workers or min(8, os.cpu_count() or 1)
  if workers <= 1 or len(leaves) < 2:
    values = [array_digest(x) for _, x in leaves]
  else:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      values = list(pool.map(array_digest, [x for _, x in leaves]))
  return dict(zip(names, values))


def json_digest(obj: Any) -> str:
  """The hex digest of a JSON-able value, in canonical form (sorted keys)."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
  return hashlib.new(ALGORITHM, text.encode()).hexdigest()


def first_mismatch(expected: dict[str, str], actual: dict[str, str]) -> str | None:
  """None when the two digest maps agree; else a short phrase naming what differs."""
  missing = sorted(set(expected) - set(actual))
  extra = sorted(set(actual) - set(expected))
  wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
  if wrong:
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return f"array {wrong[0]} does not match its digest{more}"
  if missing:
    return f"array {missing[0]} is missing"
  if extra:
    return f"array {extra[0]} has no digest"
  return None
