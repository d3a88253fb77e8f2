"""Moving host trees onto this process's devices in the layout `jax.pmap` expects.

The one place that puts data on devices: the training state (`replicate` / `unreplicate`) and
host batches (`shard_batch`, `prefetch_to_devices`). In a multi-process run every function here
works on the LOCAL devices only: each process feeds its own slice of the global batch.
`jax.device_put_replicated` / `device_put_sharded` are gone from newer jax, so both are built
from `jax.device_put` and a pmapped identity.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import jax
import numpy as np

# The pmap axis name of every step (methods, fine-tuning); `replicate` must use the same one.
AXIS = "batch"


def _local_sharding() -> jax.sharding.Sharding:
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any, axis_name: str = AXIS) -> Any:
  """One copy of every leaf per local device, stacked on a new leading axis.

  Placed by a pmapped identity over the step's own axis name, so the arrays carry exactly the
  sharding the step's outputs have (it differs between jax versions). Without the axis name the
  state fed back from the first step looks new to pmap and the step is traced and compiled twice.
  """
  n = jax.local_device_count()
  stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), tree)
  return jax.pmap(lambda x: x, axis_name=axis_name)(stacked)


def _first_copy(x: Any) -> np.ndarray:
  """`x[0]` on the host, copied from the shard that holds it: indexing a device array compiles
  a gather (and a broadcast) per leaf shape, dozens of small compiles per state. A copy, not a
  view: on a CPU a view could share the buffer that the next step donates."""
  shards = getattr(x, "addressable_shards", None)
  if shards and getattr(x, "ndim", 0) > 0:
    for shard in shards:
      first = shard.index[0] if shard.index else slice(None)
      if isinstance(first, slice) and (first.start or 0) == 0 and \
          shard.data.shape[:1] == (1,) and shard.data.shape[1:] == x.shape[1:]:
        return np.array(shard.data)[0]
  return np.asarray(jax.device_get(x[0]))


def unreplicate(tree: Any) -> Any:
  """Device 0's copy, on the host (replicas are kept identical by the steps)."""
  return jax.tree.map(_first_copy, tree)


def shard_for_devices(batch: Any, n_local_devices: int) -> Any:
  """Host-side reshape of every leaf's batch axis B to `[n_local_devices, B // n, ...]`."""

  def split(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[0] % n_local_devices:
      raise ValueError(f"a host batch of {x.shape[0]} does not split over {n_local_devices} "
                       "local devices; make the per-process batch size a multiple of the "
                       "local device count.")
    return x.reshape((n_local_devices, x.shape[0] // n_local_devices) + x.shape[1:])

  return jax.tree.map(split, batch)


def shard_batch(batch: Any) -> Any:
  """Splits a host batch `[B, ...]` into `[n_local_devices, B // n, ...]` on the local devices.

  `jax.device_put` is asynchronous: the copy overlaps whatever the devices are running.
  """
  sharding = _local_sharding()
  split = shard_for_devices(batch, jax.local_device_count())
  return jax.tree.map(lambda x: jax.device_put(x, sharding), split)


def prefetch_to_devices(iterator: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Yields `shard_batch(b)` for each host batch, keeping `size` transfers in flight."""
  queue: collections.deque = collections.deque()
  it = iter(iterator)
  for batch in it:
    queue.append(shard_batch(batch))
    if len(queue) >= max(1, size):
      break
  while queue:
    yield queue.popleft()
    for batch in it:
      queue.append(shard_batch(batch))
      break
