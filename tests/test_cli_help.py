"""The command line explains itself: --help exits 0 listing every shipped config, every task and
the main flags; --show_config prints the resolved config with defaults and help, and runs and
writes nothing. One cheap subprocess each (no JAX work), from a directory that is not the
repository, so shipped configs are found by name."""

import os
import subprocess
import sys

import pytest

from auxskd_jax import cli_help, tasks

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(cwd, *args):
  env = {**os.environ, "PYTHONPATH": _ROOT}
  return subprocess.run([sys.executable, os.path.join(_ROOT, "main.py"), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=120)


def test_help_lists_configs_tasks_and_flags(tmp_path):
  out = _main(tmp_path, "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout
  configs = cli_help.shipped_configs()
  assert {"demo", "auxskd_r21d_k100", "vspp_r21d_k100", "retrieval_r21d_ucf101"} <= set(configs)
  for name, purpose in configs.items():  # each with its one-line purpose
    assert f"  {name} " in text and purpose.split()[0] in text, name
  for task in tasks.names():
    assert f"\n  {task} " in text, task
  for flag in ("--config=NAME|PATH", "--config.KEY=VALUE", "--workdir=DIR", "--show_config",
               "--verbose"):
    assert flag in text
  assert "default: 'None'" not in text and "Traceback" not in out.stderr
  assert os.listdir(tmp_path) == []


def test_show_config_prints_keys_defaults_and_help_and_does_nothing(tmp_path):
  out = _main(tmp_path, "--config=vspp_r21d_k100", "--config.train.num_steps=7",
              "--workdir=run", "--show_config")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("# resolved config of ") and "vspp_r21d_k100.py" in lines[0]
  by_key, key = {}, None  # key -> its line with the help's continuation lines
  for line in lines[1:]:
    if line.startswith(" ") and key is not None:
      by_key[key] += " " + line.strip().lstrip("# ")
    else:
      key = line.split(" = ")[0]
      by_key[key] = line
  assert 'task = "vspp"' in by_key["task"]
  assert "train.num_steps = 7  (default -1)" in by_key["train.num_steps"]  # flag vs the file
  assert "#" in by_key["model.name"] and "r21d_10" in by_key["model.name"]
  assert "Weights & Biases" in by_key["logging.wandb"]  # the key's help string
  for key in ("clip.clip_len", "optim.learning_rate", "data.data_dir", "eval.feature_layer"):
    assert key in by_key, key
  assert os.listdir(tmp_path) == []  # no workdir, no runs/, no config.json
  assert "task=" not in out.stderr  # the task never started


def _config_flag_error(arg: str) -> str:
  """What absl raises for `--config=<arg>` (a fresh flag set, as main.py defines it)."""
  from absl import flags
  from ml_collections import config_flags

  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  with pytest.raises(flags.Error) as e:
    values(["main.py", f"--config={arg}"])
  return str(e.value)


def test_a_config_file_that_raises_is_one_line(tmp_path):
  """A bad config variant (paper_k100.py:bogus) or a get_config() that raises: the exception in
  one line, not absl's 'Error whilst parsing config file: ...'."""
  from auxskd_jax import cli

  assert cli._config_file_error(_config_flag_error("configs/paper_k100.py:bogus")) == (
      "--config=configs/paper_k100.py:bogus: choose one of vspp, vcop, pace, rspnet.")
  path = tmp_path / "mine.py"
  path.write_text("def get_config():\n  raise ValueError('set data.name first')\n")
  assert cli._config_file_error(_config_flag_error(str(path))) == (
      f"--config={path}: its get_config() raised ValueError: set data.name first "
      f"(at {path}:2).")
  assert cli._config_file_error("flag --config.train.num_steps=x: invalid literal") == ""
