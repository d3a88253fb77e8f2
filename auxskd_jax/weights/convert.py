"""Reference PyTorch checkpoints <-> Flax variables of `auxskd_jax.models.build(name, ...)`.

The Flax module tree mirrors the reference's (SPEC section 2), so conversion is a renaming
(`a/blocks_0/b` <-> `a.blocks.0.b`, `scale` <-> `weight`, `mean` <-> `running_mean`; S3D-G's
head `linear` <-> `fc`) plus transposes: conv `(out, in, kt, kh, kw)` <-> `(kt, kh, kw, in,
out)`, linear `(out, in)` <-> `(in, out)`. torch is only needed by `load_torch_checkpoint`;
the rest works on numpy arrays.

Checkpoint layouts read (`split_checkpoint`): a plain state dict, one wrapped as
`{'state_dict': ...}`, `DataParallel` prefixes anywhere in a key (`module.conv1...`, the
authors' auxSKD `encoder_q.module.conv1...`), and the authors' auxSKD distillation model
(student `encoder_q`, teacher `encoder_k`, predictor `predict_q_c`, `queue`, `queue_ptr`).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from auxskd_jax import models

# Sub-networks of the authors' auxSKD distillation model, by their attribute names.
STUDENT, TEACHER, PREDICTOR = "encoder_q", "encoder_k", "predict_q_c"
_DISTILLATION_PREFIXES = (STUDENT + ".", TEACHER + ".", PREDICTOR + ".", "queue")
_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                  ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                  ("batch_stats", "var"): "running_var"}
# Top-level Flax module -> PyTorch attribute where the names differ.
_TORCH_NAMES = {"s3d_g": {"linear": "fc"}}
# A BN whose channel count is the model's width, to infer it from a state dict.
_WIDTH_KEYS = {"s3d_g": "conv1.bn1.weight"}
_INSTALL_TORCH = "pip install 'auxskd-jax[torch]'"
# Classes a weights_only load may rebuild besides tensors: the authors' auxSKD files pickle
# their argparse options under 'opt'.
SAFE_GLOBALS = ("argparse.Namespace",)


class CheckpointMismatchError(ValueError):
  """A state dict whose keys or shapes do not fit the requested encoder."""


class UnsafeCheckpointError(ValueError):
  """A checkpoint that holds pickled objects a weights-only load refuses to rebuild."""


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def strip_data_parallel(key: str) -> str:
  """'encoder_q.module.conv1.weight' -> 'encoder_q.conv1.weight' (DataParallel wrappers)."""
  return ".".join(part for part in key.split(".") if part != "module")


def unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
  """The state dict of `{'state_dict': ...}` (the authors' auxSKD files), else `checkpoint`."""
  if not isinstance(checkpoint, Mapping):
    raise TypeError(f"expected a state dict (a mapping of names to tensors), got "
                    f"{type(checkpoint).__name__}.")
  inner = checkpoint.get("state_dict")
  return inner if isinstance(inner, Mapping) else checkpoint


def split_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
  """The parts of a checkpoint as numpy state dicts without DataParallel prefixes.

  An auxSKD distillation model gives `{'encoder_q': sd, 'encoder_k': sd, 'predict_q_c': sd,
  'queue': [K, D], 'queue_ptr': [1]}` (parts it lacks are absent); anything else gives
  `{'encoder': sd}`. BN `num_batches_tracked` counters are dropped (never read).
  """
  sd = {strip_data_parallel(k): v for k, v in unwrap(checkpoint).items()
        if not k.endswith("num_batches_tracked")}
  if not any(k.startswith(_DISTILLATION_PREFIXES) for k in sd):
    return {"encoder": {k: _to_numpy(v) for k, v in sd.items()}}
  parts: dict[str, Any] = {}
  for key, value in sd.items():
    if key in ("queue", "queue_ptr"):
      parts[key] = _to_numpy(value)
      continue
    part, _, rest = key.partition(".")
    if part in (STUDENT, TEACHER, PREDICTOR) and rest:
      parts.setdefault(part, {})[rest] = _to_numpy(value)
  return parts


def encoder_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The encoder's tensors from a state dict or a whole checkpoint, as numpy, unprefixed.

  Accepts `{'state_dict': ...}` wrappers, `module.` (DataParallel) prefixes anywhere and
  auxSKD's distillation model, from which the student encoder (`encoder_q`) is taken.
  """
  parts = split_checkpoint(checkpoint)
  if "encoder" in parts:
    return parts["encoder"]
  if STUDENT not in parts:
    raise CheckpointMismatchError(
        "this auxSKD checkpoint has no student encoder (no 'encoder_q.' keys); convert a "
        "checkpoint saved with its whole distillation model under 'state_dict'.")
  return parts[STUDENT]


def _torch_key(path: tuple[str, ...], name: str) -> str:
  """('params', 'conv2', 'blocks_0', 'bn1', 'scale') -> 'conv2.blocks.0.bn1.weight'."""
  collection, *modules, leaf = path
  modules = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", m) for m in modules]
  if modules:
    modules[0] = _TORCH_NAMES.get(name, {}).get(modules[0], modules[0])
  return ".".join(modules + [_LEAF_TO_TORCH[(collection, leaf)]])


def _torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 5:
    return array.transpose(4, 3, 0, 1, 2)
  if array.ndim == 2:
    return array.T
  return array


def _flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 5:
    return array.transpose(2, 3, 4, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def _variable_shapes(name: str, heads: Mapping[str, int], width: int) -> dict[tuple, tuple]:
  """Flattened Flax variable paths -> shapes, by tracing an init (no compute)."""
  return dict(_traced_shapes(name, tuple(sorted(dict(heads).items())), int(width)))


@functools.lru_cache(maxsize=64)
def _traced_shapes(name: str, heads: tuple[tuple[str, int], ...],
                   width: int) -> tuple[tuple[tuple, tuple], ...]:
  """`_variable_shapes`, cached: tracing a full-width init takes seconds, and converting a
  run's state back and forth (the step parity tests) asks for the same model every time."""
  model = models.build(name, heads=dict(heads), width=width)
  clips = jax.ShapeDtypeStruct((1, 16, 32, 32, 3), jnp.float32)
  # Whatever the PRNG implementation in force (threefry or rbg keys differ in shape).
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  shapes = jax.eval_shape(lambda k, x: model.init(k, x), key, clips)
  return tuple((path, tuple(v.shape)) for path, v in traverse_util.flatten_dict(shapes).items())


def _expected(name: str, heads: Mapping[str, int], width: int) -> dict[str, tuple[tuple, tuple]]:
  """torch key -> (Flax path, torch-layout shape) for build(name, heads=heads, width=width)."""
  out = {}
  for path, shape in _variable_shapes(name, heads, width).items():
    torch_shape = _torch_layout(np.empty(shape, np.bool_)).shape
    out[_torch_key(path, name)] = (path, torch_shape)
  return out


def _guess_name(keys: list[str]) -> str | None:
  """Which encoder a state dict's keys look like, for error messages."""
  deep = any(".blocks.0." in k for k in keys)
  if any(k.startswith("mixed_3b.") for k in keys):
    return "s3d_g"
  if any("temporal_spatial_conv" in k for k in keys):
    return "r3d_18" if deep else "r3d_10"
  if any("spatial_conv" in k for k in keys):
    return "r21d_18" if deep else "r21d_10"
  if any(k.startswith("conv3a.") for k in keys):
    return "c3d"
  return None


def guess_encoder(checkpoint: Mapping[str, Any]) -> tuple[str | None, int | None]:
  """(encoder name, width) that a reference checkpoint's keys and stem look like, or
  (None, None): lets `auxskd_jax.api.load_encoder` read a `.pth` without being told."""
  try:
    sd = encoder_state_dict(checkpoint)
  except CheckpointMismatchError:
    return None, None
  name = _guess_name(list(sd))
  return name, (infer_width(sd, name) if name else None)


def infer_width(sd: Mapping[str, Any], name: str, default: int = 64) -> int:
  """The `width` a state dict of encoder `name` was built with (its stem's channels)."""
  key = _WIDTH_KEYS.get(name, "bn1.weight")
  return int(np.shape(sd[key])[0]) if key in sd else default


def _infer_heads(sd: Mapping[str, np.ndarray], name: str, width: int) -> dict[str, int]:
  """Linear heads are the top-level modules with a 2-D weight that the encoder lacks."""
  own = {k.split(".")[0] for k in _expected(name, {}, width)}
  to_flax = {v: k for k, v in _TORCH_NAMES.get(name, {}).items()}
  heads = {}
  for key, value in sd.items():
    module, _, leaf = key.partition(".")
    if module not in own and leaf == "weight" and np.ndim(value) == 2:
      heads[to_flax.get(module, module)] = int(np.shape(value)[0])
  return heads


def _check(sd: Mapping[str, np.ndarray], name: str, heads: Mapping[str, int], width: int,
           expected: dict[str, tuple[tuple, tuple]]) -> None:
  missing = [k for k in expected if k not in sd]
  unexpected = [k for k in sd if k not in expected]
  wrong = [(k, expected[k][1], np.shape(sd[k])) for k in expected
           if k in sd and tuple(np.shape(sd[k])) != expected[k][1]]
  if not (missing or unexpected or wrong):
    return
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing keys (first: {missing[0]!r})")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]!r})")
  if wrong:
    k, want, got = wrong[0]
    problems.append(f"{len(wrong)} shape mismatches (first: {k!r} is {tuple(got)}, "
                    f"{name} expects {want})")
  guess = _guess_name(list(sd))
  hint = (f" The keys look like a {guess!r} checkpoint." if guess and guess != name else
          " Check the model name, width and heads.")
  raise CheckpointMismatchError(
      f"state dict does not fit {name!r} (width {width}, heads {dict(heads)}): "
      f"{'; '.join(problems)}.{hint}")


def encoder_from_torch(sd: Mapping[str, Any], name: str, *,
                       heads: Mapping[str, int] | None = None,
                       width: int | None = None) -> dict[str, dict]:
  """`{'params', 'batch_stats'}` from one encoder's unprefixed state dict (`split_checkpoint`
  gives those); every key must fit `build(name, heads=heads, width=width)`."""
  if name not in models.NAMES:
    raise ValueError(f"model name {name!r} is not an encoder; choose one of {list(models.NAMES)}.")
  sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  if width is None:
    width = infer_width(sd, name)
  if heads is None:
    heads = _infer_heads(sd, name, width)
  expected = _expected(name, heads, width)
  _check(sd, name, heads, width, expected)
  flat = {path: np.asarray(_flax_layout(_to_numpy(sd[key])), np.float32)
          for key, (path, _) in expected.items()}
  variables = traverse_util.unflatten_dict(flat)
  variables.setdefault("batch_stats", {})
  return variables


def from_torch(state_dict: Mapping[str, Any], name: str, *, heads: Mapping[str, int] | None = None,
               width: int | None = None) -> dict[str, dict]:
  """Flax variables `{'params', 'batch_stats'}` for `models.build(name, ...)` from a reference
  state dict or whole checkpoint (an auxSKD one gives its student). `heads` and `width` are
  inferred from the keys unless given; the result fits `build(name, heads=heads, width=width)`
  (and `build(name, n, ...)` when the only head is `linear`).
  """
  if name not in models.NAMES:
    raise ValueError(f"model name {name!r} is not an encoder; choose one of {list(models.NAMES)}.")
  return encoder_from_torch(encoder_state_dict(state_dict), name, heads=heads, width=width)


def to_torch(variables: Mapping[str, Any], name: str, *,
             num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """The reference's state dict (numpy arrays) for Flax `variables` of `build(name, ...)`.

  Every BN gets `num_batches_tracked` (the reference keeps but never reads it).
  """
  flat = traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")
                                     if k in variables})
  sd: dict[str, np.ndarray] = {}
  for path, value in flat.items():
    if (path[0], path[-1]) not in _LEAF_TO_TORCH:
      raise CheckpointMismatchError(f"variable {'/'.join(path)!r} has no PyTorch counterpart; "
                                    f"pass the encoder's {{'params', 'batch_stats'}}.")
    sd[_torch_key(path, name)] = _torch_layout(np.asarray(value, np.float32))
    if path[0] == "batch_stats" and path[-1] == "mean":
      sd[_torch_key(path, name)[:-len("running_mean")] + "num_batches_tracked"] = np.asarray(
          num_batches_tracked, np.int64)
  width = infer_width(sd, name)
  heads = _infer_heads(sd, name, width)
  _check({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, name, heads,
         width, _expected(name, heads, width))
  return sd


# The authors' predictor: nn.Sequential(Linear, BatchNorm1d, ReLU, Linear) -> indices 0, 1, 3;
# ours (methods.auxskd.Predictor): linear1, bn, linear2.
_PREDICTOR_KEYS = {
    "0.weight": ("params", "linear1", "kernel"), "0.bias": ("params", "linear1", "bias"),
    "1.weight": ("params", "bn", "scale"), "1.bias": ("params", "bn", "bias"),
    "1.running_mean": ("batch_stats", "bn", "mean"), "1.running_var": ("batch_stats", "bn", "var"),
    "3.weight": ("params", "linear2", "kernel"), "3.bias": ("params", "linear2", "bias"),
}


def predictor_from_torch(sd: Mapping[str, Any]) -> dict[str, dict]:
  """`{'params', 'batch_stats'}` of our `Predictor` from the authors' `predict_q_c` state dict
  (unprefixed: `0.weight`, `1.running_mean`, ...)."""
  sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  missing = [k for k in _PREDICTOR_KEYS if k not in sd]
  unexpected = [k for k in sd if k not in _PREDICTOR_KEYS]
  if missing or unexpected:
    raise CheckpointMismatchError(
        f"the auxSKD predictor (predict_q_c) is not Linear, BatchNorm1d, ReLU, Linear: "
        f"missing {missing}, unexpected {unexpected}.")
  flat = {path: np.asarray(_flax_layout(_to_numpy(sd[key])), np.float32)
          for key, path in _PREDICTOR_KEYS.items()}
  return traverse_util.unflatten_dict(flat)


def predictor_to_torch(variables: Mapping[str, Any], *,
                       num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """The authors' `predict_q_c` state dict (unprefixed) for our `Predictor`'s variables."""
  flat = traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")})
  sd = {key: _torch_layout(np.asarray(flat[path], np.float32))
        for key, path in _PREDICTOR_KEYS.items()}
  sd["1.num_batches_tracked"] = np.asarray(num_batches_tracked, np.int64)
  return sd


def _safe_globals() -> list[Any]:
  import argparse

  return [argparse.Namespace]


def load_torch_checkpoint(path: str, *, trust_pickle: bool = False,
                          flag: str | None = None) -> Mapping[str, Any]:
  """Reads a `.pth` on CPU with `torch.load(weights_only=True)`: tensors, containers, numbers
  and the allow-listed `argparse.Namespace` (the authors' auxSKD files pickle their options).

  Any other pickled object is refused with `UnsafeCheckpointError`, since unpickling can run
  code. `trust_pickle=True` loads with `weights_only=False`: only for files you trust.
  `flag` (e.g. 'train.init_from') names the config key in messages.
  """
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading PyTorch checkpoint {path!r} needs torch: {_INSTALL_TORCH}") from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PyTorch checkpoint {path!r} does not exist.")
  if trust_pickle:
    return torch.load(path, weights_only=False, map_location="cpu")
  import pickle

  serialization = torch.serialization
  try:
    if hasattr(serialization, "safe_globals"):  # torch >= 2.5
      with serialization.safe_globals(_safe_globals()):
        return torch.load(path, weights_only=True, map_location="cpu")
    if hasattr(serialization, "add_safe_globals"):  # torch 2.4
      serialization.add_safe_globals(_safe_globals())
    return torch.load(path, weights_only=True, map_location="cpu")
  except pickle.UnpicklingError as e:
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f" ({found.group(1)})" if found else ""
    where = f"--config.{flag}={path!r}" if flag else repr(path)
    trust = (f"--config.{flag.rsplit('.', 1)[0]}.trust_pickle=True" if flag and "." in flag
             else "trust_pickle=True")
    raise UnsafeCheckpointError(
        f"{where} holds pickled Python objects besides tensors{what}; a weights-only load "
        f"refuses them because unpickling can run arbitrary code. If you trust the file, set "
        f"{trust} to load it with weights_only=False.") from e
  except (OSError, RuntimeError, EOFError) as e:
    raise ValueError(f"could not read {path!r} as a PyTorch checkpoint: {e}") from e
