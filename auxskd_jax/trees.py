"""Nested dicts as flat `{"a.b": leaf}` maps, for config comparisons at every layer.

Its own module, just above `errors`, because both `distributed` (which compares the processes'
configs) and `config` (which compares a config with a workdir's config.json) need it, and
`config` sits above `distributed`.
"""

from __future__ import annotations

from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b": leaf} of a nested dict (an empty section is a leaf)."""
  if not isinstance(tree, dict) or (prefix and not tree):
    return {prefix: tree}
  out: dict[str, Any] = {}
  for k, v in tree.items():
    out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return out
