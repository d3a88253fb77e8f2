"""Clip recipes: a reader batch of uint8 windows -> augmented clips and pretext labels.

A recipe is one kind of clip, registered by name; a method names the recipe it trains on and
the training loop asks that recipe how many windows (`num_views`) of how many frames
(`window_len`) the loader must ship, so both sides agree. Recipes are built from two typed
specs (`ClipSpec`, `AugmentSpec`) that the experiment config produces; ops never reads the
config itself. The registered recipes:

| recipe | windows (V) | window frames | clips (N) | labels |
|---|---|---|---|---|
| auxskd | 2 | VSPP span (31) | 2, clip n from window n | speed, segment `[B, 2]` |
| vspp | 1 | VSPP span (31) | 1 | speed, segment `[B]` |
| pace | 1 | (L-1)R+1 (61) | 1 | pace `[B]` |
| vcop | 1 | nL+(n-1)gap (64) | n (3), shuffled | order `[B]` |
| clip | 1 | L (16) | 1 | label `[B]` |
| eval | eval_clips (10) | L (16) | V, clip v from window v | label `[B]` |
| rspnet | 2 | (L-1)R+1 | 3: query, key, key at another speed | speed `[B, 3]` |

Labels are 0-based (`speed - 1`, `segment - 1`, `pace - 1`, order = index in
`sampling.vcop_permutations`). `train=False` turns augmentation off (centre crop); the draws
of the pretext labels still come from `key`, so a validation pass is reproducible per key.

Adding a clip kind: subclass `Recipe`, set `name`, define `sample` (and override `num_views` /
`window_len` / `check` / `augment_frames` / `labels` where they differ), decorate with
`@register`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp

from auxskd_jax.errors import require
from auxskd_jax.ops import augment as augment_lib
from auxskd_jax.ops import gather as gather_lib
from auxskd_jax.ops import rspnet as rspnet_lib
from auxskd_jax.ops import sampling

Labels = dict[str, jax.Array]


def _section(config: Any, name: str) -> Any:
  """`config.<name>` for an experiment config, else `config` itself (already the section)."""
  try:
    return config[name] if name in config else config
  except TypeError:  # a spec or another object without `in`
    return config


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Clip geometry (SPEC section 4-6 values by default)."""
  clip_len: int = 16
  num_segments: int = 4
  max_speed: int = 4
  crop_size: int = 112
  vcop_gap: int = 8
  vcop_clips: int = 3
  eval_clips: int = 10

  @classmethod
  def of(cls, config: Any) -> "ClipSpec":
    """From a ClipSpec, an experiment config (its `clip` section) or the section itself."""
    if isinstance(config, cls):
      return config
    c = _section(config, "clip")
    return cls(**{f.name: int(c[f.name]) for f in dataclasses.fields(cls) if f.name in c})


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Training augmentation (SPEC section 6) and the model's input convention."""
  flip: bool = True
  jitter_prob: float = 0.8
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  jitter_per_frame: bool = True
  input_convention: str = "reference"

  @classmethod
  def of(cls, config: Any) -> "AugmentSpec":
    """From an AugmentSpec or an experiment config (defaults when it has no `augment`)."""
    if isinstance(config, cls):
      return config
    try:
      a = config["augment"] if "augment" in config else None
    except TypeError:
      a = None
    if a is None:
      return cls()
    return cls(**{f.name: a[f.name] for f in dataclasses.fields(cls) if f.name in a})

  def check(self) -> None:
    """Raises ConfigError for values that cannot augment anything."""
    require(self.input_convention in augment_lib.CONVENTIONS, "augment.input_convention",
            "use 'reference' (0..255 BGR) or 'rgb'.")
    require(0.0 <= self.jitter_prob <= 1.0, "augment.jitter_prob", "is a probability in [0, 1].")
    for name in ("brightness", "contrast", "saturation"):
      require(getattr(self, name) >= 0, f"augment.{name}", "must be 0 (off) or more.")
    require(0.0 <= self.hue <= 0.5, "augment.hue", "must be in [0, 0.5] (turns of the hue wheel).")


class Recipe(abc.ABC):
  """One kind of clip. Subclasses define `sample`; the base gathers the frames it names and
  augments them (`augment_frames`), and returns the drawn labels (`labels`)."""
  name: ClassVar[str] = ""

  def __init__(self, clip: ClipSpec, augment: AugmentSpec | None = None):
    self.clip = clip
    self.augment = augment or AugmentSpec()

  def num_views(self) -> int:
    """Windows per example the loader ships."""
    return 1

  def window_len(self) -> int:
    """Frames per window the loader ships."""
    return self.clip.clip_len

  def check(self) -> None:
    """Raises ConfigError if the specs cannot make this recipe's clips."""
    c = self.clip
    require(c.clip_len > 0 and c.num_segments > 0 and c.clip_len % c.num_segments == 0,
            "clip.num_segments", f"must divide clip.clip_len ({c.clip_len}).")
    require(c.max_speed >= 1, "clip.max_speed", "must be at least 1.")
    require(c.crop_size > 0, "clip.crop_size", "must be positive.")
    self.augment.check()

  def min_views(self) -> int:
    """Windows a batch must have at least (the loader ships `num_views`)."""
    return self.num_views()

  @abc.abstractmethod
  def sample(self, key: jax.Array, batch_size: int,
             num_windows: int) -> tuple[Sequence[int], jax.Array, Labels]:
    """Which window each clip reads (static, length N), the offsets `[B, N, L]`, labels."""

  def augment_frames(self, key: jax.Array, frames: jax.Array, *, train: bool) -> jax.Array:
    """uint8 frames `[B, N, L, H, W, 3]` -> float clips: one crop, flip and jitter per clip."""
    return augment_lib.augment_clips(key, frames, crop_size=self.clip.crop_size,
                                     augment=self.augment, train=train)

  def labels(self, batch: Mapping[str, Any], drawn: Labels) -> Labels:
    """The labels returned with the clips: by default those `sample` drew."""
    del batch
    return drawn

  def _check_batch(self, batch: Mapping[str, Any]) -> jax.Array:
    if "windows" not in batch:
      raise ValueError(f"recipe {self.name!r}: the batch has no 'windows' "
                       "(uint8 [B, V, W, H, W_px, 3]).")
    windows = jnp.asarray(batch["windows"])
    if windows.ndim != 6 or windows.shape[-1] != 3:
      raise ValueError(f"recipe {self.name!r}: batch['windows'] has shape {windows.shape}; "
                       "expected [B, V, W, H, W_px, 3].")
    v, w = windows.shape[1:3]
    need_v = self.min_views()
    c = self.clip
    if v < need_v:
      raise ValueError(
          f"recipe {self.name!r}: the batch has {v} windows per video, it needs {need_v}; build "
          f"the loader with views=ops.num_views({self.name!r}, config).")
    if w < self.window_len():
      raise ValueError(
          f"recipe {self.name!r}: windows have {w} frames, it needs {self.window_len()} at "
          f"clip_len={c.clip_len}, num_segments={c.num_segments}, max_speed={c.max_speed}, "
          f"vcop_gap={c.vcop_gap}; build the loader with window_len=ops.window_len("
          f"{self.name!r}, config).")
    return windows

  def __call__(self, key: jax.Array, batch: Mapping[str, Any], *,
               train: bool) -> tuple[jax.Array, Labels]:
    """Clips float32 `[B, N, L, crop, crop, 3]` in the input convention, and int32 labels.
    Jits and pmaps: shapes are static, randomness comes only from `key`."""
    windows = self._check_batch(batch)
    k_sample, k_augment = jax.random.split(key)
    views, offsets, drawn = self.sample(k_sample, windows.shape[0], windows.shape[1])
    frames = gather_lib.gather_frames(windows, views, offsets)
    clips = self.augment_frames(k_augment, frames, train=train)
    return clips, {k: jnp.asarray(x, jnp.int32) for k, x in self.labels(batch, drawn).items()}


RECIPES: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
  """Class decorator: makes a recipe available by its `name`."""
  RECIPES[cls.name] = cls
  return cls


def get_recipe(name: str, config: Any) -> Recipe:
  """The recipe `name` built from `config` (an experiment config, or its `clip` section)."""
  if name not in RECIPES:
    raise ValueError(f"clip recipe {name!r} is unknown; choose one of {list(RECIPES)}.")
  return RECIPES[name](ClipSpec.of(config), AugmentSpec.of(config))


def _vspp_rule(c: ClipSpec):
  return lambda r, s: sampling.vspp_offsets(r, s, c.clip_len, c.num_segments)


@register
class VSPPClip(Recipe):
  """One clip at normal pace except one of S segments at speed r (SPEC section 4)."""
  name = "vspp"

  def window_len(self) -> int:
    c = self.clip
    return sampling.vspp_span(c.clip_len, c.num_segments, c.max_speed)

  def sample(self, key, batch_size, num_windows):
    c = self.clip
    speed, segment = sampling.draw_vspp(key, (batch_size,), c.max_speed, c.num_segments)
    offsets = jax.vmap(_vspp_rule(c))(speed, segment)[:, None]
    return (0,), offsets, {"speed": speed - 1, "segment": segment - 1}


@register
class VSPPPair(VSPPClip):
  """auxSKD's two VSPP clips from two windows, differing in both speed and segment."""
  name = "auxskd"

  def num_views(self) -> int:
    return 2

  def check(self) -> None:
    super().check()
    require(self.clip.max_speed >= 2, "clip.max_speed",
            "auxSKD's two clips must differ in speed, so it needs at least 2 speeds.")
    require(self.clip.num_segments >= 2, "clip.num_segments",
            "auxSKD's two clips must differ in segment, so it needs at least 2 segments.")

  def sample(self, key, batch_size, num_windows):
    c = self.clip
    speed, segment = sampling.draw_vspp_pair(key, (batch_size,), c.max_speed, c.num_segments)
    offsets = jax.vmap(jax.vmap(_vspp_rule(c)))(speed, segment)
    return (0, 1), offsets, {"speed": speed - 1, "segment": segment - 1}


@register
class PaceClip(Recipe):
  """VideoPace: a whole clip at stride r in 1..R."""
  name = "pace"

  def window_len(self) -> int:
    return (self.clip.clip_len - 1) * self.clip.max_speed + 1

  def sample(self, key, batch_size, num_windows):
    c = self.clip
    pace = sampling.draw_pace(key, (batch_size,), c.max_speed)
    offsets = jax.vmap(lambda r: sampling.pace_offsets(r, c.clip_len))(pace)[:, None]
    return (0,), offsets, {"pace": pace - 1}


@register
class VCOPClips(Recipe):
  """VCOP: n clips with gaps between them, shuffled; the label is the order's index."""
  name = "vcop"

  def window_len(self) -> int:
    c = self.clip
    return c.vcop_clips * c.clip_len + (c.vcop_clips - 1) * c.vcop_gap

  def check(self) -> None:
    super().check()
    require(2 <= self.clip.vcop_clips <= 5, "clip.vcop_clips",
            "use 2..5 clips (3 is VCOP's; n! order classes).")
    require(self.clip.vcop_gap >= 0, "clip.vcop_gap", "must be 0 or more frames.")

  def sample(self, key, batch_size, num_windows):
    c = self.clip
    n = c.vcop_clips
    order = sampling.draw_vcop_order(key, (batch_size,), n)
    table = jnp.asarray(sampling.vcop_permutations(n))
    base = sampling.vcop_offsets(c.clip_len, c.vcop_gap, n)
    offsets = base[table[order]]  # [B, n, L]: position j holds clip table[order, j]
    return (0,) * n, offsets, {"order": order}


@register
class LabelledClip(Recipe):
  """Supervised training: one clip of consecutive frames and the video's class."""
  name = "clip"

  def labels(self, batch: Mapping[str, Any], drawn: Labels) -> Labels:
    if "label" not in batch:
      raise ValueError(f"recipe {self.name!r}: the batch has no 'label'.")
    return {"label": jnp.asarray(batch["label"], jnp.int32)}

  def sample(self, key, batch_size, num_windows):
    L = self.clip.clip_len
    offsets = jnp.broadcast_to(sampling.consecutive_offsets(L), (batch_size, 1, L))
    return (0,), offsets, {}


@register
class EvalClips(LabelledClip):
  """Evaluation: one clip from each of the batch's V windows (uniformly spaced by the loader)."""
  name = "eval"

  def num_views(self) -> int:
    return self.clip.eval_clips

  def check(self) -> None:
    super().check()
    require(self.clip.eval_clips >= 1, "clip.eval_clips", "must be at least 1.")

  def min_views(self) -> int:
    return 1  # one clip from each window the batch has, however many

  def sample(self, key, batch_size, num_windows):
    L = self.clip.clip_len
    offsets = jnp.broadcast_to(sampling.consecutive_offsets(L), (batch_size, num_windows, L))
    return tuple(range(num_windows)), offsets, {}


@register
class RSPNetClips(Recipe):
  """RSPNet: query and key at speed a, the key's window at speed b (see `ops/rspnet.py`)."""
  name = "rspnet"

  def num_views(self) -> int:
    return rspnet_lib.NUM_VIEWS

  def window_len(self) -> int:
    return rspnet_lib.rspnet_window_len(self.clip.clip_len, self.clip.max_speed)

  def check(self) -> None:
    super().check()
    require(self.clip.max_speed >= 2, "clip.max_speed",
            "RSPNet's clips play at two different speeds, so it needs at least 2 speeds.")

  def sample(self, key, batch_size, num_windows):
    speeds = rspnet_lib.draw_rspnet_speeds(key, (batch_size,), self.clip.max_speed)
    strides = jnp.stack([speeds[:, 0], speeds[:, 0], speeds[:, 1]], -1)
    return (0, 1, 1), rspnet_lib.rspnet_offsets(speeds, self.clip.clip_len), {
        "speed": strides - 1}

  def augment_frames(self, key, frames, *, train):
    return rspnet_lib.augment_query_and_keys(key, frames, crop_size=self.clip.crop_size,
                                             augment=self.augment, train=train)


# Conveniences taking an experiment config (or its `clip` section) and a recipe name.

def make_clips(recipe: str, key: jax.Array, batch: Mapping[str, Any], config: Any, *,
               train: bool) -> tuple[jax.Array, Labels]:
  """`get_recipe(recipe, config)(key, batch, train=train)`."""
  return get_recipe(recipe, config)(key, batch, train=train)


def window_len(recipe: str, config: Any) -> int:
  """Frames per window the loader must ship for `recipe` (31/31/61/64/16/16 at paper values)."""
  return get_recipe(recipe, config).window_len()


def num_views(recipe: str, config: Any) -> int:
  """Windows per example the loader must ship for `recipe` (auxSKD: 2 independent starts)."""
  return get_recipe(recipe, config).num_views()


def validate(recipe: str, config: Any) -> None:
  """Raises ConfigError if `config.clip` / `config.augment` cannot make `recipe`'s clips."""
  get_recipe(recipe, config).check()
