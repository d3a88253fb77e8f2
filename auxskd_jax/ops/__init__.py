"""On-device clip sampling and augmentation (pure JAX; see docs/DESIGN.md)."""

from auxskd_jax.ops.augment import (CONVENTIONS, IMAGENET_MEAN, IMAGENET_STD, augment_clips,
                                    center_crop_offsets, crop_clips, flip_clips,
                                    from_convention, random_crop_offsets, to_convention)
from auxskd_jax.ops.recipes import (RECIPES, AugmentSpec, ClipSpec, Recipe, get_recipe,
                                    make_clips, num_views, register, validate, window_len)
from auxskd_jax.ops.gather import gather_frames
from auxskd_jax.ops.jitter import JitterParams, color_jitter, draw_jitter_params
from auxskd_jax.ops.rspnet import (augment_query_and_keys, draw_rspnet_speeds, rspnet_offsets,
                                   rspnet_window_len)
from auxskd_jax.ops.sampling import (consecutive_offsets, draw_pace, draw_vcop_order,
                                     draw_vspp, draw_vspp_pair, num_vcop_orders, pace_offsets,
                                     vcop_offsets, vcop_permutations, vspp_offsets, vspp_span)

__all__ = [
    "AugmentSpec", "CONVENTIONS", "ClipSpec", "IMAGENET_MEAN", "IMAGENET_STD", "JitterParams",
    "RECIPES", "Recipe", "augment_clips", "get_recipe", "register",
    "center_crop_offsets", "color_jitter", "consecutive_offsets", "crop_clips",
    "draw_jitter_params", "draw_pace", "draw_rspnet_speeds", "draw_vcop_order", "draw_vspp",
    "draw_vspp_pair", "flip_clips", "from_convention", "gather_frames", "make_clips",
    "num_vcop_orders", "num_views", "pace_offsets", "random_crop_offsets", "augment_query_and_keys",
    "rspnet_offsets", "rspnet_window_len", "to_convention", "validate", "vcop_offsets",
    "vcop_permutations", "vspp_offsets", "vspp_span", "window_len",
]
