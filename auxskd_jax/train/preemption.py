"""Stopping a run cleanly when it is preempted (SIGTERM) or interrupted (Ctrl-C).

The loop runs inside a `PreemptionGuard` and asks it after every step:

    with PreemptionGuard(sync_every=config.train.log_every) as guard:
      for step in ...:
        ...train step...
        if guard.should_stop(step):
          save a checkpoint at `step`, wait until it is written
          raise Preempted(step, guard.reason)

`main.py` turns `Preempted` into exit status `PREEMPTED_EXIT_CODE` (42): "a checkpoint was
written; run the same command again to continue". Outside the guard (from the moment the flags
are parsed: validation, data loading, building and compiling the state, evaluations after
training) `install_early_sigterm` makes a SIGTERM exit with 42 at once, saving nothing (no new
step exists), so a "requeue on 42" script requeues a job stopped at any moment. A second Ctrl-C exits at once (status 130,
nothing saved). Every process gets the same answer from `should_stop` at the same step, so all
of them save the same step and stop together:

- single process: the signal's flag, checked at every step;
- several processes: a SIGTERM goes to jax's preemption service when it runs (the default once
  `jax.distributed` is initialised; it also covers notices that reach another process only) and
  `multihost_utils.reached_preemption_sync_point` names the step; SIGINT (and SIGTERM without
  the service) sets a local flag that the processes OR together every `sync_every` steps.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import types
from typing import Any

from absl import logging

# The exit status of a run that saved a checkpoint because it was asked to stop (SIGTERM,
# preemption notice, first Ctrl-C). Restarting the same command resumes from that checkpoint.
PREEMPTED_EXIT_CODE = 42
# A second Ctrl-C kills the process at once (SIGINT's default action; shells report 130).
INTERRUPTED_EXIT_CODE = 130

_REASONS = {0: "", 1: "SIGTERM", 2: "SIGINT (Ctrl-C)", 3: "preemption notice"}


_EARLY_EXIT_LOCK = threading.Lock()
_EARLY_PID: int | None = None  # the process that installed the early handler


INTERRUPTED_MESSAGE = ("Interrupted (Ctrl-C) outside a training loop, with nothing to save; "
                       "start the same command again: it resumes from what is saved.")


def _early_exit(where: str, signum: int = signal.SIGTERM) -> None:
  """Ends the process now, with nothing new to save: status 42 for SIGTERM (requeue), 130 for
  Ctrl-C. The lease (distributed's abort hooks) is given back first."""
  if os.getpid() != _EARLY_PID:  # a forked child inherited the handler: the signal's default
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  if not _EARLY_EXIT_LOCK.acquire(blocking=False):
    return  # the other path (thread or handler) is exiting already
  from auxskd_jax import distributed  # noqa: PLC0415  (top layer; only when exiting)

  for hook in list(distributed._ABORT_HOOKS):  # pylint: disable=protected-access
    try:
      hook()
    except Exception:  # pylint: disable=broad-except  (exiting anyway)
      pass
  if signum == signal.SIGINT:
    sys.stderr.write(INTERRUPTED_MESSAGE + "\n")
    code = INTERRUPTED_EXIT_CODE
  else:
    sys.stderr.write(f"SIGTERM {where}: nothing new to save; exiting with status "
                     f"{PREEMPTED_EXIT_CODE}. Start the same command again to continue (from "
                     "the last checkpoint, if any).\n")
    code = PREEMPTED_EXIT_CODE
  sys.stderr.flush()
  os._exit(code)


def _early_handler(signum: int, frame: types.FrameType | None) -> None:
  del frame
  _early_exit("outside the training loop", signum)


def _watch_wakeup(read_fd: int) -> None:
  """The C-level handler writes each signal's number here at once, even while the main thread
  is inside a long C++ call (an XLA compile) where no Python handler can run, or inside a
  garbage-collector callback, where a raised KeyboardInterrupt is ignored: exit from here when
  SIGTERM or SIGINT arrives while the early handler (not a PreemptionGuard's) is installed."""
  while True:
    try:
      data = os.read(read_fd, 64)
    except InterruptedError:
      continue
    except OSError:
      return
    if not data:
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      if signum in data and signal.getsignal(signum) is _early_handler:
        _early_exit("before or after the training loop (while compiling, loading data or "
                    "evaluating)", signum)


def install_early_sigterm() -> bool:
  """SIGTERM exits with status 42 at once (Ctrl-C: 130) until a `PreemptionGuard` takes over
  (and again after it hands back). Call from the main thread as soon as the flags are parsed; before
  `jax.distributed` starts (it then owns SIGTERM in a multi-process job and the loop stops at an
  agreed step). Returns whether it was installed."""
  global _EARLY_PID
  if threading.current_thread() is not threading.main_thread():
    return False
  _EARLY_PID = os.getpid()
  signal.signal(signal.SIGTERM, _early_handler)
  signal.signal(signal.SIGINT, _early_handler)
  try:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous != -1:  # someone else (an event loop) uses it: theirs back, the handler alone
      signal.set_wakeup_fd(previous)
      os.close(read_fd)
      os.close(write_fd)
      return True
  except (OSError, ValueError):
    return True
  threading.Thread(target=_watch_wakeup, args=(read_fd,), name="early-sigterm",
                   daemon=True).start()
  return True


class Preempted(Exception):
  """The run saved a checkpoint at `step` and stopped because it was asked to (`reason`)."""

  exit_code = PREEMPTED_EXIT_CODE

  def __init__(self, step: int, reason: str = ""):
    super().__init__(f"stopped at step {step} ({reason or 'asked to stop'}); the checkpoint at "
                     "that step resumes the run: start the same command again.")
    self.step = int(step)
    self.reason = reason


def _jax_preemption_service() -> bool:
  """Whether jax's preemption sync manager runs (multi-process, service enabled); it then owns
  SIGTERM. Private jax state, read defensively: when it moves, the guard handles SIGTERM."""
  try:
    from jax._src import distributed as jax_distributed
  except ImportError:
    return False
  state = getattr(jax_distributed, "global_state", None)
  return (getattr(state, "client", None) is not None
          and getattr(state, "preemption_sync_manager", None) is not None)


class PreemptionGuard:
  """Installs SIGTERM/SIGINT handlers for the `with` block and restores the old ones after.

  Args:
    sync_every: with several processes, how often (in steps) the processes compare their
      local stop flags (a small all-gather; it waits for the steps in flight). A stop is
      agreed at most this many steps after the signal.
    signals: which signals to handle.
  """

  def __init__(self, *, sync_every: int = 10,
               signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    if sync_every < 1:
      raise ValueError(f"sync_every must be positive, got {sync_every}")
    self.sync_every = int(sync_every)
    self._signals = tuple(signals)
    self._old: dict[int, Any] = {}
    self._code = 0  # the local reason code (_REASONS), set by the handler
    self.stop_step: int | None = None
    self.reason = ""
    self._service = False
    self._process_count = 1

  # -- signals -------------------------------------------------------------------------------

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    first = self._code == 0
    if signum == signal.SIGINT:
      self._code = self._code or 2
      # The next Ctrl-C kills at once, even while the main thread waits in C++ (a collective).
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      logging.warning("Ctrl-C: saving a checkpoint at the next agreed step, then exiting (exit "
                      "status %d). Press Ctrl-C again to exit at once without saving.",
                      PREEMPTED_EXIT_CODE)
    else:
      self._code = self._code or 1
      if first:
        logging.warning("%s: saving a checkpoint at the next agreed step, then exiting (exit "
                        "status %d).", signal.Signals(signum).name, PREEMPTED_EXIT_CODE)

  def request_stop(self, code: int = 1) -> None:
    """Asks for a stop as a signal would (for tests and other callers)."""
    self._code = self._code or int(code)

  @property
  def requested(self) -> bool:
    """Whether this process was asked to stop (not yet agreed with the others)."""
    return self._code != 0

  def __enter__(self) -> "PreemptionGuard":
    import jax

    self._process_count = jax.process_count()
    self._service = self._process_count > 1 and _jax_preemption_service()
    if threading.current_thread() is not threading.main_thread():
      logging.warning("PreemptionGuard outside the main thread: no signal handlers installed.")
      return self
    for sig in self._signals:
      if sig == signal.SIGTERM and self._service:
        continue  # jax's preemption service catches SIGTERM and agrees on the step
      self._old[sig] = signal.getsignal(sig)
      signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old if old is not None else signal.SIG_DFL)
    self._old.clear()

  # -- agreement -----------------------------------------------------------------------------

  def should_stop(self, step: int) -> bool:
    """True at one step, the same in every process, once any process was asked to stop.

    Call it after every step, in every process, with the same step numbers (the steps just
    completed). Returns True again if asked again for the step it stopped at.
    """
    step = int(step)
    if self.stop_step is not None:
      return step >= self.stop_step
    code = 0
    if self._process_count == 1:
      code = self._code
    else:
      if self._service:
        from jax.experimental import multihost_utils
        if multihost_utils.reached_preemption_sync_point(step):
          code = 3
      if step % self.sync_every == 0:
        code = max(code, self._gather_max(self._code))
    if code:
      self.stop_step = step
      self.reason = _REASONS.get(code, "asked to stop")
      logging.warning("Stopping at step %d (%s).", step, self.reason)
    return code != 0

  def _gather_max(self, code: int) -> int:
    import numpy as np
    from jax.experimental import multihost_utils

    codes = multihost_utils.process_allgather(np.asarray([code], np.int32))
    return int(np.max(np.asarray(codes)))
