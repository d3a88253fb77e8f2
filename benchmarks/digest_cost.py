"""What verified checkpoints cost: the content digest of the paper-sized auxSKD state against the
orbax save of that state (issue 23: "keep it to a small fraction of a save").

The state is the paper's (configs/auxskd_r21d_k100.py): R(2+1)D-10 at full width, its
predictor, the EMA teacher, SGD momentum buffers and the 15360 x 128 queue, built with
`jax.eval_shape` from the method's own `init_state` (nothing is compiled) and filled with random
values of the same shapes and dtypes (digest and write costs depend only on the bytes; random
bytes do not compress). Times, each the median of `--repeats`:

- `digest_s`: `digest.tree_digests` of the checkpoint tree (what a save does in its background
  thread and a restore does to verify);
- `orbax_save_s`: the orbax save of the same tree and loader item, waited for (no digest);
- `verified_save_s`: `checkpoint.save(..., wait=True)`, orbax plus the digest commit;
- sha256 and blake2b throughput on one 64 MiB buffer (the algorithm choice in digest.py).

Run from the repo root on any host (CPU only is fine): `python benchmarks/digest_cost.py
--out=benchmarks/results/cpu/digest_cost.json`. The save goes to `--dir` (default: a temporary
folder; put it on the disk the checkpoints will use).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402


def paper_state(queue_size: int, width: int):
  """The auxSKD TrainState of the paper's config as host numpy arrays (random values)."""
  from auxskd_jax.methods.auxskd import AuxSKD
  from auxskd_jax.train import optim
  from tests.tiny import load_config

  config = load_config("auxskd_r21d_k100")
  config.model.width = width
  config.auxskd.queue_size = queue_size
  method = AuxSKD(config)
  tx, _ = optim.make_optimizer(config, 100, 1000)
  shapes = jax.eval_shape(lambda rng: method.init_state(config, rng, tx, 100),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def fill(s):
    if np.issubdtype(s.dtype, np.floating):
      return rng.standard_normal(s.shape, dtype=np.float32).astype(s.dtype)
    return rng.integers(0, 100, s.shape).astype(s.dtype)

  return jax.tree.map(fill, shapes), config


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _throughput(algorithm: str, buf: np.ndarray, repeats: int) -> float:
  """MB/s of `hashlib.new(algorithm)` over `buf`."""
  seconds = _median_time(lambda: hashlib.new(algorithm, buf).hexdigest(), repeats)
  return buf.nbytes / seconds / 1e6


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--queue_size", type=int, default=15360)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dir", default="", help="where to save (default: a temporary folder)")
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args(argv)

  from auxskd_jax.train import checkpoint as ckpt_lib
  from auxskd_jax.train import digest as digest_lib
  from auxskd_jax.train import state as state_lib

  state, _ = paper_state(args.queue_size, args.width)
  tree = jax.tree.map(np.asarray, state_lib.to_checkpoint(state))
  leaves = jax.tree.leaves(tree)
  nbytes = sum(int(x.nbytes) for x in leaves)
  loader = ckpt_lib.gather_loader_states({"next_index": 1})
  root = args.dir or tempfile.mkdtemp(prefix="digest_cost_")
  os.makedirs(root, exist_ok=True)

  digest_s = _median_time(lambda: digest_lib.tree_digests(tree), args.repeats)

  plain = ocp.CheckpointManager(os.path.join(root, "orbax_only"), options=ckpt_lib._manager_options(
      keep=2, async_save=True), item_names=("state", "loader"))  # pylint: disable=protected-access
  step = iter(range(1, 10 ** 6))

  def orbax_save():
    plain.save(next(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), loader=ocp.args.JsonSave(loader)), force=True)
    plain.wait_until_finished()

  orbax_save()  # the first save creates folders and metadata: not timed
  orbax_s = _median_time(orbax_save, args.repeats)
  plain.close()

  manager = ckpt_lib.make_manager(os.path.join(root, "verified"), keep=2)
  vstep = iter(range(1, 10 ** 6))

  def verified_save():
    ckpt_lib.save(manager, next(vstep), state, {"next_index": 1}, force=True, wait=True)

  verified_save()
  verified_s = _median_time(verified_save, args.repeats)
  assert ckpt_lib.last_good_step(manager) is not None
  manager.close()
  if not args.dir:
    shutil.rmtree(root, ignore_errors=True)

  buf = np.random.default_rng(1).integers(0, 255, 64 << 20, dtype=np.uint8)
  cpu = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 "")
  result = {
      "benchmark": "digest_cost",
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "command": "python benchmarks/digest_cost.py " + " ".join(argv if argv is not None
                                                                 else sys.argv[1:]),
      "cpu_model": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
      "python": platform.python_version(), "jax": jax.__version__, "orbax": ocp.__version__,
      "state": {"model": "r21d_10", "width": args.width, "queue": [args.queue_size, 128],
                "arrays": len(leaves), "bytes": nbytes},
      "repeats": args.repeats,
      "digest_s": digest_s,
      "digest_mb_per_s": nbytes / digest_s / 1e6,
      "orbax_save_s": orbax_s,
      "verified_save_s": verified_s,
      "digest_over_orbax_save": digest_s / orbax_s,
      "verified_over_orbax_save": verified_s / orbax_s,
      "sha256_mb_per_s": _throughput("sha256", buf, args.repeats),
      "blake2b_mb_per_s": _throughput("blake2b", buf, args.repeats),
  }
  print(f"state: {len(leaves)} arrays, {nbytes / 1e6:.1f} MB")
  print(f"| digest | orbax save | verified save | digest / orbax save | verified / orbax |")
  print(f"|---|---|---|---|---|")
  print(f"| {digest_s:.3f} s | {orbax_s:.3f} s | {verified_s:.3f} s | "
        f"{digest_s / orbax_s:.1%} | {verified_s / orbax_s:.2f}x |")
  print(f"sha256 {result['sha256_mb_per_s']:.0f} MB/s, blake2b "
        f"{result['blake2b_mb_per_s']:.0f} MB/s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
