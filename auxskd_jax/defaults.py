"""Default config sections of the methods and evaluations, in one place that imports only
ml_collections, so config files (and `--config` parsing) never import JAX or a model.

Values are the references' (SPEC sections 3-5); each config file states only what its
experiment changes.
"""

from __future__ import annotations

import ml_collections


def auxskd() -> ml_collections.ConfigDict:
  """`config.auxskd`: the reference's values (SPEC section 3)."""
  c = ml_collections.ConfigDict()
  c.queue_size = 15360  # K
  c.momentum = 0.999  # EMA of the teacher
  c.student_temp = 0.1
  c.teacher_temp = 0.02
  # Teacher BN: 'shuffle' (reference: shuffled across devices), 'sync' or 'local'.
  c.teacher_bn = "shuffle"
  return c


def rspnet() -> ml_collections.ConfigDict:
  """`config.rspnet`: the RSPNet reference's values."""
  c = ml_collections.ConfigDict()
  c.embed_dim = 128
  c.queue_size = 16384
  c.momentum = 0.999
  c.temperature = 0.07
  c.margin = 2.0  # on similarities divided by the temperature, as the reference
  c.weight_avid = 1.0
  c.weight_rsp = 1.0
  c.teacher_bn = "shuffle"  # momentum encoder's BN: 'shuffle', 'sync' or 'local'
  return c


def vcop() -> ml_collections.ConfigDict:
  """`config.vcop`: the VCOP reference's head."""
  c = ml_collections.ConfigDict()
  c.hidden = 512  # fc7 width
  c.dropout = 0.5
  return c


def finetune() -> ml_collections.ConfigDict:
  """`config.finetune`."""
  f = ml_collections.ConfigDict()
  f.keep_head = False  # True: also take the checkpoint's `linear` head when its shape fits
  f.validate = True  # clip-level validation every eval.every_epochs epochs
  f.val_split = ""  # '' = data.test_split (UCF101/HMDB51 have no separate validation split)
  f.val_clips = 1  # clips per video for the periodic validation (1 = the centre clip)
  f.label_smoothing = 0.0
  return f


def probe() -> ml_collections.ConfigDict:
  """`config.probe`: the linear probe (AdamW on standardised features)."""
  p = ml_collections.ConfigDict()
  p.per_clip = False
  p.steps = 2000
  p.learning_rate = 1e-3
  p.weight_decay = 1e-4
  p.batch_size = 256
  return p


def knn() -> ml_collections.ConfigDict:
  """`config.eval.knn`: the k-NN monitor of pretraining (evaluator `knn`), top-1 of a k-NN
  classifier on frozen encoder features of a labelled set, logged with the loss."""
  k = ml_collections.ConfigDict()
  k.data_dir = ""  # '' = data.data_dir
  k.data_name = ""  # a labelled prepared set, e.g. 'ucf101/split1'; '' = data.name
  k.train_split = "train"  # the gallery (the k-NN's "training" set)
  k.test_split = "test"  # the queries
  k.k = 20
  # Each neighbour votes with weight exp(cosine / temperature) (Wu et al. 2018; DINO's k-NN);
  # 0 = a plain majority vote.
  k.temperature = 0.07
  k.num_clips = 1  # uniformly spaced centre clips per video, features averaged
  k.max_videos = 1000  # per split, evenly spaced over it (cost cap); 0 = every video
  k.every_steps = 1000
  k.batch_size = 0  # videos per host batch; 0 = eval.batch_size
  k.feature_layer = "pool"  # models.FEATURE_LAYERS
  return k
