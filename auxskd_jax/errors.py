"""The errors a user can cause, in a module that imports nothing of the project's, so every layer (ops, data,
models, training) can raise them without importing the config machinery."""

from __future__ import annotations

import errno
import re


class UserError(Exception):
  """An expected mistake of the user's (a flag, a file, a dataset): `main.py` prints the message
  alone, no traceback, and exits with status 2."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key and what to do."""


def require(condition: bool, key: str, message: str) -> None:
  """Raises ConfigError for `--config.<key>` unless `condition` holds."""
  if not condition:
    raise ConfigError(f"--config.{key}: {message}")


# What a full disk looks like inside the errors of orbax, tensorstore and the file system: an
# OSError, or tensorstore's status text ("RESOURCE_EXHAUSTED: Error writing local file ...").
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = re.compile(r"RESOURCE_EXHAUSTED|No space left on device|Disk quota exceeded")


def disk_full_cause(error: BaseException) -> str | None:
  """One line naming the full-disk error somewhere in `error`'s chain (its causes, contexts
  and grouped exceptions), or None when it is not one."""
  stack, seen = [error], set()
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    text = " ".join(str(e).split()) if isinstance(e, OSError) else str(e)
    match = _DISK_FULL_TEXT.search(text)
    if (isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS) or match:
      line = (next(l for l in text.splitlines() if match.group(0) in l) if match else text)
      line = line.strip() or "no message"
      line = line if len(line) <= 200 else line[:197] + "..."
      return f"{type(e).__name__}: {line}"
    stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return None
