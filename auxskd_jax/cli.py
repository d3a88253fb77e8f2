"""auxskd-jax command line: `auxskd --config=configs/X.py --workdir=DIR --config.k=v` (or
`python main.py ...`).

With no flags it runs the embedded demo (configs/demo.py) end to end on a CPU.

Order of work, so that every expected mistake fails in a second, with one line that names the
flag or file, and before anything is written: parse the flags (an unknown key or bad value);
from then on a SIGTERM exits with 42 (train/preemption.py); pick the task, check the workdir
(not a file, writable, not full), apply the runtime settings, join a multi-process job,
validate the config once (the task's checks: values, paths, the data's frames, devices, the
checkpoint to start from), check the resume rule against the workdir's config.json; only then
the workdir's lease is taken (one job per workdir, `workdir_lock`), config.json is written and
the task runs. Expected errors (ConfigError, UserError, a full disk) print one line and exit
with status 2; anything else keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from auxskd_jax import cli_help

USER_ERROR_EXIT = 2
_HELP_FLAGS = ("--help", "-h", "-help", "--helpshort", "-?")

# No default here: a default config is parsed (with the --config.* overrides) while this module
# is imported, where a bad override could only crash. `_parse_flags` adds --config=demo instead.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A shipped config's name (e.g. auxskd_r21d_k100; --help lists them) or a "
    "config file with get_config(); default: demo, the embedded demo.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and reports go; a run restarted with the same "
    "workdir resumes (with the same config, see --config.resume_overrides). "
    "Default: runs/<config file name>.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print the resolved config (every key, its value, the config "
    "file's value where a flag changed it, and its help) and exit without running.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "More detail on the console (e.g. every layer a checkpoint load copied).")


def _fail(message: str, prefix: str = "Config error") -> NoReturn:
  sys.stderr.write(f"{prefix}: {message}\n")
  sys.stderr.flush()
  sys.exit(USER_ERROR_EXIT)


def _unknown_key(argv: list[str], error: Exception) -> str:
  """One line for an override of a key the config does not have (ml_collections raises an
  AttributeError/KeyError whose text is the key, maybe with a suggestion)."""
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(..))
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  key = text.split("\n")[0].strip("\"'")
  hint = re.search(r'Did you mean "([^"]+)"', text)
  flag = next((a.split("=", 1)[0] for a in argv
               if a.lstrip("-").startswith("config.") and
               key in a.split("=", 1)[0].split(".")[1:]), f"--config...{key}")
  suggestion = f' (did you mean "{hint.group(1)}"?)' if hint else ""
  return (f"{flag}: the config has no key {key!r}{suggestion}; overrides must name keys of "
          "the config file (see its get_config()).")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors instead of tracebacks and usage dumps."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    sys.stdout.write(cli_help.render_help(_prog(argv[0]), _task_modules(), _flag_help()))
    sys.exit(0)
  expanded = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  if not any(re.match(r"^--?config(=|$)", a) for a in expanded):
    argv = [argv[0], f"--config={cli_help.DEFAULT_CONFIG}"] + list(argv[1:])
  try:  # a shipped config's name -> its file
    argv = [_resolve_config_arg(a) for a in argv]
  except cli_help.ConfigError as e:
    _fail(str(e))
  sys.argv[:] = argv  # the config flag reads its overrides from sys.argv
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # an unknown --flag, a value of the wrong type, flags out of order
    raised = _config_file_error(str(e))
    if raised:
      _fail(raised)
    lines = str(e).strip().splitlines()
    _fail(" ".join(lines[0].split()) + (" ..." if len(lines) > 1 else "")
          + " (python main.py --helpshort lists the flags).")
  except (AttributeError, KeyError) as e:  # --config.<key that does not exist>
    _fail(_unknown_key(argv, e))
  try:
    _CONFIG.value.get("task")
  except OSError:  # ml_collections defers "cannot load the config file" to the first access
    path = flags.FLAGS["config"].config_filename
    _fail(f"--config={path}: cannot load this config file (does it exist?); use one of "
          "configs/*.py.")
  return rest


def _config_file_error(message: str) -> str:
  """One line for a config file whose get_config() raised (absl reports it as a traceback):
  the exception, and the file line it came from; "" for other flag errors."""
  if "Error whilst parsing config file" not in message:
    return ""
  flag = message.split(": Error whilst parsing", 1)[0].removeprefix("flag ")
  lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
  where = [m for line in lines if (m := re.match(r'File "(.+)", line (\d+)', line))]
  exc = lines[-1]
  text = exc.partition(": ")[2]
  value = flag.partition("=")[2]
  if value and text.startswith(value + ": "):  # the message names the file already
    return f"{flag}: {text[len(value) + 2:]}"
  at = f" (at {where[-1].group(1)}:{where[-1].group(2)})" if where else ""
  return f"{flag}: its get_config() raised {exc}{at}."


def _resolve_config_arg(arg: str) -> str:
  match = re.match(r"^(--?config=)(.*)$", arg)
  return match.group(1) + cli_help.resolve_config(match.group(2)) if match else arg


def _prog(argv0: str) -> str:
  name = os.path.basename(argv0)
  return "python main.py" if name == "main.py" else name


def _task_modules() -> dict[str, str]:
  """{task: the module whose docstring says what it does}."""
  from auxskd_jax import tasks

  return {n: tasks.MODULES.get(n, f"auxskd_jax.methods.{n}") for n in tasks.names()}


def _flag_help() -> list[tuple[str, str]]:
  """(flag, help) of the flags a user needs; --helpfull lists absl's and JAX's too."""
  return [("--config=NAME|PATH", flags.FLAGS["config"].help),
          ("--config.KEY=VALUE", "Override one key of the config (--show_config lists them)."),
          ("--workdir=DIR", flags.FLAGS["workdir"].help),
          ("--show_config", flags.FLAGS["show_config"].help),
          ("--verbose", flags.FLAGS["verbose"].help),
          ("--helpfull", "Every flag, absl's and JAX's included.")]


def _default_workdir() -> str:
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name)


def _run(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags look like --config.train.num_steps=100.",
          prefix="Usage error")
  from auxskd_jax import config as config_lib
  from auxskd_jax import distributed, errors, runtime, tasks, workdir_lock
  from auxskd_jax.train import preemption
  from auxskd_jax.train.logging import quiet_libraries

  # From here on a SIGTERM (compiling, loading data) exits with 42, as the loop's does.
  preemption.install_early_sigterm()
  quiet_libraries()
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    sys.stdout.write(cli_help.show_config(config, cli_help.load_config_file(path), path))
    return
  if _VERBOSE.value:
    logging.set_verbosity(1)  # logging.vlog(1, ...) lines: per-layer checkpoint reports
  workdir = _WORKDIR.value or _default_workdir()
  try:
    task = tasks.of(config)
    if task.uses_workdir:  # a file, read-only or full: said now, not at the first write
      workdir_lock.check_writable(workdir)
      lease_settings = workdir_lock.settings(config)
    runtime.apply(task.runtime_config(config) if task.runtime_config else config)
    if "distributed" in config:  # configs without the section (prepare) run single-process
      distributed.initialize(config)
      distributed.setup_logging()
      distributed.check_same_config(config, {"workdir": os.path.abspath(workdir)})
    task.validate(config)
    # Every process reads the workdir (a shared filesystem, as checkpoints need), so every
    # process fails alike.
    tasks.check_workdir(task, config, workdir)
  except config_lib.UserError as e:
    _fail(str(e))
  # One job per workdir: every process calls hold (process 0 takes the lease, the others check
  # that they joined the job holding it); a second run is refused here, in one line.
  lease = (workdir_lock.hold(workdir, **lease_settings) if task.uses_workdir
           else contextlib.nullcontext())
  try:
    with lease:
      tasks.claim_workdir(task, config, workdir)
      logging.info("task=%s workdir=%s", config.task, workdir)
      task.run(config, workdir)
  except config_lib.UserError as e:  # the lease, or found only once the run read its data
    _fail(" ".join(str(e).split()), prefix="Error")
  except preemption.Preempted as e:  # SIGTERM / Ctrl-C: a checkpoint was saved at e.step
    logging.warning("%s", e)
    sys.exit(e.exit_code)
  except Exception as e:  # pylint: disable=broad-except  (after Preempted, an Exception too)
    cause = errors.disk_full_cause(e)  # a log or report write met the full disk first
    if cause is None:
      raise
    _fail(f"the disk of --workdir={workdir} is full ({cause}); free some space and start the "
          "same command again: it resumes from the last verified checkpoint.", prefix="Error")


def main() -> None:
  """The console entry point (`auxskd`, `python main.py`)."""
  try:
    app.run(_run, flags_parser=_parse_flags)
  except KeyboardInterrupt:  # Ctrl-C before preemption's early handler was installed
    # A training loop turns Ctrl-C into a save and Preempted; the early handler exits at once
    # outside one (train/preemption.py). Before it there is nothing to save and no lease.
    from auxskd_jax.train import preemption

    sys.stderr.write(preemption.INTERRUPTED_MESSAGE + "\n")
    sys.exit(preemption.INTERRUPTED_EXIT_CODE)
