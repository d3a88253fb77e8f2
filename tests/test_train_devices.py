"""The one device module: a replicated state fed back into a pmapped step does not retrace it,
and host batches land on the local devices in pmap's layout."""

import jax
import numpy as np

from auxskd_jax.train import devices


def test_replicated_state_fed_back_traces_the_step_once():
  traces = []

  def step(state, batch):
    traces.append(1)  # a Python side effect runs once per trace
    mean = jax.lax.pmean(batch["x"].mean(), devices.AXIS)
    return {"w": state["w"] + mean, "step": state["step"] + 1}, mean

  p_step = jax.pmap(step, axis_name=devices.AXIS, donate_argnums=(0,))
  state = devices.replicate({"w": np.zeros(3, np.float32), "step": np.int32(0)})
  for _ in range(3):
    batch = devices.shard_batch({"x": np.ones((2 * jax.local_device_count(), 2), np.float32)})
    state, _ = p_step(state, batch)
  assert len(traces) == 1
  np.testing.assert_allclose(devices.unreplicate(state)["w"], np.full(3, 3.0))


def test_shard_batch_splits_over_local_devices():
  n = jax.local_device_count()
  out = devices.shard_batch({"x": np.arange(2 * n * 3).reshape(2 * n, 3)})
  assert out["x"].shape == (n, 2, 3)
  np.testing.assert_array_equal(np.asarray(out["x"]).reshape(2 * n, 3),
                                np.arange(2 * n * 3).reshape(2 * n, 3))
  batches = list(devices.prefetch_to_devices(iter([{"x": np.zeros((n, 1))}] * 3), size=2))
  assert len(batches) == 3 and batches[0]["x"].shape == (n, 1, 1)
