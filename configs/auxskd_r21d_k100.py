"""auxSKD pretraining of R(2+1)D-10 on Kinetics-100 with the reference's hyperparameters
(SPEC section 3): batch 30, SGD lr 0.001, momentum 0.9, wd 0.005, x0.1 every 6 epochs,
25 epochs, K = 15360, temperatures 0.1 / 0.02, EMA 0.999, shuffled-BN teacher (the last five are
`auxskd_jax.defaults.auxskd()`, the optimizer values `base_config()`'s)."""

from auxskd_jax import defaults
from auxskd_jax.config import base_config


def get_config():
  config = base_config()
  config.task = "auxskd"
  config.method_chain = "auxSKD"
  config.data.name = "kinetics/k100"
  config.train.num_epochs = 25  # the paper's auxSKD length (VSPP: 20)
  config.auxskd = defaults.auxskd()
  return config
