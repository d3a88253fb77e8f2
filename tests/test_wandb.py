"""Weights & Biases beside TensorBoard (`logging.wandb=True`): without wandb installed a config
asking for it fails at validation with one line naming the extra; with it, an offline run holds
the same scalars as metrics.jsonl and the resolved config, and a resumed workdir continues
the same W&B run. The wandb tests skip when wandb is not installed (it is not in the test
extra: `pip install 'auxskd-jax[wandb]'`)."""

import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys
import types

import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import tasks
from auxskd_jax.errors import ConfigError, UserError
from auxskd_jax.train import logging as train_logging
from auxskd_jax.train.logging import MetricLogger
from tests.tiny import tiny_config

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wandb_without_the_extra_fails_at_validation(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees without it
  config = tiny_config("vspp_r21d_k100")
  assert train_logging.make_trackers(config, "/nonexistent") == []  # off by default
  train_logging.validate(config)
  config.logging.wandb = True
  with pytest.raises(ConfigError) as e:
    tasks.get("vspp").validate(config)  # the first check: before the (absent) dataset's
  message = str(e.value)
  assert "\n" not in message and "--config.logging.wandb" in message
  assert "pip install 'auxskd-jax[wandb]'" in message


def test_a_run_wandb_cannot_start_is_one_line(monkeypatch, tmp_path):
  def refuse(**kwargs):
    raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\n"
                       "more detail")

  monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=refuse))
  config = config_lib.base_config()
  config.logging.wandb = True
  with pytest.raises(UserError) as e:
    train_logging.make_trackers(config, str(tmp_path / "run"))
  message = str(e.value)
  assert "\n" not in message and "api_key not configured" in message
  assert "wandb login" in message and "WANDB_MODE=offline" in message


def _records(path: str, block: int = 32768):
  """The protobuf records of a W&B run file (a LevelDB-style log: 7-byte header ':W&B' ...,
  then per chunk crc32, length, type (1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks)."""
  from wandb.proto import wandb_internal_pb2

  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", data[:7]
  pos, chunks = 7, b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunks += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(chunks)
      chunks = b""
      yield record


def _offline_run(wandb_dir: str) -> tuple[list[dict], dict]:
  """(history rows, config) of the one offline run under `wandb_dir`."""
  files = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
  assert len(files) == 1, files
  history, config = [], {}
  for record in _records(files[0]):
    kind = record.WhichOneof("record_type")
    if kind == "history":
      history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                      for i in record.history.item})
    elif kind == "run":
      config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    elif kind == "config":
      config.update({i.key: json.loads(i.value_json) for i in record.config.update})
  return history, config


@pytest.fixture
def offline(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  wandb_dir = tmp_path / "wandb_files"
  wandb_dir.mkdir()
  for key, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(wandb_dir)),
                     ("WANDB_SILENT", "true")):
    monkeypatch.setenv(key, value)
  return str(wandb_dir)


def test_offline_run_holds_the_scalars_and_config(offline, tmp_path):
  config = config_lib.base_config()
  config.logging.wandb = True
  config.model.width = 8
  train_logging.validate(config)
  workdir = str(tmp_path / "run")
  logger = MetricLogger(workdir, total_steps=4, clips_per_step=2, progress=False,
                        trackers=train_logging.make_trackers(config, workdir))
  logger.write(1, {"loss": 2.0, "learning_rate": 0.1})
  logger.write(2, {"loss": 1.5, "learning_rate": 0.1})
  logger.write(2, {"top1": 0.25}, prefix="knn")
  logger.close()
  history, logged_config = _offline_run(offline)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  got = {(r["_step"], k): v for r in history for k, v in r.items() if not k.startswith("_")}
  for row in rows:  # every scalar of metrics.jsonl, under its TensorBoard name and step
    for key, value in row.items():
      if key not in ("step", "split"):
        assert got[(row["step"], f"{row['split']}/{key}")] == pytest.approx(value), key
  assert logged_config["model"]["width"] == 8 and logged_config["logging"]["wandb"] is True
  assert logged_config["task"] == "demo"
  run_id = open(os.path.join(workdir, train_logging.WandbWriter.ID_FILE)).read()
  assert len(glob.glob(os.path.join(offline, "wandb", f"offline-run-*-{run_id}"))) == 1
  resumed = MetricLogger(workdir, total_steps=4, clips_per_step=2, progress=False, start_step=2,
                         trackers=train_logging.make_trackers(config, workdir))
  resumed.close()  # the same W&B run id again: `wandb sync` continues one run
  assert len(glob.glob(os.path.join(offline, "wandb", f"offline-run-*-{run_id}"))) == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,  # before tiny_prepared is built
                    reason="wandb is not installed (pip install 'auxskd-jax[wandb]')")
def test_training_run_logs_to_wandb(offline, tmp_path, tiny_prepared):
  """Through main.py: the loop hands the tracker every scalar it writes (process 0)."""
  data_dir, name = tiny_prepared
  workdir = str(tmp_path / "vspp")
  out = subprocess.run(
      [sys.executable, os.path.join(_ROOT, "main.py"), "--config=configs/vspp_r21d_k100.py",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
       f"--config.data.name={name}", "--config.train.init_from=", "--config.model.width=8",
       "--config.clip.clip_len=8", "--config.clip.crop_size=16", "--config.train.batch_size=4",
       "--config.train.num_steps=2", "--config.train.log_every=1",
       "--config.logging.wandb=True", "--config.logging.wandb_name=tiny-vspp"],
      cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  history, logged_config = _offline_run(offline)
  steps = {r["_step"]: r for r in history}
  assert set(steps) == {1, 2} and "train/loss" in steps[2] and "train/clips_per_sec" in steps[2]
  assert logged_config["task"] == "vspp" and logged_config["model"]["width"] == 8
