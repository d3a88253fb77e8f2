"""VideoPace pretraining of R(2+1)D-10 on Kinetics-100 (SPEC section 5) with VideoPace's
published R(2+1)D recipe: paces 1..4, batch 30, SGD lr 0.001, momentum 0.9, weight decay 0.005,
x0.1 every 6 epochs, 18 epochs, 16-frame clips cropped to 112, flip and colour jitter (the
pace code's lr 0.01 / batch 32 are its S3D-G defaults, not its R(2+1)D recipe).

"auxSKD + VideoPace" starts from the auxSKD student (empty, the default, = from scratch):
  python main.py --config=configs/pace_r21d_k100.py --config.data.data_dir=/data/tfds \
    --config.train.init_from=/path/to/runs/auxskd --config.method_chain="auxSKD -> VideoPace"
"""

from auxskd_jax.config import base_config


def get_config():
  config = base_config()
  config.task = "pace"
  config.method_chain = "VideoPace"
  config.data.name = "kinetics/k100"
  config.train.num_epochs = 18  # VideoPace's length
  config.train.init_from = ""
  return config
