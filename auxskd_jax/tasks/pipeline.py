"""The `pipeline` task: a chain of other tasks' runs, each in its own sub-workdir, and one
results table for the whole chain (configs/paper_k100.py is the paper's protocol as one).

`config.stages` holds named stages; each is the whole config of another task (e.g. a config
file's `get_config()` with overrides) and runs in `<workdir>/<stage name>/`. They run in the
order `config.order` lists them (comma-separated names; a ConfigDict keeps its keys sorted, not
in the order they were added), or in name order when `order` is empty.

- Checkpoints pass by name: a stage's `train.init_from` or `eval.init_from` may be
  `"stage:<name>"`, the workdir of the earlier stage `<name>` (its method_chain is taken too
  when the stage sets none).
- `config.splits` ("1,2,3"; "" = as written): a stage with a `data.split` key (the fine-tuning,
  retrieval and probe configs) runs once per split, as `<name>_split<k>`; the table reports the
  mean over the splits.
- Every stage's `validate` runs before anything is written (an `init_from` of a stage that has
  not run yet is checked, with the real checkpoint, just before the stage starts).
  `validate_at_start=True` validates each stage only as it starts, for a pipeline whose first
  stage makes the data the others read (the demo's); values are still checked up front.
- A stage that finished leaves `stage_done.json` (its task's result and, for pretext training,
  its last training metrics) and is skipped when the pipeline runs again; an interrupted one
  resumes from its own checkpoints (the task's resume rule, in its sub-workdir).
- The resume rule covers every stage: a stage whose config changed is refused, naming
  `stages.<name>.<key>`, unless `--config.resume_overrides` lists that (or the stage's own
  `resume_overrides` lists `<key>`); a finished stage whose config changed so is run again
  (resuming from its checkpoints). Finished stages that started from it are not redone (a
  warning names them; delete their sub-workdirs to redo them). Process-wide settings
  (prng_impl, compilation cache, xla_fast_compile, xla_cpu_ynnpack_ops, xla_cpu_scheduler,
  distributed) are the pipeline config's own, not the stages'.
- A `stage:<name>` reference becomes an absolute path for the stage's task, but the resume
  rule and the finished-stage check compare it relative to the pipeline workdir: a moved or
  copied workdir skips and resumes its stages as it would in place.
- At the end: results.md, results.json and results.png in the workdir, one row per
  initialisation (method_chain) and downstream dataset (`evaluate.summary`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, Iterable

import ml_collections

from auxskd_jax import config as config_lib
from auxskd_jax import tasks
from auxskd_jax.errors import ConfigError, require
from auxskd_jax.evaluate import summary
from auxskd_jax.tasks import Task, common
from auxskd_jax.trees import flatten

DONE = "stage_done.json"
REF = "stage:"
# Pipeline keys a resumed pipeline may change: more splits add stages, the rest is per stage.
FREE_KEYS = ("stages", "splits")
DOWNSTREAM = tuple(summary.PARTS)


@dataclasses.dataclass
class Stage:
  """One run of the chain: `config.stages.<key>` (for one split when `splits` is set)."""
  name: str  # its sub-workdir
  key: str  # where its config is: config.stages.<key>
  config: ml_collections.ConfigDict  # as configured ("stage:" references unresolved)
  task: Task


def _say(message: str) -> None:
  print(f"[pipeline] {message}", flush=True)


def _splits(config: ml_collections.ConfigDict) -> list[int]:
  text = str(config.get("splits", "") or "").strip()
  if not text:
    return []
  try:
    splits = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    splits = []
  require(bool(splits) and all(s >= 1 for s in splits) and len(set(splits)) == len(splits),
          "splits", f"{text!r}: give official split numbers, comma-separated, e.g. 1,2,3.")
  return splits


def _order(config: ml_collections.ConfigDict) -> list[str]:
  text = str(config.get("order", "") or "")
  order = [n.strip() for n in text.split(",") if n.strip()]
  if not order:
    return list(config.stages)
  names = set(config.stages)
  require(sorted(order) == sorted(names), "order",
          f"{text!r} must list every stage once, in run order; the stages are "
          f"{', '.join(sorted(names))}.")
  return order


def stages_of(config: ml_collections.ConfigDict) -> list[Stage]:
  """The pipeline's runs in order, one per stage (per split for stages with `data.split`)."""
  require("stages" in config and len(config.stages) > 0, "stages",
          "a pipeline needs its stages: a ConfigDict of named task configs, in run order.")
  splits = _splits(config)
  out: list[Stage] = []
  for key in _order(config):
    c = config.stages[key]
    require(isinstance(c, ml_collections.ConfigDict) and "task" in c, f"stages.{key}",
            "each stage is a task's whole config (a config file's get_config()).")
    require(c.task != "pipeline", f"stages.{key}.task", "a stage cannot be a pipeline.")
    try:
      task = tasks.get(c.task)
    except ConfigError as e:
      raise _in_stage(e, key, config) from None
    if splits and "split" in c.get("data", {}):
      for split in splits:
        sc = copy.deepcopy(c)
        sc.data.split = split  # a FieldReference: data.name follows it
        require(summary.dataset_of(str(sc.data.get("name", "")))[1] == f"split{split}",
                f"stages.{key}.data.name", "must follow data.split (a FieldReference, as in "
                "configs/finetune_r21d_ucf101.py) for the stage to run once per split.")
        out.append(Stage(f"{key}_split{split}", key, sc, task))
    else:
      out.append(Stage(key, key, c, task))
  return out


def _shared_keys(config: ml_collections.ConfigDict) -> dict[str, Any]:
  tree = flatten(config_lib.json_tree(config))
  return {k: v for k, v in tree.items() if not k.startswith("stages.")}


def _in_stage(error: ConfigError, key: str, config: ml_collections.ConfigDict) -> ConfigError:
  """`error` of stage `key`, its flags named as the pipeline's (`--config.stages.<key>.x`;
  keys the pipeline sets for every stage, like data.data_dir, keep their own name)."""
  shared = _shared_keys(config)
  stage = config.stages[key] if "stages" in config and key in config.stages else None

  def flag(match: re.Match) -> str:
    name = match.group(1)
    try:
      same = stage is not None and name in shared and _get(stage, name) == shared[name]
    except (KeyError, AttributeError):
      same = False
    return match.group(0) if same else f"--config.stages.{key}.{name}"

  text = re.sub(r"--config\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", flag, str(error))
  return ConfigError(f"stage {key}: {text}")


def _get(c: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    c = c[part]
  return c


def _refs(c: ml_collections.ConfigDict) -> dict[str, str]:
  """{init key: referenced stage} of a stage config's `stage:<name>` values."""
  out = {}
  for key in common.INIT_KEYS:
    section, name = key.split(".")
    value = c[section].get(name, "") if section in c else ""
    if isinstance(value, str) and value.startswith(REF):
      out[key] = value[len(REF):]
  return out


def resolve(stage: Stage, stages: list[Stage], workdir: str | None) -> ml_collections.ConfigDict:
  """The stage's config with its `stage:<name>` references made paths under `workdir` (None:
  '' = a random init, for the structure checks before the referenced stage has run)."""
  c = copy.deepcopy(stage.config)
  by_key = {s.key: s for s in stages}
  for key, target in _refs(c).items():
    section, name = key.split(".")
    c[section][name] = "" if workdir is None else os.path.join(workdir, by_key[target].name)
    if not c.get("method_chain", "") and "method_chain" in c:
      c.method_chain = by_key[target].config.get("method_chain", "")
  return c


def _as_saved(c: ml_collections.ConfigDict, stage: Stage, stages: list[Stage],
              saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """`c` (`resolve`d) with each `stage:<name>` path replaced by the flat `saved` config's
  value where that is the same stage's sub-workdir under another pipeline workdir: the paths
  a pipeline derives are compared relative to its workdir, so a moved or copied workdir
  resumes and skips as it would in place."""
  c = copy.deepcopy(c)
  by_key = {s.key: s for s in stages}
  for key, target in _refs(stage.config).items():
    old = saved.get(key)
    if isinstance(old, str) and os.path.basename(os.path.normpath(old)) == by_key[target].name:
      section, name = key.split(".")
      c[section][name] = old
  return c


def _saved_config(stage_dir: str) -> dict[str, Any]:
  """The flat config.json of a stage's sub-workdir ({} when absent or unreadable: the resume
  rule then says so itself)."""
  try:
    with open(os.path.join(stage_dir, "config.json")) as f:
      return flatten(json.load(f))
  except (OSError, ValueError):
    return {}


def _check_refs(stages: list[Stage]) -> None:
  earlier: dict[str, Stage] = {}
  for stage in stages:
    for key, target in _refs(stage.config).items():
      flag = f"stages.{stage.key}.{key}"
      require(target in earlier, flag,
              f"{REF}{target!r} names no earlier stage; use {REF}<name> of a stage above this "
              f"one ({', '.join(sorted(earlier)) or 'none'}).")
      require(earlier[target].name == target, flag,
              f"stage {target!r} runs once per split; start from a stage that runs once.")
    earlier[stage.key] = stage


def check_structure(config: ml_collections.ConfigDict) -> list[Stage]:
  """The checks that read no file: the order, the stages' tasks, their references and every
  stage's values (`common.check_values`); returns the stages."""
  config_lib.resume_overrides(config)
  stages = stages_of(config)
  _check_refs(stages)
  for stage in stages:
    try:
      common.check_values(resolve(stage, stages, None))
    except ConfigError as e:
      raise _in_stage(e, stage.key, config) from None
  return stages


def validate(config: ml_collections.ConfigDict) -> None:
  """`check_structure`, then every stage's own `validate` (a reference to a stage that has
  not run yet validated as a random init); nothing is written."""
  stages = check_structure(config)
  if config.get("validate_at_start", False):
    return
  for stage in stages:
    _validate_stage(stage, resolve(stage, stages, None), config)


def _validate_stage(stage: Stage, c: ml_collections.ConfigDict,
                    config: ml_collections.ConfigDict) -> None:
  try:
    stage.task.validate(c)
  except ConfigError as e:
    raise _in_stage(e, stage.key, config) from None


def _allow(stage: Stage, allow: Iterable[str]) -> list[str] | None:
  """The keys stage `stage` may change on resume: the pipeline's `stages.<key>.x` entries as
  `x`, and the stage's own resume_overrides; None: the whole stage may change."""
  allow = list(allow)
  if "stages" in allow or f"stages.{stage.key}" in allow:
    return None
  prefix = f"stages.{stage.key}."
  return [a[len(prefix):] for a in allow if a.startswith(prefix)] + \
      config_lib.resume_overrides(stage.config)


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 allow: Iterable[str] | None = None) -> None:
  """The resume rule for the pipeline and every stage's sub-workdir (reads only)."""
  allow = list(config_lib.resume_overrides(config) if allow is None else allow)
  config_lib.check_resume(config, workdir, allow + list(FREE_KEYS))
  stages = stages_of(config)
  for stage in stages:
    _check_stage(stage, resolve(stage, stages, os.path.abspath(workdir)), workdir, allow,
                 stages)


def _check_stage(stage: Stage, c: ml_collections.ConfigDict, workdir: str,
                 allow: list[str], stages: list[Stage]) -> None:
  stage_allow = _allow(stage, allow)
  if stage_allow is not None:
    stage_dir = os.path.join(workdir, stage.name)
    tasks.check_workdir(stage.task, _as_saved(c, stage, stages, _saved_config(stage_dir)),
                        stage_dir, allow=stage_allow, prefix=f"stages.{stage.key}.")


def _read_done(stage_dir: str) -> dict[str, Any] | None:
  path = os.path.join(stage_dir, DONE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_done(stage_dir: str, record: dict[str, Any]) -> None:
  import jax

  if jax.process_index() != 0:
    return
  os.makedirs(stage_dir, exist_ok=True)
  path = os.path.join(stage_dir, DONE)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2, sort_keys=True, default=str)
  os.replace(path + ".tmp", path)


def _input_names(stage: Stage, stages: list[Stage]) -> list[str]:
  """The sub-workdir names of the stages `stage` starts from."""
  by_key = {s.key: s for s in stages}
  return [by_key[t].name for t in _refs(stage.config).values()]


def _run_stage(stage: Stage, c: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               workdir: str, allow: list[str], stages: list[Stage],
               done: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Runs one stage through the path main.py takes: validate (again only when it starts from
  an earlier stage, whose checkpoint now exists), the resume rule, config.json, run."""
  stage_dir = os.path.join(workdir, stage.name)
  if _refs(stage.config) or config.get("validate_at_start", False):
    _validate_stage(stage, c, config)
  _check_stage(stage, c, workdir, allow, stages)
  tasks.claim_workdir(stage.task, c, stage_dir)
  _say(f"{stage.name}: {c.task} starting")
  t0 = time.time()
  result = stage.task.run(c, stage_dir)
  record = {"stage": stage.name, "task": c.task, "config": config_lib.json_tree(c),
            "result": result, "seconds": round(time.time() - t0, 1), "finished": time.time(),
            "inputs": {t: done[t].get("finished") for t in _input_names(stage, stages)}}
  if stage.task.name not in DOWNSTREAM and c.task != "prepare":
    record["final"] = summary.last_train_metrics(stage_dir)  # pretext training
  _write_done(stage_dir, record)
  _say(f"{stage.name}: finished in {record['seconds']:.0f}s")
  return json.loads(json.dumps(record, default=str))


def run(config: ml_collections.ConfigDict, workdir: str, *,
        describe: Callable[[dict[str, dict[str, Any]]], tuple[str, dict[str, Any]]] | None = None
        ) -> dict[str, Any]:
  """Runs the stages not finished before, in order; writes and prints the results table.
  `describe(stage records)`: the table's header and extra info (the demo's), else generic."""
  t_start = time.time()
  workdir = os.path.abspath(workdir)
  allow = config_lib.resume_overrides(config)
  stages = stages_of(config)
  done: dict[str, dict[str, Any]] = {}
  for stage in stages:
    c = resolve(stage, stages, workdir)
    before = _read_done(os.path.join(workdir, stage.name))
    saved = flatten(before["config"]) if before is not None else {}
    if before is not None and not config_lib.changed_keys(
        saved, _as_saved(c, stage, stages, saved)):
      _say(f"{stage.name}: done before, skipped")
      stale = [t for t in _input_names(stage, stages)
               if before.get("inputs", {}).get(t) != done[t].get("finished")]
      if stale:
        _say(f"{stage.name}: WARNING: it started from an earlier run of {', '.join(stale)}; "
             f"delete {os.path.join(workdir, stage.name)} to redo it")
      done[stage.name] = before
      continue
    done[stage.name] = _run_stage(stage, c, config, workdir, allow, stages, done)
  table = summary.collect(_downstream(stages, done))
  splits = sorted({s for r in table for s in r["splits"]})
  header = (f"Pipeline of {len(stages)} stages"
            + (f"; downstream metrics are the mean over {', '.join(splits)}"
               if len(splits) > 1 else "") + ".")
  info = {"stages": [s.name for s in stages], "seconds": round(time.time() - t_start, 1)}
  if describe is not None:
    header, extra = describe(done)
    info.update(extra)
  import jax

  paths = {}
  if jax.process_index() == 0 and table:
    paths = summary.write(workdir, table, header, info)
    with open(paths["md"]) as f:
      print(f.read(), flush=True)
  _say(f"done in {info['seconds']:.0f}s" + (f"; results in {paths['md']}" if paths else ""))
  return {"rows": table, "info": info, "paths": paths, "stages": done}


def _downstream(stages: list[Stage], done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
  """The downstream stages' records, each with the end metrics of the pretext stage it
  started from."""
  by_key = {s.key: s for s in stages}
  out = []
  for stage in stages:
    record = done[stage.name]
    if record["task"] not in DOWNSTREAM:
      continue
    targets = list(_refs(stage.config).values())
    final = done[by_key[targets[0]].name].get("final", {}) if targets else {}
    out.append({**record["result"], "pretrain": final})
  return out


TASK = Task("pipeline", validate, run, check_resume=check_resume)
