"""Every expected user error exits with status 2 and a few lines naming the flag or file, before
anything is written into the workdir; unexpected errors keep their traceback.

Most cases run the command line in this process (`cli._parse_flags`, then `cli._run`, which is
what `main.py`'s `app.run` calls): its exit status and stderr are the contract. Two cases, one
failing while the flags are parsed and one in the task's validation after every import, launch
`main.py` itself, so what a fresh interpreter prints (import warnings, absl's set-up) is checked
against the same few-lines rule.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from auxskd_jax import config as config_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VSPP = "--config=configs/vspp_r21d_k100.py"
TINY = ["--config.train.init_from=", "--config.model.width=8", "--config.clip.clip_len=8",
        "--config.clip.crop_size=16", "--config.train.batch_size=4"]


def _check(code, err, match):
  lines = err.strip().splitlines()
  assert code == 2, err[-3000:]
  assert len(lines) <= 5 and "Traceback" not in err, err[-3000:]
  assert match in err, err
  return err


def _fails_cleanly_subprocess(workdir, *args, match):
  """`python main.py --workdir=... ARGS` in a fresh interpreter."""
  out = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=_ROOT,
                       capture_output=True, text=True, timeout=300)
  return _check(out.returncode, out.stderr, match)


@pytest.fixture
def fails_cleanly(monkeypatch, capsys):
  """`fails_cleanly(workdir, *args, match=...)`: main.py's command line in this process (from
  the repo root, as main.py is run); the stderr it wrote. Only `runtime.apply` is left out, so
  this process keeps its JAX settings (the subprocess cases run it); an unexpected exception
  propagates (it would be a traceback)."""
  from absl import flags

  from auxskd_jax import cli, runtime

  monkeypatch.setattr(runtime, "apply", lambda config: None)
  monkeypatch.chdir(_ROOT)

  def run(workdir, *args, match):
    argv = ["main.py", f"--workdir={workdir}", *args]
    monkeypatch.setattr(sys, "argv", list(argv))  # _parse_flags rewrites sys.argv in place
    old, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    capsys.readouterr()
    code = None
    try:
      cli._run(cli._parse_flags(list(argv)))
    except SystemExit as e:
      code = e.code
    finally:
      signal.set_wakeup_fd(-1)
      signal.signal(signal.SIGTERM, old)
      signal.signal(signal.SIGINT, old_int)
      flags.FLAGS.unparse_flags()
      for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)  # the override flags the config flag defined while parsing
    return _check(code, capsys.readouterr().err, match)

  return run


@pytest.mark.parametrize("args, match", [
    (["--config.bogus=1"], "--config.bogus: the config has no key 'bogus'"),
    (["--config.train.nsteps=3"], 'did you mean "num_steps"'),
    (["--config=configs/nope.py"], "--config=configs/nope.py"),
    (["--config.model.width=abc"], "--config.model.width=abc"),
    ([VSPP, "--config.train.init_from="], "--config.data.data_dir: set it"),
    ([VSPP, "--config.train.init_from=/no/such/run"], "--config.train.init_from"),
    ([VSPP, "--config.model.dtype=float16"], "bfloat16"),
])
def test_config_errors_before_any_work(tmp_path, fails_cleanly, args, match):
  workdir = tmp_path / "run"
  fails_cleanly(workdir, *args, match=match)
  assert not workdir.exists()


def test_main_py_fails_cleanly_while_parsing_flags(tmp_path):
  """The parse-time case in a fresh interpreter: status 2, a few lines, nothing written."""
  workdir = tmp_path / "run"
  _fails_cleanly_subprocess(workdir, "--config.bogus=1",
                            match="--config.bogus: the config has no key 'bogus'")
  assert not workdir.exists()


def test_missing_and_corrupt_datasets(tmp_path, tiny_prepared, fails_cleanly):
  """The corrupt shard in a fresh interpreter (main.py itself, every import of a training task
  made), the missing dataset in this process."""
  data_dir, name = tiny_prepared
  workdir = tmp_path / "run"
  (tmp_path / "empty").mkdir()
  fails_cleanly(workdir, VSPP, *TINY, f"--config.data.data_dir={tmp_path / 'empty'}",
                f"--config.data.name={name}", match="no prepared dataset")
  broken = tmp_path / "broken"
  shutil.copytree(data_dir, broken)
  shards = [os.path.join(d, f) for d, _, fs in os.walk(broken) for f in fs
            if "-train.array_record-" in f]
  with open(shards[0], "r+b") as f:  # what a full disk leaves
    f.truncate(os.path.getsize(shards[0]) // 2)
  _fails_cleanly_subprocess(workdir, VSPP, *TINY, f"--config.data.data_dir={broken}",
                            f"--config.data.name={name}", match=shards[0])
  assert not workdir.exists()


def test_checkpoint_of_another_model(tmp_path, tiny_prepared, fails_cleanly):
  torch = pytest.importorskip("torch")
  data_dir, name = tiny_prepared
  pth = str(tmp_path / "other.pth")
  torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3, 3), "fc.weight": torch.zeros(4, 8)}, pth)
  workdir = tmp_path / "run"
  fails_cleanly(workdir, VSPP, *TINY, f"--config.data.data_dir={data_dir}",
                f"--config.data.name={name}", f"--config.train.init_from={pth}",
                match="--config.train.init_from")
  assert not workdir.exists()


def test_resume_with_another_config_is_refused(tmp_path, fails_cleanly):
  """A demo workdir with finished stages, restarted with other demo settings."""
  sys.path.insert(0, _ROOT)
  from configs import demo

  workdir = tmp_path / "demo"
  path = config_lib.save_config(demo.get_config(), str(workdir))
  (workdir / "data").mkdir()
  (workdir / "data" / "stage_done.json").write_text("{}")
  before = open(path).read()
  err = fails_cleanly(workdir, "--config.demo.quick=True", "--config.seed=1",
                      match="--config.resume_overrides=demo.quick,seed")
  assert "demo.quick: false -> true" in err
  assert open(path).read() == before
  assert json.load(open(path))["seed"] == 0


def test_a_workdir_that_is_a_file(tmp_path, fails_cleanly):
  a_file = tmp_path / "run"
  a_file.write_text("not a directory")
  fails_cleanly(a_file, match=f"--workdir={a_file} is a file, not a directory")
  assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize("key, value, match", [
    ("crop_size", 48, "--config.clip.crop_size: 48 is larger than the prepared frames"),
    ("clip_len", 64, "--config.clip.clip_len: 64 frames, but the longest video"),
])
def test_a_crop_or_clip_the_prepared_data_cannot_serve(tiny_prepared, key, value, match):
  """Checked against the dataset's index (32x40 frames, 20-40 per video) by the task's
  validation, which main.py runs before anything is written."""
  from auxskd_jax import tasks
  from tests.tiny import tiny_config

  data_dir, name = tiny_prepared
  config = tiny_config("vspp_r21d_k100")
  config.data.data_dir, config.data.name = data_dir, name
  config.train.batch_size = 4
  task = tasks.get(config.task)
  task.validate(config)  # the tiny sizes fit
  config.clip[key] = value
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    task.validate(config)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("raised, code, match", [
    ("preempted", 42, None),
    ("disk_full", 2, "Error: the disk of --workdir="),
    ("other", None, None),
])
def test_cli_maps_what_a_task_raises_to_its_exit_status(tmp_path, monkeypatch, capsys, raised,
                                                       code, match):
  """In-process, a stand-in task: Preempted -> 42 (not caught as a failure), a full disk met
  by any write -> one line and 2, anything else keeps its traceback."""
  import errno
  import signal

  from absl import flags

  from auxskd_jax import cli, runtime, tasks
  from auxskd_jax.train import preemption

  def run(config, workdir):
    if raised == "preempted":
      raise preemption.Preempted(3, "SIGTERM")
    if raised == "disk_full":
      raise OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "x"))
    raise RuntimeError("a bug")

  stand_in = tasks.Task(name="demo", validate=lambda config: None, run=run)
  monkeypatch.setattr(tasks, "of", lambda config: stand_in)
  monkeypatch.setattr(runtime, "apply", lambda config: None)  # keep this process's jax config
  monkeypatch.setattr(sys, "argv", ["main.py", "--config=configs/demo.py"])
  workdir = str(tmp_path / "run")
  flags.FLAGS(["main.py", "--config=configs/demo.py", f"--workdir={workdir}"])
  old, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  try:
    if code is None:
      with pytest.raises(RuntimeError, match="a bug"):
        cli._run(["main.py"])
    else:
      with pytest.raises(SystemExit) as e:
        cli._run(["main.py"])
      assert e.value.code == code
  finally:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, old)
    signal.signal(signal.SIGINT, old_int)
    flags.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  if match:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(match) and "No space left" in lines[0], err
  assert not os.path.exists(os.path.join(workdir, "lease.json"))  # given back in every case
