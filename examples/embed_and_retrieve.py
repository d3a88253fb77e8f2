"""Embed videos with an encoder and retrieve the nearest ones: the Python API end to end.

    python examples/embed_and_retrieve.py                      # a random tiny encoder, seconds
    python examples/embed_and_retrieve.py --checkpoint=runs/demo/pretrain/auxskd \
        --workdir=/tmp/embed_demo                              # one of our runs' encoders
    python examples/embed_and_retrieve.py --checkpoint=pckpt_epoch_300.pth   # the authors'

It writes a few videos of the demo's four motion classes (auxskd_jax/demo) into --workdir,
embeds the train and test videos (PyAV decodes them), and scores the test videos as queries
against the train videos: top-k retrieval and k-NN accuracy, and each query's nearest video.
A random encoder scores about chance (0.25 for k-NN); compare a pretrained one's (the full
demo's `runs/demo/pretrain/auxskd_vspp`, say). The videos are few, so the numbers are noisy.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np


def demo_videos(root: str, *, size: int, num_frames: int, per_class: int
                ) -> dict[str, tuple[list[str], np.ndarray]]:
  """{split: (video paths, labels)} of a small demo dataset generated under `root`, one folder
  per setting, so encoders of other clip sizes share one --workdir."""
  from auxskd_jax.demo import generate, motions

  root = os.path.join(root, f"{size}px_{num_frames}frames_{per_class}per_class")
  settings = generate.settings(seed=0, size=size, num_frames=num_frames,
                               train_per_class=per_class, test_per_class=max(1, per_class // 2),
                               pool_synthetic=0, pool_real=0, use_samples=False)
  generate.generate(root, settings, progress=lambda line: None)
  out = {}
  for split in ("train", "test"):
    paths = sorted(glob.glob(os.path.join(root, "actions", split, "*", "*.mp4")))
    labels = np.array([motions.CLASSES.index(os.path.basename(os.path.dirname(p)))
                       for p in paths])
    out[split] = (paths, labels)
  return out


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default="",
                      help="a workdir / checkpoint folder of one of our runs, or a .pth; "
                           "default: a randomly initialised tiny encoder")
  parser.add_argument("--workdir", default="/tmp/auxskd_embed_example",
                      help="where the demo videos are written")
  parser.add_argument("--per_class", type=int, default=3, help="train videos per class")
  parser.add_argument("--num_clips", type=int, default=2, help="clips averaged per video")
  args = parser.parse_args(argv)

  import auxskd_jax as ax

  t0 = time.time()
  if args.checkpoint:
    encoder = ax.load_encoder(args.checkpoint)
    print(encoder.report.summary())
  else:  # tiny: an 8-wide R3D-10 on 8-frame 16-pixel clips
    encoder = ax.init_encoder("r3d_10", width=8, clip_len=8, crop_size=16)
  crop, clip_len = int(encoder.config.clip.crop_size), int(encoder.config.clip.clip_len)
  data = demo_videos(args.workdir, size=max(32, crop + crop % 2), num_frames=2 * clip_len,
                     per_class=args.per_class)
  (train_paths, train_labels), (test_paths, test_labels) = data["train"], data["test"]
  train = ax.embed(encoder, train_paths, num_clips=args.num_clips)
  test = ax.embed(encoder, test_paths, num_clips=args.num_clips)
  print(f"{encoder.name} (width {encoder.width}): {len(train_paths)} train and "
        f"{len(test_paths)} test videos -> {train.shape[1]}-d features "
        f"({time.time() - t0:.1f}s)")

  scores = ax.retrieval(test, test_labels, train, train_labels, ks=(1, 5))
  knn = ax.knn(test, test_labels, train, train_labels, k=5)
  print("retrieval (test -> train): " + ", ".join(f"top{k}={v:.2f}" for k, v in scores.items())
        + f"; 5-NN accuracy {knn:.2f} (chance 0.25)")
  index, similarity = ax.nearest(test, train, k=1)
  for q, (i, s) in enumerate(zip(index[:, 0], similarity[:, 0])):
    print(f"  {os.path.basename(test_paths[q])} -> {os.path.basename(train_paths[i])} "
          f"(cosine {s:.3f})")
  return {**{f"top{k}": v for k, v in scores.items()}, "knn": knn}


if __name__ == "__main__":
  main(sys.argv[1:])
