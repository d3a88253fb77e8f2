"""VSPP pretraining of R(2+1)D-10 (SPEC section 4): batch 30, SGD lr 0.001, momentum 0.9,
wd 0.005, x0.1 every 6 epochs, 20 epochs, every video visited 10 times an epoch; 4 speeds x 4
segments (the optimizer and clip values are `base_config()`'s, the paper's).

The paper initialises the encoder from the auxSKD student: pass that run's workdir,
  --config.train.init_from=/path/to/runs/auxskd --config.method_chain="auxSKD -> VSPP"
Empty (the default) trains VSPP from scratch. On Kinetics-100 by default; `:ucf101` after the
file name (`--config=configs/vspp_r21d_k100.py:ucf101`) pretrains on UCF101 split 1's train
videos instead (labels unused).
"""

from auxskd_jax.config import base_config

DATA = {"k100": "kinetics/k100", "ucf101": "ucf101/split1"}


def get_config(dataset: str | None = None):
  config = base_config()
  config.task = "vspp"
  config.method_chain = "VSPP"
  config.data.name = DATA[dataset or "k100"]
  config.train.repeats_per_epoch = 10  # the paper visits every video 10 times an epoch
  config.train.init_from = ""  # the auxSKD workdir for "auxSKD -> VSPP" (see above)
  return config
