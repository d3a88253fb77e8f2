"""Linear probe on frozen R(2+1)D-10 features, UCF101 (a cheap extra, SPEC section 8).

  python main.py --config=configs/linear_probe_r21d_ucf101.py --workdir=runs/probe_ucf101 \
    --config.data.data_dir=/data/tfds --config.eval.init_from=runs/vspp_r21d_k100
"""

import ml_collections

from auxskd_jax import defaults
from auxskd_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "linear_probe"
  split = ml_collections.FieldReference(1)
  c.data.split = split
  c.data.name = "ucf101/split" + split.to_str()
  c.eval.batch_size = 8
  c.eval.init_from = ""
  c.eval.pretrain_data = ""
  c.probe = defaults.probe()
  return c
