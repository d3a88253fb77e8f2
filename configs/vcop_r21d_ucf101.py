"""VCOP pretraining of R(2+1)D-10 on UCF101 split 1 (train videos, labels unused; SPEC section
5) with the VCOP reference's settings: 3 clips of 16 frames, 8-frame gaps, 6 orders, head fc7
512 + dropout 0.5 (`auxskd_jax.defaults.vcop()`), SGD lr 0.001, momentum 0.9, weight decay
5e-4, batch 8, 300 epochs at a constant rate (its plateau scheduler is never stepped), random
crop 112 of 128x171 and nothing else (no flip, no jitter).

"auxSKD + VCOP" starts from the auxSKD student (empty, the default, = from scratch):
  python main.py --config=configs/vcop_r21d_ucf101.py --config.data.data_dir=/data/tfds \
    --config.train.init_from=/path/to/runs/auxskd --config.method_chain="auxSKD -> VCOP"
"""

from auxskd_jax import defaults
from auxskd_jax.config import base_config


def get_config():
  config = base_config()
  config.task = "vcop"
  config.method_chain = "VCOP"
  config.data.name = "ucf101/split1"
  config.augment.flip = False
  config.augment.jitter_prob = 0.0
  config.train.batch_size = 8
  config.train.num_epochs = 300
  config.train.init_from = ""
  config.optim.weight_decay = 0.0005
  config.optim.schedule = "constant"
  config.vcop = defaults.vcop()
  return config
