"""auxskd-jax: self-supervised video representation learning in JAX/Flax.

auxSKD (similarity-based knowledge distillation) as an auxiliary pretraining phase, VSPP and
other pretext tasks, and the standard downstream evaluations. See docs/DESIGN.md.

The Python API (`auxskd_jax.api`) is re-exported here: `load_encoder`, `init_encoder`,
`save_encoder`, `embed`, `read_video`, `knn`, `retrieval`, `nearest`. It is imported on first
use, so `import auxskd_jax` stays cheap (no JAX).
"""

from typing import Any

__version__ = "0.1.0"

_API = ("Encoder", "LAYERS", "embed", "init_encoder", "knn", "load_encoder", "nearest",
        "read_video", "retrieval", "save_encoder")


def __getattr__(name: str) -> Any:
  if name in _API:
    from auxskd_jax import api

    return getattr(api, name)
  raise AttributeError(f"module 'auxskd_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + list(_API))
