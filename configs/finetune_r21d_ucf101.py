"""Fine-tune R(2+1)D-10 on UCF101 (SPEC section 8), encoder from a pretext checkpoint;
`:hmdb51` after the file name fine-tunes on HMDB51 instead.

  python main.py --config=configs/finetune_r21d_ucf101.py --workdir=runs/ft_ucf101 \
    --config.data.data_dir=/data/tfds --config.train.init_from=runs/vspp_r21d_k100 \
    --config.method_chain="auxSKD -> VSPP" --config.data.split=1
  python main.py --config=configs/finetune_r21d_ucf101.py:hmdb51 ...

`train.init_from`: one of our workdirs (auxSKD, VSPP, ...), a reference `.pth`, or '' (scratch).
"""

import ml_collections

from auxskd_jax import defaults
from auxskd_jax.config import base_config


def get_config(dataset: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tuning on `dataset` ('ucf101' or 'hmdb51'), official split picked by data.split."""
  c = base_config()
  c.task = "finetune"
  split = ml_collections.FieldReference(1)
  c.data.split = split  # official split 1, 2 or 3; data.name follows it
  c.data.name = (dataset or "ucf101") + "/split" + split.to_str()
  c.augment.jitter_prob = 0.0  # SPEC section 8: random crop + flip only
  # SPEC is silent on fine-tuning hyperparameters; these follow VCOP's fine-tuning recipe
  # (SGD lr 0.001, momentum 0.9, weight decay 5e-4) with a step decay in place of its plateau.
  c.optim.weight_decay = 0.0005
  c.optim.decay_epochs = 20
  c.train.batch_size = 32
  c.train.num_epochs = 60
  c.train.checkpoint_every = 1000
  c.eval.batch_size = 8
  c.eval.every_epochs = 5
  c.eval.pretrain_data = ""  # for the report, e.g. "K100"
  c.finetune = defaults.finetune()
  return c
