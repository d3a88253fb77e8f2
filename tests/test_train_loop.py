"""The shared loop end to end through main.py: auxSKD killed with SIGKILL and resumed ends
bitwise-equal to an uninterrupted run; VSPP then starts from the auxSKD checkpoint."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from auxskd_jax.train import checkpoint as ckpt_lib

import multiproc

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.width=8", "--config.model.embed_dim=16",
        "--config.model.predictor_hidden=32", "--config.clip.clip_len=8",
        "--config.clip.crop_size=16", "--config.train.batch_size=4",
        "--config.train.log_every=2", "--config.augment.jitter_prob=0.5"]


def _cmd(config, data, workdir, *extra):
  data_dir, name = data
  return [sys.executable, os.path.join(_ROOT, "main.py"), f"--config={config}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.data.name={name}", *TINY, *extra]


AUX = ["--config.auxskd.queue_size=12", "--config.train.num_steps=12",
       "--config.train.checkpoint_every=3"]


def _final(workdir):
  return ckpt_lib.restore_variables(workdir)


@pytest.mark.slow
def test_kill_resume_bitwise_then_vspp_from_auxskd(tiny_prepared, tmp_path):
  cfg = os.path.join(_ROOT, "configs", "auxskd_r21d_k100.py")
  env = dict(os.environ)
  full = str(tmp_path / "full")
  subprocess.run(_cmd(cfg, tiny_prepared, full, *AUX), check=True, cwd=_ROOT, env=env,
                 capture_output=True, timeout=900)
  assert json.load(open(os.path.join(full, "config.json")))["task"] == "auxskd"
  rows = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
  assert all(np.isfinite(r["loss"]) and r["clips_per_sec"] > 0 for r in rows)

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_cmd(cfg, tiny_prepared, killed, *AUX), cwd=_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = os.path.join(ckpt_lib.checkpoint_dir(killed), "3")
  still_running = multiproc.kill_once_exists(proc, first, timeout=900)
  assert still_running, "the run ended before it could be killed mid-training"
  subprocess.run(_cmd(cfg, tiny_prepared, killed, *AUX), check=True, cwd=_ROOT, env=env,
                 capture_output=True, timeout=900)
  a, b = _final(full), _final(killed)
  assert int(a["step"]) == int(b["step"]) == 12
  for key in ("params", "batch_stats", "extras", "opt_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  vspp_dir = str(tmp_path / "vspp")
  vcfg = os.path.join(_ROOT, "configs", "vspp_r21d_k100.py")
  out = subprocess.run(_cmd(vcfg, tiny_prepared, vspp_dir, f"--config.train.init_from={full}",
                            "--config.train.num_steps=2", "--verbose"),
                       cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "loaded layers: " in out.stderr and "conv1/spatial_conv" in out.stderr
  rows = [json.loads(l) for l in open(os.path.join(vspp_dir, "metrics.jsonl"))]
  assert {"accuracy_speed", "accuracy_segment"} <= set(rows[-1])
