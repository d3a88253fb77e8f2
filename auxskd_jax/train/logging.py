"""Training logs: TensorBoard event files (tensorboardX, no TensorFlow), `metrics.jsonl` for
report plots, a periodic console line with step, loss, clips/s and ETA, and optional trackers
(`logging.wandb=True`: Weights & Biases) that get the same scalars and the resolved config.

A resumed run redoes the steps after its checkpoint, so both logs drop what was written after
it: `metrics.jsonl` is rewritten (atomically) without those rows, and TensorBoard is told to
purge them (`purge_step`), so no step appears twice.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from typing import Any, Mapping, Sequence

import ml_collections
from absl import logging as absl_logging

from auxskd_jax import config as config_lib
from auxskd_jax.errors import ConfigError, UserError

WANDB_INSTALL = "pip install 'auxskd-jax[wandb]'"

# Libraries whose INFO lines drown the progress lines (orbax logs every save and restore; jax
# says at start which backends it did not find). Their warnings still show.
QUIET_LIBRARIES = ("orbax", "jax._src.xla_bridge")


def _summary_writer_class() -> type:
  """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch, when it
  is installed, only to name torch.Tensor in type hints (writer.py), which costs every run
  1-3 s at start and about 0.7 s more at exit; scalars never need it. While tensorboardX is
  first imported, `import torch` fails (tensorboardX then uses numpy's type); torch stays
  importable as before afterwards, and a process that imported torch already keeps it."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    if "torch" in sys.modules and sys.modules["torch"] is None:
      del sys.modules["torch"]
  return SummaryWriter


class MetricLogger:
  """Writes scalars for one process (only process 0 of a multi-host run should write)."""

  def __init__(self, workdir: str, *, total_steps: int, clips_per_step: int,
               start_step: int = 0, enabled: bool = True, trackers: Sequence[Any] = (),
               progress: bool | None = None):
    """`trackers`: more writers of the same scalars (`write(step, scalars)`, `close()`), e.g.
    `wandb_writer`. `progress`: a progress bar with ETA (default: when stderr is a terminal;
    never when it is not, so logs hold no escape codes)."""
    self.workdir = workdir
    self.total_steps = total_steps
    self.clips_per_step = clips_per_step
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._writer = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      _truncate_after(self.path, start_step)
      SummaryWriter = _summary_writer_class()  # local: only runs that log need it

      # Readers drop events at steps >= purge_step from earlier runs in the same logdir. The
      # file name only has the time to the second and is opened "wb": the suffix keeps a resume
      # in the same second (fine-tuning's segments) from overwriting the previous file.
      self._writer = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"),
                                   purge_step=start_step + 1 if start_step > 0 else None,
                                   filename_suffix=f".{os.getpid()}.{start_step}")
    self._trackers = list(trackers) if enabled else []
    self._bar = None
    if enabled and (sys.stderr.isatty() if progress is None else progress):
      from tqdm import tqdm

      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                       dynamic_ncols=True, leave=False)
    self._last_time = time.time()
    self._last_step = start_step

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
    """Logs `metrics` at `step`; adds clips/s and ETA measured since the previous call.

    A write at the step the timer was reset at (the first step after compilation, an
    evaluation) has no timed steps behind it: it carries no throughput rather than a bogus one.
    """
    now = time.time()
    timed = step - self._last_step
    seconds = max(1e-9, now - self._last_time)
    row: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
    eta = None
    if prefix == "train" and timed > 0:
      row["clips_per_sec"] = timed * self.clips_per_step / seconds
      row["steps_per_sec"] = timed / seconds
      eta = (self.total_steps - step) * seconds / timed
    self._last_time, self._last_step = now, step
    if not self.enabled:
      return
    for k, v in row.items():
      self._writer.add_scalar(f"{prefix}/{k}", v, step)
    for tracker in self._trackers:
      tracker.write(step, {f"{prefix}/{k}": v for k, v in row.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "split": prefix, **row}) + "\n")
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.refresh()  # one redraw per log interval, whatever tqdm's own rate limit
    if prefix == "train":
      rate = f"{row['clips_per_sec']:.1f} clips/s" if "clips_per_sec" in row else "- clips/s"
      absl_logging.info("step %d/%d loss %.4f | %s | ETA %s", step, self.total_steps,
                        row.get("loss", float("nan")), rate,
                        "-" if eta is None else _hms(eta))
    else:
      absl_logging.info("%s step %d: %s", prefix, step,
                        ", ".join(f"{k}={v:.4f}" for k, v in row.items()))

  def reset_timer(self, step: int) -> None:
    """Starts throughput timing afresh (after compilation or a checkpoint save)."""
    self._last_time, self._last_step = time.time(), step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    for tracker in self._trackers:
      tracker.close()
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()


def _wandb_enabled(config: ml_collections.ConfigDict) -> bool:
  section = config.get("logging", None)
  return bool(section is not None and section.get("wandb", False))


def validate(config: ml_collections.ConfigDict) -> None:
  """ConfigError (one line) when `logging.wandb=True` but wandb is not installed."""
  if not _wandb_enabled(config):
    return
  try:
    import wandb  # noqa: F401  (only to see that it is there)
  except ImportError:
    raise ConfigError("--config.logging.wandb=True needs Weights & Biases, which is not "
                      f"installed: {WANDB_INSTALL} (or set --config.logging.wandb=False)."
                      ) from None


class WandbWriter:
  """A Weights & Biases run (process 0's): the resolved config, then every scalar the
  MetricLogger writes, under the same names (`train/loss`, `knn/top1`, ...) and steps.

  The run's id is kept in `<workdir>/wandb_run_id`, so a resumed workdir continues the same
  W&B run (the steps it redoes after its checkpoint, W&B already has: it keeps the first
  values and drops the redone ones). Files go under the workdir unless WANDB_DIR says where; WANDB_MODE=offline keeps
  the run on disk (`wandb sync` uploads it later).
  """

  ID_FILE = "wandb_run_id"

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    import wandb  # local: an optional dependency (the wandb extra)

    section = config.logging
    id_path = os.path.join(workdir, self.ID_FILE)
    run_id = ""
    if os.path.isfile(id_path):
      with open(id_path) as f:
        run_id = f.read().strip()
    run_id = run_id or secrets.token_hex(4)
    os.makedirs(workdir, exist_ok=True)
    try:
      self._run = wandb.init(
          project=str(section.get("wandb_project", "")) or None,
          entity=str(section.get("wandb_entity", "")) or None,
          name=str(section.get("wandb_name", "")) or os.path.basename(os.path.abspath(workdir)),
          dir=None if os.environ.get("WANDB_DIR") else workdir,
          config=config_lib.json_tree(config), id=run_id, resume="allow")
    except Exception as e:  # not logged in, no network, a bad entity: wandb's own errors
      first = (str(e).strip().splitlines() or [""])[0]
      raise UserError(f"--config.logging.wandb=True: Weights & Biases could not start a run "
                      f"({type(e).__name__}: {first}); run `wandb login`, set WANDB_MODE=offline "
                      "(`wandb sync` uploads later), or set --config.logging.wandb=False.") from e
    with open(id_path, "w") as f:
      f.write(run_id)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._run.log(dict(scalars), step=int(step))

  def close(self) -> None:
    self._run.finish()


def make_trackers(config: ml_collections.ConfigDict, workdir: str) -> list[Any]:
  """The trackers `logging.*` asks for, for MetricLogger(trackers=); call in process 0 only."""
  return [WandbWriter(config, workdir)] if _wandb_enabled(config) else []


def _truncate_after(path: str, step: int) -> None:
  """On resume, drops rows logged after the checkpoint we restart from (they will be redone).

  A row that does not parse (the half-written last line a kill or a full disk leaves) is dropped
  with a warning. The file is replaced atomically, so a second kill cannot lose the log.
  """
  if not os.path.exists(path):
    return
  with open(path, "rb") as f:
    lines = f.read().decode("utf-8", errors="replace").splitlines()
  kept, broken = [], 0
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      row_step = int(row.get("step", 0))
    except (ValueError, TypeError, AttributeError):
      broken += 1
      continue
    if row_step <= step:
      kept.append(line + "\n")
  if broken:
    absl_logging.warning("%s: dropped %d unreadable line(s) (a run killed while writing?).",
                         path, broken)
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)


class _DropLibraryInfo(logging.Filter):
  """Drops records below WARNING logged from inside the given packages (absl log records carry
  the caller's file, so orbax's absl INFO lines are recognisable by path)."""

  def __init__(self, packages: tuple[str, ...]):
    super().__init__()
    self._parts = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(part in (record.pathname or "") for part in self._parts)


def quiet_libraries(packages: tuple[str, ...] = QUIET_LIBRARIES) -> None:
  """Shows only warnings and errors from `packages` (their own loggers and what they send
  through absl logging); our progress lines stay at INFO."""
  for name in packages:
    logging.getLogger(name).setLevel(logging.WARNING)
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropLibraryInfo) for f in absl_logger.filters):
    absl_logger.addFilter(_DropLibraryInfo(packages))


def _hms(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
