"""Per-stage configs of the demo: the demo config with one task's fields filled in.

Every stage is an ordinary task config (the same runners as real experiments use), so the
demo exercises exactly the code paths of `python main.py --config=configs/<task>.py`.
"""

from __future__ import annotations

import copy
import os

import ml_collections

from auxskd_jax import defaults

ACTIONS = "video_folder/demo_actions"  # labelled train/test, for fine-tuning and retrieval
POOL = "video_folder/demo_pool"  # unlabelled, for pretraining

# Initialisations compared downstream: name in reports -> pretraining stage ('' = none).
INITS: dict[str, str] = {
    "random init": "",
    "VSPP": "vspp",
    "auxSKD -> VSPP": "auxskd_vspp",
}


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy shrunk to a smoke test of the pipeline: a few tiny videos, a few steps per stage,
  4-frame 16x16 clips and R3D-10 (which compiles in half the time of R(2+1)D-10 on a CPU;
  compilation, not training, is what a smoke run spends its time on, hence also unoptimised
  XLA codegen: `xla_fast_compile`)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.xla_fast_compile = True
    d = c.demo
    d.size, d.num_frames = 20, 12
    d.train_per_class, d.test_per_class = 2, 1
    d.pool_synthetic, d.pool_real = 12, 4
    for stage in (d.auxskd, d.vspp, d.finetune):
      stage.batch_size, stage.num_steps = 8, 2
    d.probe_steps = 10
    c.model.name = "r3d_10"
    c.clip.clip_len, c.clip.num_segments, c.clip.max_speed = 4, 2, 2
    c.clip.crop_size, c.clip.eval_clips = 16, 2
    c.auxskd.queue_size = 64
    c.eval.batch_size = 8
    c.train.log_every = 1
  return c


def prepare_config(source_dir: str, data_dir: str, name: str, labelled: bool,
                   seed: int) -> ml_collections.ConfigDict:
  """The `prepare` task for one generated folder (frames kept at their generated size)."""
  c = ml_collections.ConfigDict()
  c.task = "prepare"
  c.seed = seed
  c.builder = "video_folder"
  c.source_dir = source_dir
  c.data_dir = data_dir
  c.splits_dir = ""
  c.split = 1
  c.subset = "k100"
  c.labelled = labelled
  c.list_files = ""
  c.class_names_file = ""
  c.config_name = name.split("/", 1)[1]
  c.resize = ()
  c.jpeg_quality = 95
  c.workers = 1
  c.cache_dir = ""
  return c


def _base(config: ml_collections.ConfigDict, task: str, data_dir: str, name: str,
          chain: str) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  with c.unlocked():
    c.task = task
    c.method_chain = chain
    c.data.data_dir = data_dir
    c.data.name = name
    c.data.train_split = "train"
    c.data.test_split = "test"
  return c


def _training_config(config: ml_collections.ConfigDict, task: str, data_dir: str, name: str,
                     stage: ml_collections.ConfigDict, jitter_prob: float, init_from: str,
                     chain: str) -> ml_collections.ConfigDict:
  """A training task with one demo stage's batch size, steps and learning rate."""
  c = _base(config, task, data_dir, name, chain)
  with c.unlocked():
    c.train.batch_size = stage.batch_size
    c.train.num_steps = stage.num_steps
    c.optim.learning_rate = stage.learning_rate
    c.train.init_from = init_from
    c.augment.jitter_prob = jitter_prob
  return c


def pretrain_config(config: ml_collections.ConfigDict, task: str, data_dir: str,
                    init_from: str, chain: str) -> ml_collections.ConfigDict:
  """`auxskd` or `vspp` on the unlabelled pool, with the demo's steps and learning rate."""
  stage = config.demo.auxskd if task == "auxskd" else config.demo.vspp
  c = _training_config(config, task, data_dir, POOL, stage, config.demo.pretrain_jitter_prob,
                       init_from, chain)
  with c.unlocked():
    # The k-NN monitor on the labelled actions: is pretraining learning what the classes need?
    c.evaluators = ("knn",)
    c.eval.knn = defaults.knn()
    c.eval.knn.data_name = ACTIONS
    c.eval.knn.every_steps = max(1, stage.num_steps // config.demo.knn_points)
  return c


def finetune_config(config: ml_collections.ConfigDict, data_dir: str, init_from: str,
                    chain: str) -> ml_collections.ConfigDict:
  return _training_config(config, "finetune", data_dir, ACTIONS, config.demo.finetune,
                          config.demo.finetune_jitter_prob, init_from, chain)


def retrieval_config(config: ml_collections.ConfigDict, data_dir: str, init_from: str,
                     chain: str) -> ml_collections.ConfigDict:
  c = _base(config, "retrieval", data_dir, ACTIONS, chain)
  with c.unlocked():
    c.eval.init_from = init_from
  return c


def probe_config(config: ml_collections.ConfigDict, data_dir: str, init_from: str,
                 chain: str) -> ml_collections.ConfigDict:
  """A linear classifier on the frozen encoder's video features (`demo.probe_steps` steps)."""
  c = _base(config, "linear_probe", data_dir, ACTIONS, chain)
  with c.unlocked():
    c.eval.init_from = init_from
    c.probe = defaults.probe()
    c.probe.steps = config.demo.probe_steps
  return c


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `demo_data` stage: the demo's generated videos, prepared."""
  c = ml_collections.ConfigDict()
  c.task = "demo_data"
  c.seed = int(config.seed)
  for key in ("size", "num_frames", "train_per_class", "test_per_class", "pool_synthetic",
              "pool_real"):
    c[key] = config.demo[key]
  return c


def pipeline_config(config: ml_collections.ConfigDict,
                    workdir: str) -> ml_collections.ConfigDict:
  """The demo as a `pipeline` (tasks/pipeline.py) in `workdir`: the data, three pretraining
  runs (VSPP, auxSKD, auxSKD -> VSPP), then fine-tuning, retrieval and a linear probe from
  each of INITS. Its stages are validated as they start: the first one makes the data the
  others read."""
  tfds_dir = os.path.join(os.path.abspath(workdir), "data", "tfds")
  st = {"data": data_config(config),
        "pretrain/vspp": pretrain_config(config, "vspp", tfds_dir, "", "VSPP"),
        "pretrain/auxskd": pretrain_config(config, "auxskd", tfds_dir, "", "auxSKD"),
        "pretrain/auxskd_vspp": pretrain_config(config, "vspp", tfds_dir,
                                                "stage:pretrain/auxskd", "auxSKD -> VSPP")}
  for init, source in INITS.items():
    ref, slug, chain = (f"stage:pretrain/{source}", source, init) if source else ("", "random",
                                                                                  "")
    st[f"finetune/{slug}"] = finetune_config(config, tfds_dir, ref, chain)
    st[f"retrieval/{slug}"] = retrieval_config(config, tfds_dir, ref, chain)
    st[f"linear_probe/{slug}"] = probe_config(config, tfds_dir, ref, chain)
  c = ml_collections.ConfigDict()
  c.task = "pipeline"
  c.seed = int(config.seed)
  c.resume_overrides = ""
  c.order = ",".join(st)
  c.splits = ""
  c.validate_at_start = True
  c.stages = ml_collections.ConfigDict()
  for name, stage in st.items():
    c.stages[name] = stage
  return c
