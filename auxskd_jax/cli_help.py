"""What the command line explains about itself: the shipped configs, the tasks, the flags, and the
resolved config key by key.

Pure and fast (no JAX, no config imported to list them): the one-line purposes are the first
sentences of the config files' and task modules' docstrings, read with `ast`; the per-key help
strings are the comments beside the assignments in the files that build a config
(`config.base_config`, `defaults`, `distributed.config_section` and the config file itself).
"""

from __future__ import annotations

import ast
import difflib
import importlib.resources
import importlib.util
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from auxskd_jax import config as config_lib
from auxskd_jax.errors import ConfigError
from auxskd_jax.trees import flatten

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = "demo"


def configs_dir() -> Path:
  """The shipped configs: the repository's `configs/` in a source checkout (also under an
  editable install), else `auxskd_jax.configs` of the installed wheel (setup.py maps the
  repository's `configs/` there)."""
  checkout = _PACKAGE_DIR.parent
  if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
    return checkout / "configs"
  return Path(str(importlib.resources.files("auxskd_jax.configs")))


def _first_sentence(text: str) -> str:
  """Up to the first '. ' outside brackets and backticks (or a ': `' before a command)."""
  depth, code = 0, False
  for i, ch in enumerate(text):
    code = not code if ch == "`" else code
    depth += (ch in "([") - (ch in ")]") if not code else 0
    if depth == 0 and not code and text.startswith((". ", ": `"), i):
      return text[:i]
  return text.rstrip(".")


def _docstring_line(path: Path, limit: int = 140) -> str:
  """The first sentence of a module's docstring on one line, shortened to `limit`."""
  try:
    doc = ast.get_docstring(ast.parse(path.read_text()))
  except (OSError, SyntaxError):
    return ""
  if not doc:
    return ""
  text = _first_sentence(" ".join(doc.split("\n\n")[0].split()))
  if len(text) > limit and text.rfind(": ", 30, limit) > 0:  # "X (SPEC 3): the details"
    text = text[:text.rfind(": ", 30, limit)]
  if len(text) > limit:
    text = text[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
  return text


def shipped_configs() -> dict[str, str]:
  """{config name: one-line purpose} of every shipped config file."""
  return {p.stem: _docstring_line(p) for p in sorted(configs_dir().glob("*.py"))
          if not p.stem.startswith("_")}


def resolve_config(value: str) -> str:
  """The file `--config=value` names: an existing path, or a shipped config's name (with or
  without `.py`; `configs/NAME.py` also finds the shipped file from any directory). A
  `:argument` suffix (ml_collections' config argument) is kept. Raises ConfigError with the
  closest names otherwise."""
  path, sep, arg = value.partition(":")
  if os.path.isfile(path):
    return value
  name = Path(path).name.removesuffix(".py")
  shipped = configs_dir() / f"{name}.py"
  if (path == name or path in (f"{name}.py", f"configs/{name}.py")) and shipped.is_file():
    return str(shipped) + sep + arg
  names = list(shipped_configs())
  close = difflib.get_close_matches(name, names, n=2, cutoff=0.5)
  hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
  raise ConfigError(f"--config={value}: no such config file or shipped config{hint}; give a "
                    f"path to a config file or one of: {', '.join(names)}.")


def load_config_file(value: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file `value` names (`path[:argument]`), without overrides."""
  path, _, arg = value.partition(":")
  spec = importlib.util.spec_from_file_location("_auxskd_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([arg] if arg else []))


def _task_purposes(tasks: Mapping[str, str]) -> dict[str, str]:
  """{task: one-line purpose} from each task module's docstring (found by path, not imported:
  importing a task loads JAX)."""
  out = {}
  for task, module in tasks.items():
    parts = module.split(".")[1:]
    file = _PACKAGE_DIR.joinpath(*parts).with_suffix(".py")
    out[task] = _docstring_line(file if file.is_file() else _PACKAGE_DIR.joinpath(*parts,
                                                                                 "__init__.py"))
  return out


def _table(rows: Iterable[tuple[str, str]], indent: int = 2, width: int = 100,
           continued: str = "") -> list[str]:
  """Two columns, the second wrapped to `width` with a hanging indent (after `continued`)."""
  rows = list(rows)
  left = max((len(k) for k, _ in rows), default=0)
  out = []
  for key, text in rows:
    lead = f"{' ' * indent}{key.ljust(left)}  "
    wrapped = textwrap.wrap(text, max(30, width - len(lead))) or [""]
    out.append((lead + wrapped[0]).rstrip())
    out += [" " * len(lead) + continued + line for line in wrapped[1:]]
  return out


def render_help(prog: str, tasks: Mapping[str, str],
                flags: Sequence[tuple[str, str]]) -> str:
  """The `--help` text: usage, the shipped configs and tasks with their purposes, the flags."""
  lines = [
      f"usage: {prog} [--config=NAME|PATH] [--workdir=DIR] [--config.KEY=VALUE ...]",
      "",
      "Self-supervised video representation learning (auxSKD, VSPP, VCOP, VideoPace, RSPNet),",
      "fine-tuning, retrieval and linear probes. With no flags: the embedded CPU demo.",
      "",
      f"Shipped configs (--config=NAME; default {DEFAULT_CONFIG}; a path to a file also works):",
  ]
  lines += _table(shipped_configs().items())
  lines += ["", "Tasks (config.task; each config sets one):"]
  lines += _table(_task_purposes(tasks).items())
  lines += ["", "Flags:"]
  lines += _table(flags)
  lines += ["", "Examples:",
            f"  {prog} --config.demo.quick=True                # the demo in about a minute",
            f"  {prog} --config=auxskd_r21d_k100 --show_config  # every key, default and help",
            f"  {prog} --config=retrieval_r21d_ucf101 --config.data.data_dir=DATA "
            "--config.eval.init_from=RUN"]
  return "\n".join(lines) + "\n"


# --- per-key help -------------------------------------------------------------------------

_ASSIGN = re.compile(r"^\s*[A-Za-z_]\w*((?:\.\w+)+)\s*=\s*(.+?)\s*$")
_CALL = re.compile(r"^(?:\w+\.)*(\w+)\((.*)\)$")


def _split_comment(rhs: str) -> tuple[str, str]:
  """'value  # comment' -> ('value', 'comment'), ignoring '#' inside quotes."""
  quote = None
  for i, ch in enumerate(rhs):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "#":
      return rhs[:i].strip(), rhs[i + 1:].strip()
  return rhs.strip(), ""


def _function_comments(path: Path) -> dict[str, list[tuple[str, str, str]]]:
  """{function: [(dotted key, value source, comment), ...]} of `x.a.b = value  # comment`
  lines (a comment block just above a line counts too)."""
  try:
    source = path.read_text()
    tree = ast.parse(source)
  except (OSError, SyntaxError):
    return {}
  lines = source.splitlines()
  out: dict[str, list[tuple[str, str, str]]] = {}
  for node in ast.walk(tree):
    if not isinstance(node, ast.FunctionDef):
      continue
    entries = out.setdefault(node.name, [])
    above: list[str] = []
    for line in lines[node.lineno:node.end_lineno]:
      stripped = line.strip()
      if stripped.startswith("#"):
        above.append(stripped.lstrip("# "))
        continue
      match = _ASSIGN.match(line)
      if match:
        value, comment = _split_comment(match.group(2))
        entries.append((match.group(1)[1:], value, " ".join(above + [comment]).strip()))
      above = []
  return out


def key_help(config_file: str | None = None) -> dict[str, str]:
  """{dotted key: help} from the comments of the files that build a config."""
  files = [_PACKAGE_DIR / "config.py", _PACKAGE_DIR / "defaults.py",
           _PACKAGE_DIR / "distributed.py"]
  if config_file:
    files.append(Path(config_file.partition(":")[0]))
  functions: dict[str, list[tuple[str, str, str]]] = {}
  for f in files:
    functions.update(_function_comments(f))
  prefixes = {"base_config": "", "get_config": ""}
  for _ in range(3):  # sections built by helpers of helpers
    for fn, prefix in list(prefixes.items()):
      for key, value, _comment in functions.get(fn, []):
        call = _CALL.match(value)
        if call and call.group(1) in functions and call.group(1) not in prefixes:
          prefixes[call.group(1)] = f"{prefix}{key}."
  out: dict[str, str] = {}
  for fn, prefix in prefixes.items():
    for key, _value, comment in functions.get(fn, []):
      if comment:
        out[prefix + key] = comment
  return out


# Help for keys whose assignments carry no comment (keys first, then by leaf name).
_FALLBACK_HELP = {
    "seed": "Seed of the run's PRNG (initialisation, sampling, augmentation).",
    "task": "What runs (--help lists the tasks).",
    "model.name": "Encoder: r21d_10, r3d_18, c3d or s3d_g.",
    "model.width": "Channels of the first stage (64 = the paper's; stages double it).",
    "model.predictor_hidden": "Hidden units of auxSKD's predictor MLP.",
    "augment.flip": "Random horizontal flips.",
    "augment.jitter_prob": "Probability of colour jitter per clip.",
    "augment.jitter_per_frame": "Jitter each frame separately (the reference) or the clip once.",
    "clip.clip_len": "Frames per clip.",
    "clip.crop_size": "Spatial crop (square, pixels).",
    "clip.eval_clips": "Clips per video at evaluation (averaged).",
    "clip.max_speed": "Largest playback speed (frame stride) of the pace tasks.",
    "clip.num_segments": "Segments per clip (VSPP); must divide clip_len.",
    "clip.vcop_clips": "Clips per VCOP sample.", "clip.vcop_gap": "Frames between VCOP clips.",
    "data.prefetch": "Batches the loader prepares ahead.",
    "data.train_split": "Split to train on.", "data.test_split": "Split to evaluate on.",
    "eval.init_from": "Checkpoint to evaluate: one of our workdirs or an authors' .pth.",
    "eval.every_epochs": "Run the in-training evaluators every this many epochs.",
    "eval.pretrain_data": "What the checkpoint was pretrained on (reports only).",
    "eval.topk": "Retrieval: the k values of top-k accuracy.",
    "optim.name": "Optimizer (sgd, the reference's, is the one built).",
    "optim.decay_epochs": "Step schedule: decay every this many epochs.",
    "optim.decay_factor": "Step schedule: multiply the rate by this.",
    "optim.warmup_epochs": "Linear warm-up length.",
    "train.checkpoint_every": "Save a checkpoint every this many steps.",
    "train.keep_checkpoints": "Checkpoints kept (oldest deleted).",
    "train.log_every": "Console / metrics.jsonl line every this many steps.",
    "train.num_epochs": "Training length (train.num_steps > 0 overrides it).",
    "batch_size": "Global batch (over all devices).", "learning_rate": "Base learning rate.",
    "momentum": "SGD momentum (auxSKD: the teacher's EMA decay).",
    "weight_decay": "L2 weight decay.", "num_steps": "Training steps.",
    "student_temp": "Softmax temperature of the student's similarities.",
    "teacher_temp": "Softmax temperature of the teacher's similarities.",
    "label_smoothing": "Label smoothing of the cross-entropy.", "dropout": "Dropout rate.",
    "k": "Neighbours of the k-NN classifier.", "every_steps": "Run it every this many steps.",
}


def _value(value: Any) -> str:
  return json.dumps(value, default=str)


def show_config(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
                config_file: str | None = None) -> str:
  """The resolved config, one `key = value` line per key, with the config file's value where a
  flag overrode it and the key's help string."""
  now = flatten(config_lib.json_tree(config))
  base = flatten(config_lib.json_tree(defaults))
  helps = key_help(config_file)
  rows = []
  for key in sorted(now):
    text = _value(now[key])
    if key in base and base[key] != now[key]:
      text += f"  (default {_value(base[key])})"
    help_text = (helps.get(key) or _FALLBACK_HELP.get(key)
                 or _FALLBACK_HELP.get(key.rsplit(".", 1)[-1], ""))
    rows.append((f"{key} = {text}", f"# {help_text}" if help_text else ""))
  header = f"# resolved config of {config_file}" if config_file else "# resolved config"
  return "\n".join([header] + _table(rows, indent=0, continued="# ")) + "\n"
