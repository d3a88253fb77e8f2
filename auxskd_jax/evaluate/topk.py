"""Nearest-neighbour top-k retrieval accuracy and k-NN classification (cosine), on device.

Kept apart from the retrieval task so the maths can be tested and reused without models or
data. Queries are processed in fixed-size chunks (padded, so one compilation serves every
chunk): the similarity matrix of a chunk is `[chunk, gallery]`, never `[queries, gallery]`,
so the full UCF101 (3.7k queries x 9.5k gallery) fits on any device.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50)


def _normalize(x: jax.Array) -> jax.Array:
  """L2-normalises rows; an all-zero row stays zero (its similarities are all 0)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, 1e-12)


def _chunk_hits(queries: jax.Array, query_labels: jax.Array, gallery: jax.Array,
                gallery_labels: jax.Array, kmax: int, ks: tuple[int, ...]) -> jax.Array:
  """`[chunk, len(ks)]` booleans: does any of the k most similar gallery items share the label."""
  sims = queries @ gallery.T  # both normalised: cosine similarity
  # lax.top_k puts the lower index first among equal values, so ties go to the earlier
  # gallery item (deterministic, documented in `topk_accuracy`).
  _, nearest = jax.lax.top_k(sims, kmax)
  same = gallery_labels[nearest] == query_labels[:, None]  # [chunk, kmax]
  first_hit = jnp.cumsum(same, axis=1) > 0  # hit within the first j+1 neighbours
  return jnp.stack([first_hit[:, k - 1] for k in ks], axis=1)


_chunk_hits_jit = jax.jit(_chunk_hits, static_argnames=("kmax", "ks"))


def topk_accuracy(query_features: np.ndarray | jax.Array, query_labels: np.ndarray | jax.Array,
                  gallery_features: np.ndarray | jax.Array,
                  gallery_labels: np.ndarray | jax.Array,
                  ks: Sequence[int] = DEFAULT_KS, *, chunk_size: int = 1024) -> dict[int, float]:
  """Fraction of queries whose k nearest gallery items (cosine) contain the query's class.

  Args:
    query_features: `[Q, D]` float features of the queries (e.g. test videos).
    query_labels: `[Q]` int class of each query.
    gallery_features: `[G, D]` features searched (e.g. train videos).
    gallery_labels: `[G]` int class of each gallery item.
    ks: the k values to report, each >= 1.
    chunk_size: queries per device computation (bounds memory to `chunk_size * G`).

  Returns:
    `{k: accuracy}` for every requested k (keys as given). A k larger than the gallery is
    clipped to the gallery size, i.e. it means "anywhere in the gallery" (a query whose class
    is absent from the gallery is never a hit). Among equally similar gallery items the one with
    the lower gallery index ranks first.
  """
  q = jnp.asarray(query_features, jnp.float32)
  g = jnp.asarray(gallery_features, jnp.float32)
  ql = jnp.asarray(query_labels, jnp.int32)
  gl = jnp.asarray(gallery_labels, jnp.int32)
  _check(q, ql, g, gl, "topk_accuracy")
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"topk_accuracy: ks must be positive integers; got {ks}.")
  clipped = tuple(min(k, g.shape[0]) for k in ks)
  kmax = max(clipped)
  q, g = _normalize(q), _normalize(g)
  hits = _chunked(lambda qc, lc: _chunk_hits_jit(qc, lc, g, gl, kmax=kmax, ks=clipped), q, ql,
                  chunk_size)
  accuracy = np.asarray(jax.device_get(hits.mean(axis=0)), np.float64)
  return {k: float(a) for k, a in zip(ks, accuracy)}


def _chunked(fn: Callable[[jax.Array, jax.Array], jax.Array], q: jax.Array, ql: jax.Array, chunk_size: int) -> jax.Array:
  """`fn(query_chunk, label_chunk)` over fixed-size chunks of the queries, concatenated.

  The last chunk is padded so every call has one shape (one compilation); its padding rows are
  dropped from the result.
  """
  num_queries = q.shape[0]
  chunk = max(1, min(chunk_size, num_queries))
  out = []
  for lo in range(0, num_queries, chunk):
    qc, lc = q[lo:lo + chunk], ql[lo:lo + chunk]
    n = qc.shape[0]
    if n < chunk:
      qc = jnp.pad(qc, ((0, chunk - n), (0, 0)))
      lc = jnp.pad(lc, (0, chunk - n))
    out.append(fn(qc, lc)[:n])
  return jnp.concatenate(out, axis=0)


def _check(q: jax.Array, ql: jax.Array, g: jax.Array, gl: jax.Array, who: str) -> None:
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
    raise ValueError(f"{who}: features must be [Q, D] and [G, D] with the same D; got "
                     f"{q.shape} and {g.shape}.")
  if ql.shape != (q.shape[0],) or gl.shape != (g.shape[0],):
    raise ValueError(f"{who}: labels must be [Q] and [G]; got {ql.shape} for {q.shape[0]} "
                     f"queries and {gl.shape} for {g.shape[0]} gallery items.")
  if g.shape[0] == 0:
    raise ValueError(f"{who}: the gallery is empty; there is nothing to retrieve.")
  if q.shape[0] == 0:
    raise ValueError(f"{who}: there are no queries.")


def _chunk_knn(queries: jax.Array, query_labels: jax.Array, gallery: jax.Array,
               gallery_labels: jax.Array, k: int, temperature: float,
               num_classes: int) -> jax.Array:
  """`[chunk]` booleans: is the k-NN vote's class the query's class."""
  sims = queries @ gallery.T
  top_sims, nearest = jax.lax.top_k(sims, k)
  if temperature > 0:  # relative to the nearest: the same vote, no overflow at small T
    weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
  else:
    weights = jnp.ones_like(top_sims)
  votes = jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(gallery_labels[nearest], num_classes))
  return jnp.argmax(votes, axis=-1) == query_labels  # argmax: ties go to the lower class


_chunk_knn_jit = jax.jit(_chunk_knn, static_argnames=("k", "temperature", "num_classes"))


def knn_accuracy(query_features: np.ndarray | jax.Array, query_labels: np.ndarray | jax.Array,
                 gallery_features: np.ndarray | jax.Array,
                 gallery_labels: np.ndarray | jax.Array, *, k: int = 20,
                 temperature: float = 0.07, chunk_size: int = 1024) -> float:
  """Top-1 accuracy of a k-nearest-neighbour classifier (cosine similarity), as SSL papers
  monitor representations (Wu et al. 2018, "instance discrimination"; DINO's `eval_knn`).

  Each of the k most similar gallery items votes for its class with weight
  `exp(cosine / temperature)`; `temperature=0` gives every neighbour weight 1 (a majority vote).
  The class with the largest vote wins; ties go to the lower class index. `k` above the gallery
  size is clipped to it.
  """
  q = jnp.asarray(query_features, jnp.float32)
  g = jnp.asarray(gallery_features, jnp.float32)
  ql = jnp.asarray(query_labels, jnp.int32)
  gl = jnp.asarray(gallery_labels, jnp.int32)
  _check(q, ql, g, gl, "knn_accuracy")
  if int(k) < 1 or temperature < 0:
    raise ValueError(f"knn_accuracy: needs k >= 1 and temperature >= 0; got {k}, {temperature}.")
  num_classes = int(max(int(jnp.max(gl)), int(jnp.max(ql)))) + 1
  q, g = _normalize(q), _normalize(g)
  correct = _chunked(lambda qc, lc: _chunk_knn_jit(qc, lc, g, gl, k=min(int(k), g.shape[0]),
                                                   temperature=float(temperature),
                                                   num_classes=num_classes), q, ql, chunk_size)
  return float(jax.device_get(correct.astype(jnp.float32).mean()))


def _chunk_nearest(queries: jax.Array, gallery: jax.Array, k: int) -> jax.Array:
  """`[chunk, 2, k]`: similarities and indices (as float32: exact below 2**24 gallery items)
  of the k most similar items, in one array for `_chunked`."""
  sims, nearest_ = jax.lax.top_k(queries @ gallery.T, k)
  return jnp.stack([sims, nearest_.astype(jnp.float32)], axis=1)


_chunk_nearest_jit = jax.jit(_chunk_nearest, static_argnames=("k",))


def nearest(query_features: np.ndarray | jax.Array, gallery_features: np.ndarray | jax.Array,
            k: int = 5, *, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """(indices `[Q, k]` int64, cosine similarities `[Q, k]`) of each query's k most similar
  gallery items, most similar first; ties go to the lower gallery index, as in
  `topk_accuracy`. `k` above the gallery size is clipped to it."""
  q = jnp.asarray(query_features, jnp.float32)
  g = jnp.asarray(gallery_features, jnp.float32)
  _check(q, jnp.zeros(q.shape[:1], jnp.int32), g, jnp.zeros(g.shape[:1], jnp.int32), "nearest")
  if int(k) < 1:
    raise ValueError(f"nearest: k must be at least 1; got {k}.")
  kk = min(int(k), g.shape[0])
  q, g = _normalize(q), _normalize(g)
  out = _chunked(lambda qc, _: _chunk_nearest_jit(qc, g, k=kk), q,
                 jnp.zeros(q.shape[:1], jnp.int32), chunk_size)
  out = np.asarray(jax.device_get(out))
  return out[:, 1].astype(np.int64), out[:, 0]
