"""The paper's protocol in one command (SPEC sections 1, 3, 4, 8), as a `pipeline` of the
shipped configs, every stage with their hyperparameters:

  auxskd              auxSKD on K100                     (configs/auxskd_r21d_k100.py)
  auxskd_vspp         VSPP on K100 from its student      (configs/vspp_r21d_k100.py)
  vspp                VSPP alone (baseline)
  ft_<data>_<init>    fine-tuning on UCF101 / HMDB51, 10-clip test (finetune_r21d_ucf101.py)
  ret_<data>_<init>   retrieval on both, VCOP's protocol    (retrieval_r21d_ucf101.py)
                      for init = auxskd_vspp, vspp and random (the random-init baseline)

  python main.py --config=configs/paper_k100.py --config.data.data_dir=/data/tfds \
    --workdir=runs/paper_k100

The prepared datasets kinetics/k100, ucf101/split<k> and hmdb51/split<k> must be in data_dir
(configs/prepare.py; the error names the first that is missing). Variants put another pretext
task in VSPP's place (`auxSKD -> X` and `X` alone): `configs/paper_k100.py:vcop`, `:pace`,
`:rspnet` (VCOP keeps its reference settings but pretrains on K100, like the others).
`--config.splits=1,2,3` evaluates on the three official splits; the table reports their mean.
Each stage runs in `<workdir>/<stage>/`; a finished stage is skipped when the command is run
again, an interrupted one resumes (auxskd_jax/tasks/pipeline.py). A stage's keys are
`--config.stages.<stage>.<key>`, e.g. `--config.stages.auxskd.train.batch_size=60`.
"""

import copy
import importlib.util
import os

import ml_collections

# Primary pretext task -> (its config file, its name in reports).
PRETEXT = {"vspp": ("vspp_r21d_k100", "VSPP"), "vcop": ("vcop_r21d_ucf101", "VCOP"),
           "pace": ("pace_r21d_k100", "VideoPace"), "rspnet": ("rspnet_r21d_k100", "RSPNet")}
DOWNSTREAM = ("ucf101", "hmdb51")
K100 = "kinetics/k100"


def sibling(name: str, *args: str) -> ml_collections.ConfigDict:
  """`get_config(*args)` of the config file `<name>.py` beside this one (found by path, so
  this works from a checkout and from the installed auxskd_jax.configs alike)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_auxskd_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def pipeline(stages: dict, splits: str = "") -> ml_collections.ConfigDict:
  """A `pipeline` config running `stages` ({name: task config}) in the dict's order; one
  `data.data_dir` and one `seed` for all of them (`--config.seed=1` reseeds every stage).
  Process-wide settings come from the first stage."""
  first = next(iter(stages.values()))
  c = ml_collections.ConfigDict()
  c.task = "pipeline"
  for key in ("prng_impl", "compilation_cache_dir", "xla_fast_compile", "xla_cpu_ynnpack_ops"):
    c[key] = first[key]
  seed = ml_collections.FieldReference(first.seed)
  c.seed = seed
  c.distributed = copy.deepcopy(first.distributed)
  c.resume_overrides = ""
  c.order = ",".join(stages)  # run order (a ConfigDict sorts its keys)
  c.splits = splits  # "1,2,3": stages with data.split run once per split, the table averages
  data_dir = ml_collections.FieldReference("")
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = data_dir
  c.stages = ml_collections.ConfigDict()
  for name, stage in stages.items():
    stage.data.data_dir = data_dir
    stage.seed = seed
    c.stages[name] = stage
  return c


def _pretrain(key: str, init_from: str, chain: str) -> ml_collections.ConfigDict:
  file, _ = PRETEXT[key]
  c = sibling(file)
  c.data.name = K100
  c.train.init_from = init_from
  c.method_chain = chain
  return c


def _downstream(kind: str, dataset: str, init: str, chain: str) -> ml_collections.ConfigDict:
  if kind == "ft":
    c = sibling("finetune_r21d_ucf101", dataset)
    c.train.init_from = init
  else:
    c = sibling("retrieval_r21d_ucf101", dataset)
    c.eval.init_from = init
  c.method_chain = chain
  c.eval.pretrain_data = "K100"
  c.clip.eval_clips = 10  # SPEC section 8: 10 clips per test video
  return c


def get_config(variant: str = "vspp") -> ml_collections.ConfigDict:
  """The auxSKD -> `variant` chain, `variant` alone and random init, evaluated downstream."""
  if variant not in PRETEXT:
    raise ValueError(f"configs/paper_k100.py:{variant}: choose one of {', '.join(PRETEXT)}.")
  _, name = PRETEXT[variant]
  stages = {"auxskd": _pretrain_auxskd()}
  stages[f"auxskd_{variant}"] = _pretrain(variant, "stage:auxskd", f"auxSKD -> {name}")
  stages[variant] = _pretrain(variant, "", name)
  inits = {f"auxskd_{variant}": f"auxSKD -> {name}", variant: name, "random": "random init"}
  for init, chain in inits.items():
    ref = f"stage:{init}" if init != "random" else ""
    for kind in ("ft", "ret"):
      for dataset in DOWNSTREAM:
        stages[f"{kind}_{dataset}_{init}"] = _downstream(kind, dataset, ref, chain)
  return pipeline(stages, splits="1")


def _pretrain_auxskd() -> ml_collections.ConfigDict:
  c = sibling("auxskd_r21d_k100")
  c.data.name = K100
  return c
