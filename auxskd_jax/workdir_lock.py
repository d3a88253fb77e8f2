"""One job per workdir: a lease in the workdir, taken before anything else is written there.

Two runs writing one workdir (a second launch by mistake, or the pods of a Kubernetes job that
each failed to join the job and train alone) collide at the first save and leave nothing. So a
run takes `<workdir>/lease.json` first: it names the host, pid, job id and start time, and a
daemon thread renews it while the run lives. `<workdir>/lease.lock` is held with `fcntl.flock`
where the filesystem supports it (local disks; NFS emulates it with POSIX locks), which makes the refusal exact; without
locks the renewal time decides. A second run is refused with one line naming the holder. A
lease whose process is gone (same host) or that was not renewed for `stale_after_s` is taken
over with a warning, even from a process that still holds the lock but stopped renewing
(stopped, hung): it exits with status 2 when it next finds the lease taken. The two times are
the config's `lease.renew_every` and `lease.stale_after` (seconds).

In a multi-process job only process 0 holds the lease; the others read it back (the workdir is
on a filesystem every process shares, as checkpoints need) and check that it carries the token
process 0 broadcast, i.e. that they joined the job that holds it. Every process fails alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator

from absl import logging

from auxskd_jax import distributed
from auxskd_jax.errors import UserError

LEASE_FILE = "lease.json"
LOCK_FILE = "lease.lock"
RENEW_EVERY_S = 30.0  # how often the holder rewrites lease.json
STALE_AFTER_S = 300.0  # a lease not renewed for this long is taken over
_LOST_EXIT_CODE = 2  # the status of a run whose lease was taken over while it ran
MIN_FREE_BYTES = 16 << 20  # less free space than this in the workdir's filesystem is "full"


def settings(config: Any) -> dict[str, float]:
  """`hold`'s keyword arguments from the config's `lease` section (defaults where a config has
  none, e.g. `prepare`'s); raises UserError naming the key for a bad value."""
  section = config.get("lease") or {}
  renew = float(section.get("renew_every", RENEW_EVERY_S))
  stale = float(section.get("stale_after", STALE_AFTER_S))
  if not renew > 0:
    raise UserError(f"--config.lease.renew_every={renew:g}: give a positive number of seconds.")
  if not stale >= 2 * renew:
    raise UserError(f"--config.lease.stale_after={stale:g}: give at least twice "
                    f"lease.renew_every ({renew:g} s), or a live run's lease looks stale.")
  return {"renew_every_s": renew, "stale_after_s": stale}


class WorkdirBusy(UserError):
  """Another live run holds the workdir's lease."""


@dataclasses.dataclass
class Holder:
  """The contents of lease.json."""
  host: str
  pid: int
  job_id: str
  token: str
  started: float  # unix time
  renewed: float  # unix time
  # The process's start in clock ticks since boot (/proc/<pid>/stat), None where unknown: with
  # the pid it names one process exactly, whatever the wall clock did since (a VM's clock is
  # stepped; the wall-clock comparison below once took a live, stopped holder for a newer one).
  start_ticks: int | None = None

  def describe(self, now: float | None = None) -> str:
    age = max(0.0, (time.time() if now is None else now) - self.renewed)
    job = f", job {self.job_id}" if self.job_id else ""
    start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
    return (f"pid {self.pid} on host {self.host}{job}, started {start}, "
            f"renewed {age:.0f} s ago")


def _read(workdir: str) -> Holder | None:
  """The lease record, or None when there is none (or it cannot be parsed: a torn write)."""
  try:
    with open(os.path.join(workdir, LEASE_FILE)) as f:
      tree = json.load(f)
    # Fields with defaults (start_ticks) may be absent: older leases lack them.
    return Holder(**{k: tree[k] for k in Holder.__dataclass_fields__ if k in tree})
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _write(workdir: str, holder: Holder) -> None:
  path = os.path.join(workdir, LEASE_FILE)
  tmp = f"{path}.{holder.pid}.tmp"
  with open(tmp, "w") as f:
    json.dump(dataclasses.asdict(holder), f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    return True
  return True


def _process_start_ticks(pid: int) -> int | None:
  """When process `pid` started, in clock ticks since boot, from /proc on Linux; None where
  unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return int(fields[19])  # field 22: starttime
  except (OSError, ValueError, IndexError):
    return None


def _process_start_time(pid: int) -> float | None:
  """When process `pid` started (unix time, from boot time and its start ticks); None where
  unknown."""
  ticks = _process_start_ticks(pid)
  try:
    with open("/proc/stat") as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
  except (OSError, ValueError, IndexError, StopIteration):
    return None
  return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


def _stale_reason(holder: Holder, stale_after_s: float, now: float) -> str:
  """Why `holder` no longer holds the lease ("" when it still does)."""
  if holder.host == socket.gethostname():
    if not _pid_alive(holder.pid):
      return "its process is gone"
    # A pid reused since, e.g. a restarted container (same host name, same small pid; this
    # process itself, even): the process with that id is not the one that wrote the lease.
    ticks = _process_start_ticks(holder.pid)
    if holder.start_ticks is not None and ticks is not None:
      if ticks != holder.start_ticks:
        return "its process is gone (its process id now belongs to another process)"
    else:  # a lease without start ticks (older, or no /proc): compare wall-clock start times
      started = _process_start_time(holder.pid)
      if started is not None and started > holder.started + 2.0:
        return "its process is gone (its process id now belongs to a newer process)"
  if now - holder.renewed > stale_after_s:
    return f"not renewed for {now - holder.renewed:.0f} s (> {stale_after_s:.0f} s)"
  return ""


def check_writable(workdir: str) -> None:
  """Raises UserError (one line naming --workdir) unless the run could write `workdir`: not a
  file, not under a file, on a writable filesystem with free space. Reads only."""
  path = os.path.abspath(workdir)
  flag = f"--workdir={workdir}"
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag} is a file, not a directory; choose another --workdir.")
  existing = path
  while not os.path.isdir(existing):
    parent = os.path.dirname(existing)
    if os.path.exists(existing) or parent == existing:
      raise UserError(f"{flag}: {existing} is a file, so the workdir cannot be created under "
                      "it; choose another --workdir.")
    existing = parent
  try:
    stats = os.statvfs(existing)
  except OSError as e:
    raise UserError(f"{flag}: cannot inspect {existing} ({e.strerror}).") from None
  if stats.f_flag & os.ST_RDONLY or not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"{flag}: {existing} is read-only (a read-only filesystem or no write "
                    "permission); choose a writable --workdir.")
  free = stats.f_bavail * stats.f_frsize
  if free < MIN_FREE_BYTES:
    raise UserError(f"{flag}: the filesystem of {existing} is full ({free >> 20} MiB free); "
                    "free some space or choose another --workdir.")


class Lease:
  """The workdir lease held by this process; `release()` (or the context manager) ends it."""

  def __init__(self, workdir: str, *, token: str | None = None,
               renew_every_s: float = RENEW_EVERY_S, stale_after_s: float = STALE_AFTER_S):
    self.workdir = workdir
    self.renew_every_s = float(renew_every_s)
    self.stale_after_s = float(stale_after_s)
    now = time.time()
    self.holder = Holder(host=socket.gethostname(), pid=os.getpid(),
                         job_id=distributed.job_id(), token=token or uuid.uuid4().hex,
                         started=now, renewed=now, start_ticks=_process_start_ticks(os.getpid()))
    self._lock_fd: int | None = None
    self._stop = threading.Event()
    # Held around each write of lease.json and around release's removal, so that a release
    # from another thread (the early signal handler's watcher) never runs mid-write and no
    # write follows it. Re-entrant: the Python-level handler may run in the writing thread.
    self._io = threading.RLock()
    self._thread: threading.Thread | None = None

  # -- taking it -----------------------------------------------------------------------------

  def _refuse(self, other: Holder | None, why: str) -> WorkdirBusy:
    who = other.describe() if other else "another process (its lease record is unreadable)"
    return WorkdirBusy(
        f"--workdir={self.workdir} is in use by {who}{why}; wait for that run to end or stop "
        f"it, or choose another --workdir (a lease not renewed for {self.stale_after_s:.0f} s, "
        "or whose process is gone, is taken over).")

  def _try_lock(self) -> bool | None:
    """True: the fcntl lock is ours; False: another process holds it; None: no locks here."""
    import fcntl

    fd = os.open(os.path.join(self.workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EACCES, errno.EAGAIN):
        return False
      logging.info("No fcntl locks on %s (%s); the lease relies on its renewal time.",
                   self.workdir, e.strerror)
      return None
    self._lock_fd = fd
    return True

  def acquire(self) -> "Lease":
    try:
      os.makedirs(self.workdir, exist_ok=True)
      locked = self._try_lock()
      other = _read(self.workdir)
      now = time.time()
      if locked is False:
        # A live process holds the lock. Only the renewal time can still free the workdir:
        # a holder stopped (SIGSTOP), hung on I/O or with its renewal thread wedged.
        if other is None or now - other.renewed <= self.stale_after_s:
          raise self._refuse(other, "")
      if other is not None and other.token != self.holder.token:
        reason = _stale_reason(other, self.stale_after_s, now)
        if not reason and locked is None:
          raise self._refuse(other, "")
        if not reason:  # the lock is ours, so its holder is gone: a host renamed, pid reused
          reason = "no process holds its lock"
        if locked is False:
          reason += ("; its process still holds the lock, and exits when it next wakes and "
                     "finds the lease taken")
        logging.warning("Taking over the stale lease of %s in %s: %s.", other.describe(now),
                        self.workdir, reason)
      self.holder.renewed = now
      self._write_unless_released()
      if not locked:  # no lock of ours: a run that wrote at the same moment wins or loses here
        time.sleep(0.2)
        current = _read(self.workdir)
        if current is None or current.token != self.holder.token:
          raise self._refuse(current, " (both started at once; it won)")
    except OSError as e:
      self._unlock()
      raise UserError(f"--workdir={self.workdir}: cannot write the workdir lease "
                      f"({e.strerror or e}); choose a writable --workdir.") from None
    except UserError:
      self._unlock()
      raise
    # Started before it is stored: a release from another thread (the early SIGINT / SIGTERM
    # handler's watcher, the moment lease.json appears) sees no thread or a started one, never
    # an unstarted one, whose join raises and left the lease behind.
    thread = threading.Thread(target=self._renew_loop, name="workdir-lease", daemon=True)
    thread.start()
    self._thread = thread
    return self

  # -- keeping it ----------------------------------------------------------------------------

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.renew_every_s):
      current = _read(self.workdir)
      if current is not None and current.token != self.holder.token:
        sys.stderr.write(f"Error: lost the lease of --workdir={self.workdir} to "
                         f"{current.describe()} (this run was not renewing it for over "
                         f"{self.stale_after_s:.0f} s); stopping so that only one run writes "
                         "there.\n")
        sys.stderr.flush()
        os._exit(_LOST_EXIT_CODE)
      self.holder.renewed = time.time()
      try:
        self._write_unless_released()
      except OSError as e:  # a full disk, say: the run's own save will name it
        logging.warning("Could not renew the workdir lease in %s: %s", self.workdir, e)

  def _write_unless_released(self) -> None:
    with self._io:
      if not self._stop.is_set():
        _write(self.workdir, self.holder)

  # -- giving it back ------------------------------------------------------------------------

  def _unlock(self) -> None:
    if self._lock_fd is not None:
      os.close(self._lock_fd)  # closing drops the flock
      self._lock_fd = None

  def release(self) -> None:
    if os.getpid() != self.holder.pid:  # a forked child's copy: the parent still holds it
      return
    self._stop.set()
    thread = self._thread
    if thread is not None and thread is not threading.current_thread():
      thread.join(timeout=5)
    locked = self._io.acquire(timeout=5)  # a write in progress ends first
    try:
      current = _read(self.workdir)
      if current is not None and current.token == self.holder.token:
        with contextlib.suppress(OSError):
          os.remove(os.path.join(self.workdir, LEASE_FILE))
    finally:
      if locked:
        self._io.release()
    self._unlock()

  def __enter__(self) -> "Lease":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()


def _agree(outcome: dict[str, Any]) -> list[dict[str, Any]]:
  """Every process's `outcome`, by process index (a collective)."""
  return [json.loads(b.decode()) for b in
          distributed.allgather_bytes(json.dumps(outcome).encode())]


@contextlib.contextmanager
def hold(workdir: str, *, renew_every_s: float = RENEW_EVERY_S,
         stale_after_s: float = STALE_AFTER_S) -> Iterator[Lease | None]:
  """Holds `workdir`'s lease for the `with` block (process 0; other processes check that process
  0 of their own job holds it, and get None). Raises WorkdirBusy / UserError in every process
  of the job alike. Call it in every process, before writing anything into `workdir`."""
  import jax

  kwargs = dict(renew_every_s=renew_every_s, stale_after_s=stale_after_s)
  # The release is an abort hook (a watchdog's or an early SIGTERM's os._exit skips `finally`)
  # from before the lease is taken: a SIGTERM the moment lease.json appears still gives it
  # back (release removes only a lease holding this run's token).
  if jax.process_count() == 1:
    lease = Lease(workdir, **kwargs)
    hook = distributed.at_abort(lease.release)
    try:
      lease.acquire()
      yield lease
    finally:  # also after a KeyboardInterrupt inside acquire, once lease.json is written
      distributed.cancel_at_abort(hook)
      lease.release()  # removes only a lease holding this run's token
    return
  lease, outcome = None, {"ok": True, "error": "", "token": ""}
  if jax.process_index() == 0:
    lease = Lease(workdir, **kwargs)
    distributed.at_abort(lease.release)
    try:
      lease.acquire()
      outcome["token"] = lease.holder.token
    except UserError as e:
      distributed.cancel_at_abort(lease.release)
      lease = None
      outcome = {"ok": False, "error": str(e), "token": ""}
    except BaseException:  # a KeyboardInterrupt inside acquire: give back what it wrote
      distributed.cancel_at_abort(lease.release)
      lease.release()
      raise
  chief = _agree(outcome)[0]
  try:
    if not chief["ok"]:
      raise UserError(chief["error"])
    mine = {"ok": True, "error": "", "token": ""}
    if jax.process_index() != 0:
      record = _read(workdir)
      if record is None or record.token != chief["token"]:
        seen = record.describe() if record else "no lease"
        mine = {"ok": False, "token": "", "error": (
            f"--workdir={workdir}: process {jax.process_index()} sees {seen} there, not the "
            "lease process 0 of this job took; every process needs the same workdir on a "
            "shared filesystem, and no other run may use it.")}
    failed = [o for o in _agree(mine) if not o["ok"]]
    if failed:
      raise UserError(failed[0]["error"])
    yield lease
  finally:
    if lease is not None:
      distributed.cancel_at_abort(lease.release)
      lease.release()
