"""Video retrieval with R(2+1)D-10 features on UCF101 (SPEC section 8); `:hmdb51` after the
file name runs it on HMDB51.

  python main.py --config=configs/retrieval_r21d_ucf101.py --workdir=runs/ret_ucf101 \
    --config.data.data_dir=/data/tfds --config.eval.init_from=runs/vspp_r21d_k100 \
    --config.method_chain="auxSKD -> VSPP" --config.data.split=1

`eval.init_from`: one of our workdirs, a reference `.pth`, or '' (random-init baseline).
"""

import ml_collections

from auxskd_jax.config import base_config


def get_config(dataset: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.task = "retrieval"
  split = ml_collections.FieldReference(1)
  c.data.split = split
  c.data.name = (dataset or "ucf101") + "/split" + split.to_str()
  c.eval.batch_size = 8
  c.eval.init_from = ""
  c.eval.topk = (1, 5, 10, 20, 50)
  # VCOP's retrieval protocol, which published tables (auxSKD's included) use: conv5 features
  # max-pooled (1, 2, 2) and flattened (9216-d); "pool" = the 512-d pooled features.
  c.eval.feature_layer = "conv5_maxpool"
  c.eval.pretrain_data = ""
  return c
