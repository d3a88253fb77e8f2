"""Retrieval top-k, multi-clip video accuracy and the linear classifier on planted data."""

import numpy as np
import pytest

from auxskd_jax.evaluate import linear_classifier, multiclip
from auxskd_jax.evaluate.topk import topk_accuracy


def _unit(deg):
  rad = np.deg2rad(deg)
  return np.stack([np.cos(rad), np.sin(rad)], axis=-1).astype(np.float32)


def test_topk_hand_computed():
  # Gallery directions (degrees) and classes; cosine order is by angular distance.
  gallery = _unit(np.array([0, 10, 40, 90, 180]))
  gallery_labels = np.array([0, 1, 1, 2, 0])
  # q0 at 3 deg -> order 0(c0),10(c1),40(c1),90(c2),180(c0); class 1 -> hit from k=2.
  # q1 at 85 deg -> order 90(c2),40(c1),10(c1),0(c0),180(c0); class 0 -> hit from k=4.
  # q2 at 170 deg -> 180(c0) first; class 2 -> 90 is second -> hit from k=2.
  # q3 class 3 is absent from the gallery: never a hit.
  queries = _unit(np.array([3, 85, 170, 30])) * np.array([[3.0], [0.5], [1.0], [2.0]])
  query_labels = np.array([1, 0, 2, 3])
  acc = topk_accuracy(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 3, 4, 5))
  assert acc == {1: 0.0, 2: 0.5, 3: 0.5, 4: 0.75, 5: 0.75}


def test_topk_ties_go_to_lower_gallery_index():
  # Gallery items 0 and 1 are identical (a tie); only their labels differ.
  gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  query = np.array([[1.0, 0.0]], np.float32)
  assert topk_accuracy(query, [0], gallery, [0, 1, 1], ks=(1,))[1] == 1.0
  assert topk_accuracy(query, [1], gallery, [0, 1, 1], ks=(1, 2))[1] == 0.0
  assert topk_accuracy(query, [1], gallery, [0, 1, 1], ks=(1, 2))[2] == 1.0


def test_topk_k_above_gallery_is_clipped():
  gallery = _unit(np.array([0, 90, 180]))
  queries = _unit(np.array([0, 0]))
  acc = topk_accuracy(queries, [2, 5], gallery, [0, 1, 2], ks=(1, 50))
  # k=50 means the whole gallery: class 2 is there (hit), class 5 is not (miss).
  assert acc == {1: 0.0, 50: 0.5}


def test_topk_chunking_matches_unchunked_and_bruteforce():
  rng = np.random.default_rng(0)
  g, gl = rng.normal(size=(37, 6)), rng.integers(0, 4, 37)
  q, qlab = rng.normal(size=(23, 6)), rng.integers(0, 4, 23)
  ks = (1, 3, 10)
  full = topk_accuracy(q, qlab, g, gl, ks=ks, chunk_size=1024)
  chunked = topk_accuracy(q, qlab, g, gl, ks=ks, chunk_size=5)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  order = np.argsort(-(qn @ gn.T), axis=1, kind="stable")
  for k in ks:
    expected = np.mean([(gl[order[i, :k]] == qlab[i]).any() for i in range(len(q))])
    assert full[k] == pytest.approx(expected)
    assert chunked[k] == pytest.approx(expected)


def test_topk_bad_input():
  with pytest.raises(ValueError, match="same D"):
    topk_accuracy(np.zeros((2, 3)), [0, 1], np.zeros((2, 4)), [0, 1])
  with pytest.raises(ValueError, match="labels"):
    topk_accuracy(np.zeros((2, 3)), [0], np.zeros((2, 3)), [0, 1])
  with pytest.raises(ValueError, match="positive"):
    topk_accuracy(np.zeros((2, 3)), [0, 1], np.zeros((2, 3)), [0, 1], ks=(0,))


def test_multiclip_averages_softmax():
  # Video 0: two clips confidently class 1, one clip weakly class 0 -> averaged: class 1.
  logits = np.array([[[0.0, 5.0, 0.0], [0.0, 5.0, 0.0], [1.0, 0.0, 0.0]],
                     [[3.0, 0.0, 2.9], [0.0, 0.0, 4.0], [0.0, 0.0, 4.0]]], np.float32)
  acc = multiclip.multiclip_accuracy(logits, np.array([1, 0]), ks=(1, 2, 5))
  # Video 1's average ranks class 2 first, class 0 second.
  assert acc["video_top1"] == 0.5
  assert acc["video_top2"] == 1.0
  assert acc["video_top5"] == 1.0  # k above the class count: everything
  assert acc["clip_top1"] == pytest.approx(3 / 6)


def test_multiclip_bad_labels():
  with pytest.raises(ValueError, match="labels must lie"):
    multiclip.multiclip_accuracy(np.zeros((2, 3, 4)), np.array([0, 4]))


def test_linear_probe_separates_separable_features():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(3, 16)) * 4
  y = rng.integers(0, 3, 300)
  x = centres[y] + rng.normal(size=(300, 16)) + 50.0  # offset: standardisation must cope
  params = linear_classifier.train_linear(x[:200], y[:200], 3, steps=300, learning_rate=0.05,
                                          batch_size=64)
  pred = linear_classifier.predict_logits(params, x[200:]).argmax(-1)
  assert (pred == y[200:]).mean() > 0.95
  # Leading shapes pass through (per-clip features [N, E, D]).
  assert linear_classifier.predict_logits(params, x[:6].reshape(2, 3, 16)).shape == (2, 3, 3)


def test_linear_probe_rejects_bad_labels():
  with pytest.raises(ValueError, match="labels must lie"):
    linear_classifier.train_linear(np.zeros((4, 2)), np.array([0, 1, 2, 3]), 3)
