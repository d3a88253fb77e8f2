"""Dataset builders: each scans one kind of source into videos per split (no TF at import).

`BUILDERS[name]` is a module with `scan(config) -> Scan`, `config_name(config) -> str` and
`OPTIONS`, the config keys beside `source_dir` that change what it scans (recorded with the
dataset, so `prepare` notices a re-run with other options);
`tfds_writer` (which imports TensorFlow) writes the decoded videos as a TFDS dataset.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BUILDERS = ("ucf101", "hmdb51", "kinetics", "video_folder", "frame_list")


def get(name: str) -> ModuleType:
  """The builder module for `name` (one of BUILDERS)."""
  if name not in BUILDERS:
    raise ValueError(f"--config.builder={name!r} is not a builder; choose one of {list(BUILDERS)}")
  return importlib.import_module(f"auxskd_jax.data.builders.{name}")
