"""The pipeline task: a tiny chain (VSPP -> VSPP from its checkpoint -> retrieval, and a
random-init retrieval) runs end to end; SIGKILL in its middle stage, then a restart, gives the
same table, also with the workdir moved before the restart; a finished pipeline (or a copy
of its workdir) trains nothing and prints its table; a changed stage is refused. And configs/paper_k100.py (and its variants) builds, every stage's values valid."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from auxskd_jax import config as config_lib
from auxskd_jax import tasks
from auxskd_jax.tasks import pipeline
import multiproc
import tiny

_ROOT = tiny.ROOT
TINY_PIPELINE = os.path.join(_ROOT, "tests", "tiny_pipeline.py")
STAGES = ["vspp", "vspp2", "ret_split1", "ret_random_split1"]


def _load(path, *args):
  import importlib.util

  spec = importlib.util.spec_from_file_location("_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _tiny_pipeline(data_dir):
  config = _load(TINY_PIPELINE)
  config.data.data_dir = data_dir  # one data_dir for every stage
  return config


def _main(workdir, data_dir):
  return [sys.executable, os.path.join(_ROOT, "main.py"), f"--config={TINY_PIPELINE}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]


@pytest.mark.parametrize("variant", [None, "vcop", "pace", "rspnet"])
def test_paper_config_builds_and_its_stages_are_valid(variant):
  config = _load(os.path.join(_ROOT, "configs", "paper_k100.py"), *([variant] if variant else []))
  x = variant or "vspp"
  stages = pipeline.check_structure(config)
  names = [s.name for s in stages]
  assert names[:3] == ["auxskd", f"auxskd_{x}", x]
  assert len(names) == 3 + 3 * 4
  by_name = {s.name: s.config for s in stages}
  assert by_name[f"auxskd_{x}"].train.init_from == "stage:auxskd"
  assert by_name[f"auxskd_{x}"].data.name == "kinetics/k100"
  assert by_name[x].train.init_from == ""
  ft = by_name[f"ft_hmdb51_auxskd_{x}_split1"]
  assert (ft.task, ft.data.name, ft.train.init_from) == ("finetune", "hmdb51/split1",
                                                         f"stage:auxskd_{x}")
  assert ft.clip.eval_clips == 10
  ret = by_name["ret_ucf101_random_split1"]
  assert (ret.task, ret.eval.init_from, ret.eval.feature_layer) == ("retrieval", "",
                                                                    "conv5_maxpool")
  config.splits = "1,2,3"
  names = [s.name for s in pipeline.stages_of(config)]
  assert len(names) == 3 + 3 * 4 * 3 and "ret_hmdb51_vspp_split3" in names or variant
  split3 = {s.name: s.config for s in pipeline.stages_of(config)}[
      f"ft_ucf101_auxskd_{x}_split3"]
  assert split3.data.name == "ucf101/split3"


def test_paper_config_shares_data_dir_and_seed_with_every_stage():
  config = _load(os.path.join(_ROOT, "configs", "paper_k100.py"))
  config.data.data_dir, config.seed = "/data/tfds", 3
  for stage in pipeline.stages_of(config):
    assert (stage.config.data.data_dir, stage.config.seed) == ("/data/tfds", 3), stage.name


def test_summary_averages_splits_and_names_datasets(tmp_path):
  from auxskd_jax.evaluate import summary

  def record(task, chain, data, **metrics):
    return {"task": task, "method_chain": chain, "downstream": data, "metrics": metrics,
            "pretrain": {"accuracy_speed": 0.5} if chain != "random init" else {}}

  table = summary.collect([
      record("finetune", "auxSKD -> VSPP", "ucf101/split1", video_top1=0.6),
      record("finetune", "auxSKD -> VSPP", "ucf101/split2", video_top1=0.8),
      record("retrieval", "auxSKD -> VSPP", "ucf101/split1", top1=0.2, top5=0.4),
      record("finetune", "auxSKD -> VSPP", "hmdb51/split1", video_top1=0.3),
      record("finetune", "random init", "ucf101/split1", video_top1=0.1)])
  assert [(r["init"], r["dataset"]) for r in table] == [
      ("auxSKD -> VSPP", "ucf101"), ("auxSKD -> VSPP", "hmdb51"), ("random init", "ucf101")]
  assert table[0]["finetune"]["video_top1"] == pytest.approx(0.7)
  assert table[0]["splits"] == ["split1", "split2"] and table[0]["retrieval"]["top5"] == 0.4
  md = summary.markdown(table, "t")
  assert "| Initialisation | Dataset |" in md and "| auxSKD -> VSPP | ucf101 | 70.0 |" in md
  assert "(speed, %)" in md and "| random init | ucf101 | 10.0 |" in md
  assert os.path.getsize(summary.plot(str(tmp_path / "r.png"), table, "t")) > 0


def test_paper_config_without_data_fails_in_one_line(tmp_path):
  config = _load(os.path.join(_ROOT, "configs", "paper_k100.py"))
  with pytest.raises(config_lib.ConfigError, match=r"^stage auxskd: --config\.data\.data_dir"):
    tasks.get("pipeline").validate(config)
  config.data.data_dir = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match="no prepared dataset 'kinetics/k100'") as e:
    tasks.get("pipeline").validate(config)
  assert "\n" not in str(e.value)


def test_bad_references_and_order_are_refused(tiny_prepared):
  config = _tiny_pipeline(tiny_prepared[0])
  config.stages.vspp.train.init_from = "stage:vspp2"
  with pytest.raises(config_lib.ConfigError, match=r"stages\.vspp\.train\.init_from: "
                     r"stage:'vspp2' names no earlier stage"):
    pipeline.check_structure(config)
  config = _tiny_pipeline(tiny_prepared[0])
  config.stages.ret_random.eval.init_from = "stage:ret"
  with pytest.raises(config_lib.ConfigError, match="runs once per split"):
    pipeline.check_structure(config)
  config = _tiny_pipeline(tiny_prepared[0])
  config.order = "vspp,ret"
  with pytest.raises(config_lib.ConfigError, match=r"--config\.order: .* every stage once"):
    pipeline.check_structure(config)
  config = _tiny_pipeline(tiny_prepared[0])
  config.stages.vspp2.train.batch_size = 6  # not a multiple of the 4 devices
  with pytest.raises(config_lib.ConfigError,
                     match=r"^stage vspp2: --config\.stages\.vspp2\.train\.batch_size"):
    tasks.get("pipeline").validate(config)


def _table(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    rows = json.load(f)["rows"]
  with open(os.path.join(workdir, "results.md")) as f:
    return rows, f.read()


@pytest.mark.slow
def test_pipeline_end_to_end_kill_resume_rerun_and_refusal(tiny_prepared, tmp_path, capsys):
  data_dir, _ = tiny_prepared
  task = tasks.get("pipeline")
  config = _tiny_pipeline(data_dir)
  task.validate(config)

  # Uninterrupted, in-process (the path main.py takes: resume rule, config.json, run).
  full = str(tmp_path / "full")
  tasks.check_workdir(task, config, full)
  tasks.claim_workdir(task, config, full)
  result = task.run(config, full)
  rows, md = _table(full)
  assert [r["init"] for r in rows] == ["VSPP -> VSPP", "random init"]
  assert set(rows[0]["retrieval"]) == {"top1", "top5"} and rows[0]["splits"] == ["split1"]
  assert {"accuracy_speed", "accuracy_segment"} <= set(rows[0]["pretrain"])
  assert rows[1]["pretrain"] == {}
  assert "VSPP -> VSPP" in md and os.path.getsize(os.path.join(full, "results.png")) > 0
  for name in STAGES:
    assert os.path.isfile(os.path.join(full, name, pipeline.DONE)), name
  saved = json.load(open(os.path.join(full, "vspp2", "config.json")))
  assert saved["train"]["init_from"] == os.path.join(full, "vspp")
  assert result["rows"] == rows

  # Run again: every stage is skipped, nothing trains, the table is printed.
  capsys.readouterr()
  metrics = os.path.join(full, "vspp2", "metrics.jsonl")
  before = open(metrics).read()
  png = os.path.join(full, "results.png")
  drawn = os.stat(png).st_mtime_ns
  again = task.run(config, full)
  out = capsys.readouterr().out
  assert out.count("done before, skipped") == len(STAGES) and "starting" not in out
  assert md.strip() in out
  assert open(metrics).read() == before and again["rows"] == rows
  assert os.stat(png).st_mtime_ns == drawn  # the same table: its plot is kept, not redrawn

  # A copy of the workdir is the same finished run: the paths the pipeline derives from
  # `stage:` references are compared relative to its workdir, so nothing is redone.
  copied = str(tmp_path / "copied")
  shutil.copytree(full, copied)
  tasks.check_workdir(task, config, copied)
  capsys.readouterr()
  assert task.run(config, copied)["rows"] == rows
  assert capsys.readouterr().out.count("done before, skipped") == len(STAGES)

  # A changed stage is refused by the resume rule, naming the stage's key; listed, it passes.
  changed = _tiny_pipeline(data_dir)
  changed.stages.vspp2.train.num_steps = 7
  with pytest.raises(config_lib.ConfigError,
                     match=r"stages\.vspp2\.train\.num_steps: 6 -> 7.*"
                           r"--config\.resume_overrides=stages\.vspp2\.train\.num_steps$"):
    tasks.check_workdir(task, changed, full)
  changed.resume_overrides = "stages.vspp2.train.num_steps"
  tasks.check_workdir(task, changed, full)
  moved = _tiny_pipeline(data_dir)
  moved.data.data_dir = data_dir + "/"  # a free key: not a change
  tasks.check_workdir(task, moved, full)
  # The listed change re-runs that stage only (from its checkpoint); its followers warn.
  capsys.readouterr()
  task.run(changed, full)
  out = capsys.readouterr().out
  assert "vspp2: vspp starting" in out and out.count("done before, skipped") == 3
  assert "ret_split1: WARNING: it started from an earlier run of vspp2" in out
  assert json.load(open(os.path.join(full, "vspp2", pipeline.DONE)))["result"]["step"] == 7

  # SIGKILL in the middle stage of a main.py run, then a restart: the same table.
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_main(killed, data_dir), cwd=_ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = os.path.join(killed, "vspp2", "checkpoints", "2")
  still_running = multiproc.kill_once_exists(proc, first, timeout=600)
  assert still_running, "the pipeline ended before it could be killed in its middle stage"
  assert os.path.isfile(os.path.join(killed, "vspp", pipeline.DONE))
  assert not os.path.isfile(os.path.join(killed, "vspp2", pipeline.DONE))
  # The interrupted workdir is moved before the restart: vspp2 resumes from its checkpoints.
  relocated = str(tmp_path / "relocated")
  os.rename(killed, relocated)
  capsys.readouterr()
  task.validate(config)  # the restart, in-process: what main.py does
  tasks.check_workdir(task, config, relocated)
  tasks.claim_workdir(task, config, relocated)
  task.run(config, relocated)
  out = capsys.readouterr().out
  assert "vspp: done before, skipped" in out and "vspp2: vspp starting" in out
  assert _table(relocated) == (rows, md)
