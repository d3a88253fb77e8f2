"""A tiny pipeline config for tests/test_pipeline.py (in-process and through main.py):
VSPP -> VSPP from its checkpoint -> retrieval, and a random-init retrieval, on the
`tiny_prepared` UCF101-style data (`--config.data.data_dir=`)."""

import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path: str, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  paper = _load(os.path.join(_HERE, "..", "configs", "paper_k100.py"), "_paper_k100")
  tiny = _load(os.path.join(_HERE, "tiny.py"), "_tiny")
  vspp = tiny.tiny_config("vspp_r21d_k100")
  vspp.data.name = "ucf101/split1"
  vspp.train.num_steps = 2
  vspp.train.checkpoint_every = 1
  vspp.train.log_every = 1
  vspp2 = tiny.tiny_config("vspp_r21d_k100")
  vspp2.data.name = "ucf101/split1"
  vspp2.train.init_from = "stage:vspp"
  vspp2.train.num_steps = 6
  vspp2.train.checkpoint_every = 2
  vspp2.train.log_every = 1
  vspp2.method_chain = "VSPP -> VSPP"
  stages = {"vspp": vspp, "vspp2": vspp2}
  for name, init in (("ret", "stage:vspp2"), ("ret_random", "")):
    r = tiny.load_config("retrieval_r21d_ucf101")
    r.model.name, r.model.width = "r3d_10", 8
    r.clip.clip_len, r.clip.crop_size, r.clip.eval_clips = 8, 16, 2
    r.eval.batch_size = 8
    r.eval.feature_layer = "pool"  # 16-pixel crops: conv5 is too small for conv5_maxpool
    r.eval.topk = (1, 5)
    r.eval.init_from = init
    stages[name] = r
  config = paper.pipeline(stages, splits="1")
  # main.py runs share the test session's compilation cache (tests/conftest.py sets it).
  config.compilation_cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                config.compilation_cache_dir)
  return config
