"""Resuming a workdir's run with another config fails with the keys that differ, unless they
are listed in --config.resume_overrides (or never change what is computed); float16 is refused."""

import json
import os

import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import models
from auxskd_jax.config import ConfigError


def _config(**changes):
  c = config_lib.base_config()
  for key, value in changes.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def _run_dir(tmp_path, config):
  workdir = str(tmp_path / "run")
  config_lib.save_config(config, workdir)
  os.makedirs(os.path.join(workdir, "checkpoints", "100"))
  return workdir


def test_changed_config_is_refused_with_the_keys(tmp_path):
  workdir = _run_dir(tmp_path, _config())
  config_lib.check_resume(_config(), workdir)  # same config: resumes
  changed = _config(**{"train.num_steps": 2000, "model.width": 32, "train.batch_size": 60})
  with pytest.raises(ConfigError) as e:
    config_lib.check_resume(changed, workdir)
  message = str(e.value)
  assert "model.width: 64 -> 32" in message and "train.num_steps: -1 -> 2000" in message
  assert "resume_overrides=model.width,train.batch_size,train.num_steps" in message
  with pytest.raises(ConfigError, match="model.width"):  # listing some keys is not enough
    config_lib.check_resume(changed, workdir, allow=["train.num_steps", "train.batch_size"])
  config_lib.check_resume(changed, workdir, allow=["train", "model.width"])  # a section too
  changed.resume_overrides = "train.num_steps,train.batch_size,model.width"
  config_lib.check_resume(changed, workdir)


def test_free_keys_fresh_workdirs_and_bad_override_names(tmp_path):
  workdir = _run_dir(tmp_path, _config())
  config_lib.check_resume(_config(**{"data.workers": 8, "train.log_every": 1,
                                     "data.data_dir": "/elsewhere"}), workdir)
  fresh = str(tmp_path / "fresh")  # a config.json without checkpoints: nothing to resume
  config_lib.save_config(_config(), fresh)
  config_lib.check_resume(_config(**{"model.width": 8}), fresh)
  c = _config()
  c.resume_overrides = "train.numsteps"
  with pytest.raises(ConfigError, match="resume_overrides.*train.numsteps"):
    config_lib.resume_overrides(c)


def test_save_config_is_atomic_json(tmp_path):
  path = config_lib.save_config(_config(), str(tmp_path))
  assert json.load(open(path))["model"]["width"] == 64
  assert os.listdir(tmp_path) == ["config.json"]


def test_float16_is_refused():
  with pytest.raises(ConfigError, match="model.dtype.*bfloat16"):
    models.validate(_config(**{"model.dtype": "float16"}))
  models.validate(_config(**{"model.dtype": "bfloat16"}))
