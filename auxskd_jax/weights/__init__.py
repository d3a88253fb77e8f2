"""Weights in and out: the one loading path behind `train.init_from` and `eval.init_from`
(`load_encoder`), the authors' auxSKD state for continuing their run, and the conversion to
and from PyTorch state dicts (`weights.convert`).

Sources (`path`):
- one of our runs: a workdir, its `checkpoints/` folder or one step folder (orbax); the
  encoder is `params['encoder']` / `batch_stats['encoder']` (an auxSKD run's student);
- the authors' auxSKD file (`pckpt_epoch_N.pth`: `{'opt': argparse.Namespace, 'state_dict',
  'optimizer', 'epoch'}`, keys `encoder_q.module.*`, ...): the student `encoder_q`;
- the authors' VSPP file (`epoch_segment_self_f-NN.pth.tar`, a DataParallel state_dict
  `module.*` with heads `linear`, `linear_segment`), or any plain / converted state dict.
PyTorch files are read with `weights_only=True` (argparse.Namespace allowed, nothing else);
`trust_pickle=True` (config `<section>.trust_pickle`) lifts that for a file you trust.

`load_encoder(..., strict=True)` (evaluation, fine-tuning) requires every encoder layer
(everything but the linear heads) to load; `strict=False` (pretext methods starting from an
auxSKD student) copies every layer whose name and shape match, and reports the rest.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping

import flax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

from absl import logging

from auxskd_jax import models
from auxskd_jax.errors import ConfigError, require
from auxskd_jax.weights import convert, orbax

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar")
# In lenient mode, fewer of the target's encoder parameter arrays than this fraction found
# with a matching shape means the checkpoint is of another encoder (or not one at all).
MIN_MATCHED_FRACTION = 0.5
ALL_HEADS = "all"

# Report names of the formats.
ORBAX = "auxskd-jax checkpoint"
AUXSKD_TORCH = "authors' auxSKD checkpoint (student encoder_q)"
DATA_PARALLEL_TORCH = "PyTorch DataParallel state_dict (the authors' VSPP format)"
TORCH = "PyTorch state_dict"


@dataclasses.dataclass
class LoadReport:
  """What a load copied. Leaf paths like 'params/conv1/spatial_conv/kernel'."""
  source: str
  loaded: list[str]
  shape_mismatch: list[str]  # 'path: checkpoint (a, b) vs model (c, d)'
  missing: list[str]  # in the model, not in the checkpoint
  unused: list[str]  # in the checkpoint, not in the model
  format: str = ""
  epoch: int | None = None
  kept_fresh: list[str] = dataclasses.field(default_factory=list)  # heads not taken on purpose

  def summary(self, verbose: bool | None = None) -> str:
    """One line: how many arrays loaded and skipped, from where. `verbose` (default: on with
    `--verbose`, i.e. absl verbosity >= 1) adds the per-layer lists."""
    verbose = absl_logging.vlog_is_on(1) if verbose is None else verbose
    what = f" ({self.format}" + (f", epoch {self.epoch}" if self.epoch is not None else "") + ")"
    skipped = len(self.shape_mismatch) + len(self.missing) + len(self.kept_fresh)
    lines = [f"init_from {self.source}{what if self.format else ''}: loaded "
             f"{len(self.loaded)} arrays, skipped {skipped} ({len(self.shape_mismatch)} shape "
             f"mismatches, {len(self.missing)} missing, {len(self.kept_fresh)} head arrays kept "
             f"fresh), {len(self.unused)} unused from the checkpoint"
             + ("" if verbose or skipped + len(self.unused) == 0 else "; --verbose lists them")
             + "."]
    if not verbose:
      return lines[0]
    layers = sorted({name.split("/", 1)[1].rsplit("/", 1)[0] for name in self.loaded})
    lines.append("  loaded layers: " + ", ".join(layers))
    for title, names in (("not loaded (shape)", self.shape_mismatch),
                         ("not loaded (missing)", self.missing),
                         ("heads kept fresh", self.kept_fresh),
                         ("unused from checkpoint", self.unused)):
      if names:
        lines.append(f"  {title}: " + ", ".join(names))
    return "\n".join(lines)


class MissingCheckpointError(ConfigError, FileNotFoundError):
  """The checkpoint to start from is not there."""


def require_exists(config: Any, key: str) -> None:
  """ConfigError unless `--config.<key>` (e.g. 'train.init_from') is '' or exists."""
  section, name = key.split(".")
  path = config[section].get(name, "") if section in config else ""
  require(not path or os.path.exists(path), key,
          f"{path!r} does not exist; give one of our workdirs / checkpoint directories or a "
          "reference PyTorch .pth, or '' to start from a random initialisation.")


def trust_pickle(config: Any, flag: str) -> bool:
  """`config.<section>.trust_pickle` for `flag` = '<section>.init_from' (False if absent)."""
  section = config.get(flag.split(".")[0], None) if hasattr(config, "get") else None
  return bool(section.get("trust_pickle", False)) if section is not None else False


def _flatten(variables: Any) -> dict[str, Any]:
  flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(variables), sep="/")
  return {k: v for k, v in flat.items() if hasattr(v, "shape")}


def _where(flag: str, path: str) -> str:
  return f"--config.{flag}={path!r}"


def _is_torch_file(path: str) -> bool:
  return os.path.isfile(path)


def read_torch(path: str, *, flag: str = "train.init_from",
               trust_pickle: bool = False) -> Mapping[str, Any]:
  """A `.pth` as a mapping (weights-only unless trusted); errors name `flag`."""
  try:
    checkpoint = convert.load_torch_checkpoint(path, trust_pickle=trust_pickle, flag=flag)
  except convert.UnsafeCheckpointError as e:
    raise ConfigError(str(e)) from e
  except (ImportError, ValueError) as e:
    raise ConfigError(f"{_where(flag, path)}: {e}") from e
  if not isinstance(checkpoint, Mapping):
    raise ConfigError(f"{_where(flag, path)}: holds a {type(checkpoint).__name__}, not a "
                      "state dict; save model.state_dict() (or a dict with 'state_dict').")
  return checkpoint


def _epoch(checkpoint: Mapping[str, Any]) -> int | None:
  epoch = checkpoint.get("epoch")
  return int(epoch) if isinstance(epoch, (int, np.integer)) else None


def read_encoder(path: str, *, model_name: str | None, flag: str = "train.init_from",
                 trust_pickle: bool = False) -> tuple[dict[str, Any], str, int | None]:
  """(encoder variables {'params', 'batch_stats'}, format, epoch) of any supported source."""
  if not os.path.exists(path):
    raise MissingCheckpointError(f"{_where(flag, path)} does not exist; give one of our workdirs / "
                      "checkpoint directories or a PyTorch .pth file.")
  if not _is_torch_file(path):
    try:
      tree = orbax.restore_variables(path)
    except FileNotFoundError as e:
      raise ConfigError(f"{_where(flag, path)}: {e}") from e
    params, stats = tree.get("params", {}) or {}, tree.get("batch_stats", {}) or {}
    if "encoder" not in params:
      raise ConfigError(f"{_where(flag, path)}: the checkpoint has no params['encoder'] (not "
                        "an auxskd-jax training checkpoint?).")
    return {"params": params["encoder"], "batch_stats": stats.get("encoder", {}) or {}}, ORBAX, \
        None
  if model_name is None:
    raise ConfigError(f"{_where(flag, path)}: reading a PyTorch checkpoint needs the encoder's "
                      "name (--config.model.name) to convert its keys.")
  checkpoint = read_torch(path, flag=flag, trust_pickle=trust_pickle)
  parts = convert.split_checkpoint(checkpoint)
  if "encoder" in parts:
    prefixed = any(k.startswith("module.") for k in convert.unwrap(checkpoint))
    fmt = DATA_PARALLEL_TORCH if prefixed else TORCH
  else:
    fmt = AUXSKD_TORCH
  try:
    variables = convert.from_torch(checkpoint, model_name)
  except (convert.CheckpointMismatchError, ValueError, KeyError) as e:
    raise ConfigError(f"{_where(flag, path)}: cannot read it as a {model_name!r} encoder "
                      f"(--config.model.name): {e}") from e
  return variables, fmt, _epoch(checkpoint)


def _head_of(path: str, heads: set[str]) -> str | None:
  """'params/linear/kernel' -> 'linear' when 'linear' is one of `heads`."""
  parts = path.split("/")
  return parts[1] if len(parts) > 2 and parts[1] in heads else None


def merge(source: Any, target_variables: Any, *, heads: Iterable[str] | str = ALL_HEADS,
          name: str = "checkpoint") -> tuple[Any, LoadReport]:
  """`target_variables` with every `source` leaf of the same path and shape copied in.

  The target's linear heads (`models.head_names`) are copied only when named in `heads`
  (or `heads == 'all'`); the others keep their values and are listed as `kept_fresh`.
  """
  target_heads = set(models.head_names(flax.serialization.to_state_dict(target_variables)))
  allowed = target_heads if heads == ALL_HEADS else set(heads) & target_heads
  src, tgt = _flatten(source), _flatten(target_variables)
  out: dict[str, Any] = {}
  report = LoadReport(name, [], [], [], [])
  for path, value in tgt.items():
    head = _head_of(path, target_heads)
    out[path] = value
    if head is not None and head not in allowed:
      report.kept_fresh.append(path)
    elif path in src and tuple(src[path].shape) == tuple(value.shape):
      out[path] = jnp.asarray(np.asarray(src[path]), dtype=value.dtype)
      report.loaded.append(path)
    elif path in src:
      report.shape_mismatch.append(f"{path}: checkpoint {tuple(src[path].shape)} vs model "
                                   f"{tuple(value.shape)}")
    else:
      report.missing.append(path)
  report.unused = sorted(set(src) - set(tgt))
  nested = flax.traverse_util.unflatten_dict(out, sep="/")
  return flax.serialization.from_state_dict(target_variables, nested), report


def _shown(names: list[str], limit: int = 12) -> str:
  return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def load_encoder(source: str, target_variables: Any, *, strict: bool,
                 model_name: str | None = None, heads: Iterable[str] | str | None = None,
                 flag: str = "train.init_from", trust_pickle: bool = False
                 ) -> tuple[Any, LoadReport]:
  """`target_variables` ({'params', 'batch_stats'} of `models.build(model_name, ...)`, heads
  included) with the encoder of the checkpoint `source` (one of our runs or the authors'
  PyTorch files), and a report of what loaded (also logged).

  `heads`: names of the target's heads to take from the checkpoint too (when shapes match),
  or 'all'; the others keep their values (fine-tuning's new head). Default: none when
  `strict`, all otherwise (a pretext method keeps whatever head fits). `strict`: every encoder
  layer must load, else a `ConfigError` naming `flag` and the layers; otherwise (pretext
  methods) matching layers are copied and the rest reported, with a `ConfigError` only when
  less than half of the encoder matches (another encoder or width). `model_name` is needed
  for PyTorch files; `trust_pickle` allows pickled objects in them.
  """
  path = source
  if heads is None:
    heads = () if strict else ALL_HEADS
  tree, fmt, epoch = read_encoder(path, model_name=model_name, flag=flag,
                                  trust_pickle=trust_pickle)
  merged, report = merge(tree, target_variables, heads=heads, name=path)
  report.format, report.epoch = fmt, epoch
  target_heads = set(models.head_names(flax.serialization.to_state_dict(target_variables)))
  absent = sorted((a for a in report.missing + report.shape_mismatch
                   if _head_of(a.split(":")[0], target_heads) is None),
                  key=lambda a: not a.startswith("params/"))  # parameters first
  hint = ("Is it a checkpoint of another encoder or width (check --config.model.name / "
          "--config.model.width)?")
  if strict and absent:
    raise ConfigError(
        f"{_where(flag, path)}: {len(absent)} encoder layer(s) of the configured "
        f"{model_name or 'model'} were not in the checkpoint or had another shape: "
        f"{_shown(absent)}. {hint}")
  params = {p for p in _flatten(target_variables)
            if p.startswith("params/") and _head_of(p, target_heads) is None}
  got = [p for p in report.loaded if p in params]
  if not strict and len(got) < MIN_MATCHED_FRACTION * max(1, len(params)):
    raise ConfigError(
        f"{_where(flag, path)}: only {len(got)} of the encoder's {len(params)} parameter "
        f"arrays match this checkpoint. {hint} Not found or wrong shape: {_shown(absent)}")
  logging.info("%s", report.summary())
  return merged, report


def load_auxskd_torch_state(path: str, model_name: str, *, width: int | None = None,
                            flag: str = "train.init_from",
                            trust_pickle: bool = False) -> dict[str, Any]:
  """The whole distillation state of the authors' auxSKD file, in our layout (numpy):

  `params` / `batch_stats`: `{'encoder': student (encoder_q, with its 128-d head `linear`),
  'predictor': our `methods.auxskd.Predictor` (linear1, bn, linear2) from `predict_q_c`}`;
  `teacher`: `{'params', 'batch_stats'}` from `encoder_k`; `queue` float32 `[K, D]`;
  `queue_ptr` int32 scalar; `epoch` (int or None: the number of finished epochs);
  `momentum`: SGD momentum buffers as `{'encoder', 'predictor'}` params trees (their SGD
  keeps `buf = m * buf + grad + wd * w`, optax's `trace` after `add_decayed_weights`), or None
  when the file has no optimizer state that maps one to one; `learning_rate`: the optimizer's
  last lr (or None); `opt`: the pickled argparse options as a dict (or None).
  """
  if not os.path.isfile(path):
    raise ConfigError(f"{_where(flag, path)} is not a file; continuing the authors' auxSKD run "
                      "needs their pckpt_epoch_N.pth.")
  checkpoint = read_torch(path, flag=flag, trust_pickle=trust_pickle)
  parts = convert.split_checkpoint(checkpoint)
  need = (convert.STUDENT, convert.TEACHER, convert.PREDICTOR, "queue", "queue_ptr")
  lacking = [p for p in need if p not in parts]
  if lacking:
    raise ConfigError(f"{_where(flag, path)}: not an auxSKD distillation checkpoint: it lacks "
                      f"{lacking} (the authors' auxSKD script saves encoder_q, encoder_k, "
                      "predict_q_c, queue and queue_ptr under 'state_dict').")
  try:
    student = convert.encoder_from_torch(parts[convert.STUDENT], model_name, width=width)
    teacher = convert.encoder_from_torch(parts[convert.TEACHER], model_name, width=width)
    predictor = convert.predictor_from_torch(parts[convert.PREDICTOR])
  except (convert.CheckpointMismatchError, ValueError, KeyError) as e:
    raise ConfigError(f"{_where(flag, path)}: cannot read it as an auxSKD run of "
                      f"{model_name!r} (--config.model.name): {e}") from e
  queue = np.asarray(parts["queue"], np.float32)
  embed = student["params"].get("linear", {}).get("kernel")
  if queue.ndim != 2 or embed is None or queue.shape[1] != embed.shape[1]:
    raise ConfigError(f"{_where(flag, path)}: queue of shape {queue.shape} does not fit the "
                      f"student's embedding ({None if embed is None else embed.shape}).")
  opt = checkpoint.get("opt")
  return {
      "params": {"encoder": student["params"], "predictor": predictor["params"]},
      "batch_stats": {"encoder": student["batch_stats"],
                      "predictor": predictor["batch_stats"]},
      "teacher": teacher,
      "queue": queue,
      "queue_ptr": np.asarray(int(np.asarray(parts["queue_ptr"]).reshape(-1)[0]), np.int32),
      "epoch": _epoch(checkpoint),
      "momentum": _momentum(checkpoint, parts, model_name, width),
      "learning_rate": _learning_rate(checkpoint),
      "opt": dict(vars(opt)) if hasattr(opt, "__dict__") else None,
  }


def _optimizer_groups(checkpoint: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  optimizer = checkpoint.get("optimizer")
  if not isinstance(optimizer, Mapping):
    return []
  groups = optimizer.get("param_groups")
  return list(groups) if isinstance(groups, (list, tuple)) else []


def _learning_rate(checkpoint: Mapping[str, Any]) -> float | None:
  groups = _optimizer_groups(checkpoint)
  return float(groups[0]["lr"]) if groups and "lr" in groups[0] else None


def _momentum(checkpoint: Mapping[str, Any], parts: Mapping[str, Any], model_name: str,
              width: int | None) -> dict[str, Any] | None:
  """SGD momentum buffers mapped to our trees. The authors' optimizer holds
  `[p for p in model.parameters() if p.requires_grad]`: the student's parameters then the
  predictor's (the teacher's are frozen), in state_dict order."""
  groups = _optimizer_groups(checkpoint)
  state = checkpoint["optimizer"].get("state", {}) if groups else {}
  ids = [i for g in groups for i in g.get("params", [])]
  buffers_of = {convert.STUDENT: [], convert.PREDICTOR: []}
  for key in convert.unwrap(checkpoint):
    part, _, rest = convert.strip_data_parallel(key).partition(".")
    if part in buffers_of and not rest.endswith(("running_mean", "running_var",
                                                 "num_batches_tracked")):
      buffers_of[part].append(rest)
  order = [(p, k) for p in (convert.STUDENT, convert.PREDICTOR) for k in buffers_of[p]]
  if not ids or len(ids) != len(order):
    return None
  filled = {p: dict(parts[p]) for p in buffers_of}
  for i, (part, key) in zip(ids, order):
    buf = state.get(i, {}).get("momentum_buffer") if isinstance(state, Mapping) else None
    value = np.asarray(filled[part][key])
    filled[part][key] = (np.zeros_like(value) if buf is None else
                         np.asarray(buf.detach().cpu().numpy() if hasattr(buf, "detach") else buf))
  try:
    encoder = convert.encoder_from_torch(filled[convert.STUDENT], model_name, width=width)
    predictor = convert.predictor_from_torch(filled[convert.PREDICTOR])
  except (convert.CheckpointMismatchError, ValueError):
    return None
  return {"encoder": encoder["params"], "predictor": predictor["params"]}
