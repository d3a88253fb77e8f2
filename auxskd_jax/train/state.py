"""The training state every method shares.

The encoder (with its heads) always sits under `params['encoder']` / `batch_stats['encoder']`
so that any method's checkpoint can initialise any other method's encoder. Method-specific
parts that are not trained by the optimizer (auxSKD's teacher, queue and queue pointer) live in
`extras`, so one checkpoint format holds every method.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything needed to continue a run exactly (the RNG is derived from `step`)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extras: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params: Any, batch_stats: Any, tx: optax.GradientTransformation,
             extras: Any = None) -> "TrainState":
    # `tx.init` under one jit: run eagerly it compiles one small program per leaf shape
    # (~20 for R(2+1)D), a second or more of every launch on XLA:CPU.
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=jax.jit(tx.init)(params), extras={} if extras is None else extras,
               tx=tx)

  def apply_gradients(self, grads: Any, **changes: Any) -> "TrainState":
    """One optimizer update; `changes` replaces other fields (e.g. new batch_stats)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


def to_checkpoint(state: TrainState) -> dict[str, Any]:
  """The state as a plain nested dict of arrays (what orbax writes)."""
  return flax.serialization.to_state_dict(
      {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
       "opt_state": state.opt_state, "extras": state.extras})


def from_checkpoint(target: TrainState, restored: dict[str, Any]) -> TrainState:
  """Fills `target`'s structure (optimizer tuples included) with restored arrays."""
  tree = {"step": target.step, "params": target.params, "batch_stats": target.batch_stats,
          "opt_state": target.opt_state, "extras": target.extras}
  tree = flax.serialization.from_state_dict(tree, restored)
  # device_put, not jnp.asarray: should a leaf come back as a numpy array, jnp.asarray would
  # compile a small program for its shape (13 ms each on a 2-core CPU); a transfer compiles
  # nothing.
  return target.replace(**{k: jax.device_put(v) for k, v in tree.items()})
