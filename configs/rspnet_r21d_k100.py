"""RSPNet pretraining of R(2+1)D-10 on Kinetics-100 (SPEC section 5) with the RSPNet
reference's settings: clips of 16 frames at 1x and 2x, 128-d heads, queue 16384, EMA 0.999,
temperature 0.07, ranking margin 2.0 (on similarities / T), loss weights 1 and 1
(`auxskd_jax.defaults.rspnet()`), SGD lr 0.05, momentum 0.9, weight decay 1e-4, cosine
schedule, 200 epochs, batch 32, crop 112, flip and colour jitter.

"auxSKD + RSPNet" starts from the auxSKD student (empty, the default, = from scratch):
  python main.py --config=configs/rspnet_r21d_k100.py --config.data.data_dir=/data/tfds \
    --config.train.init_from=/path/to/runs/auxskd --config.method_chain="auxSKD -> RSPNet"
"""

from auxskd_jax import defaults
from auxskd_jax.config import base_config


def get_config():
  config = base_config()
  config.task = "rspnet"
  config.method_chain = "RSPNet"
  config.data.name = "kinetics/k100"
  config.clip.max_speed = 2  # the two speeds: 1x and 2x
  config.train.batch_size = 32
  config.train.num_epochs = 200
  config.train.init_from = ""
  config.optim.learning_rate = 0.05
  config.optim.weight_decay = 0.0001
  config.optim.schedule = "cosine"
  config.rspnet = defaults.rspnet()
  return config
