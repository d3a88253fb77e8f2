"""The errors a user can cause, in a module that imports nothing, so every layer (ops, data,
models, training) can raise them without importing the config machinery."""

from __future__ import annotations


class UserError(Exception):
  """An expected mistake of the user's (a flag, a file, a dataset): `main.py` prints the message
  alone, no traceback, and exits with status 2."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key and what to do."""


def require(condition: bool, key: str, message: str) -> None:
  """Raises ConfigError for `--config.<key>` unless `condition` holds."""
  if not condition:
    raise ConfigError(f"--config.{key}: {message}")
