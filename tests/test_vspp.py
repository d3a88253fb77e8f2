"""VSPP: a step's losses and metrics, and initialisation from an auxSKD checkpoint."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from auxskd_jax.methods import auxskd, vspp
from auxskd_jax.train import checkpoint as ckpt_lib
from auxskd_jax import weights

import tiny

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(_ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.width = 8
  config.model.embed_dim = 16
  config.model.predictor_hidden = 32
  config.clip.clip_len = 8
  config.clip.crop_size = 16
  config.train.batch_size = 4
  config.train.init_from = ""
  return config


def _auxskd_checkpoint(workdir, model_name="r3d_10"):
  config = _load("auxskd_r21d_k100")
  config.model.name = model_name
  config.auxskd.queue_size = 12
  method = auxskd.AuxSKD(config)
  state, _ = tiny.state_and_step(method, config, steps_per_epoch=2, total_steps=4, seed=5)
  manager = ckpt_lib.make_manager(workdir)
  ckpt_lib.save(manager, 0, state, None)
  manager.wait_until_finished()
  manager.close()
  return state


def test_init_from_auxskd_checkpoint_loads_encoder(tmp_path):
  # R3D-10 (full 3-D convs, `temporal_spatial_conv`): loading is by layer name whatever the
  # encoder, and it initialises in half R(2+1)D's compile time.
  aux = _auxskd_checkpoint(str(tmp_path / "aux"))
  config = _load("vspp_r21d_k100")
  config.model.name = "r3d_10"
  config.train.init_from = str(tmp_path / "aux")
  method = vspp.VSPP(config)
  state, _ = tiny.state_and_step(method, config, steps_per_epoch=2, total_steps=4)
  report = method.init_report
  assert "params/conv1/temporal_spatial_conv/kernel" in report.loaded
  assert "batch_stats/conv2/block1/bn1/mean" in report.loaded
  assert any(s.startswith("params/linear/kernel") for s in report.shape_mismatch)
  assert "params/linear_segment/kernel" in report.missing
  conv1 = "temporal_spatial_conv"
  np.testing.assert_array_equal(state.params["encoder"]["conv1"][conv1]["kernel"],
                                aux.params["encoder"]["conv1"][conv1]["kernel"])
  assert state.params["encoder"]["linear"]["kernel"].shape == (64, 4)
  assert "conv1/temporal_spatial_conv" in report.summary(verbose=True)  # loaded layers are listed
  assert len(report.summary().splitlines()) == 1  # without --verbose: one line


def test_init_from_other_encoder_names_layers(tmp_path):
  _auxskd_checkpoint(str(tmp_path / "aux"), model_name="c3d")
  config = _load("vspp_r21d_k100")
  target = vspp.VSPP(config)
  from auxskd_jax.train import encoder as encoder_lib

  variables = encoder_lib.init_variables(target.model, jax.random.PRNGKey(0),
                                         encoder_lib.dummy_clip(config))
  with pytest.raises(ValueError, match="conv1/spatial_conv"):
    weights.load_encoder(str(tmp_path / "aux"), variables, strict=False)
  with pytest.raises(FileNotFoundError, match="init_from"):
    weights.load_encoder(str(tmp_path / "nothing"), variables, strict=False)


def test_vspp_step_metrics():
  config = _load("vspp_r21d_k100")
  config.model.name = "r3d_10"  # the method's losses are tested: R3D compiles fastest
  method = vspp.VSPP(config)
  state, train_step = tiny.state_and_step(method, config, steps_per_epoch=2, total_steps=4)
  rng = np.random.default_rng(0)
  from auxskd_jax import ops

  w = ops.window_len("vspp", config)
  batch = {"windows": rng.integers(0, 256, (2, 2, 1, w, 20, 24, 3), dtype=np.uint8)}
  rep = tiny.host_replicas(state, 2)
  step = jax.pmap(train_step, axis_name="batch", devices=jax.devices()[:2])
  rep, metrics = step(rep, batch, tiny.host_replicas(jax.random.PRNGKey(1), 2))
  m = jax.tree.map(lambda x: float(x[0]), jax.device_get(metrics))
  assert np.isfinite(m["loss"])
  np.testing.assert_allclose(m["loss"], m["loss_speed"] + m["loss_segment"], rtol=1e-5)
  assert m["loss_speed"] > 0.5 and m["loss_segment"] > 0.5  # near log(4) at init
  assert 0.0 <= m["accuracy_speed"] <= 1.0 and 0.0 <= m["accuracy_segment"] <= 1.0
  assert int(jax.device_get(rep.step)[0]) == 1
