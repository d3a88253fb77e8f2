"""Tiny versions of the real configs for method tests: the method is what is tested, so the
encoder is a width-8 R3D-10 (the quickest to compile on XLA:CPU) on 8-frame 16x16 clips."""

import importlib.util
import os

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str) -> ml_collections.ConfigDict:
  """`get_config()` of `configs/<name>.py`."""
  spec = importlib.util.spec_from_file_location(
      f"{name}_cfg", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(name: str) -> ml_collections.ConfigDict:
  config = load_config(name)
  config.model.width = 8
  config.model.name = "r3d_10"
  config.clip.clip_len = 8
  config.clip.crop_size = 16
  config.train.batch_size = 8
  config.train.init_from = ""
  config.optim.learning_rate = 0.05
  return config


def state_and_step(method, config: ml_collections.ConfigDict, *, steps_per_epoch: int,
                   total_steps: int, seed: int = 0, make_clips=None):
  """(initial state, pure step) as `train.loop.fit` builds them: the optimizer and schedule
  from the config, then the method's state; `make_clips` replaces the clip recipe (tests pass
  deterministic clips). pmap the step over axis 'batch'."""
  import jax

  from auxskd_jax.train import optim
  from auxskd_jax.train import step as step_lib

  tx, schedule = optim.make_optimizer(config, steps_per_epoch, total_steps)
  state = method.init_state(config, jax.random.PRNGKey(seed), tx, steps_per_epoch)
  return state, step_lib.make_train_step(method, schedule, make_clips=make_clips)


def host_replicas(tree, n: int):
  """`n` stacked copies of every leaf, as host arrays for a pmapped step: `jnp.stack` or
  indexing device arrays would compile a small program per leaf shape (~20 a state)."""
  import jax
  import numpy as np

  return jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), tree)
