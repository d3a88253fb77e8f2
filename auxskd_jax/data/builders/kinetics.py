"""Kinetics-400 from a `<root>/<class>/<video>.mp4` folder; subsets `k100` (SPEC 7) and `all`.

A root holding `train/`, `val/` or `test/` folders gives one split each; otherwise all videos
are `train`. Class folders may use spaces or underscores (`shooting goal (soccer)`).
"""

from __future__ import annotations

import os

import ml_collections

from auxskd_jax.data.builders.common import (Scan, VideoItem, list_dirs, list_videos,
                                             require_dir, split_subdirs)
from auxskd_jax.data.builders.common import video_id as make_id

K100 = """answering_questions applauding applying_cream auctioning baby_waking_up bandaging
bending_back bending_metal blowing_nose breading_or_breadcrumbing brush_painting building_cabinet
building_shed carrying_baby changing_wheel checking_tires clapping clay_pottery_making
cleaning_toilet climbing_a_rope cooking_sausages cracking_neck cutting_nails digging
doing_laundry drawing drinking_beer drinking_shots drumming_fingers eating_cake eating_carrots
exercising_arm exercising_with_an_exercise_ball faceplanting gargling grinding_meat hockey_stop
holding_snake hugging ice_fishing ironing jogging juggling_soccer_ball laying_bricks
making_a_cake making_a_sandwich making_sushi making_tea massaging_feet massaging_legs
moving_furniture news_anchoring peeling_potatoes plastering playing_controller playing_flute
playing_kickball playing_organ playing_piano pumping_gas push_up reading_newspaper
recording_music ripping_paper rock_scissors_paper running_on_treadmill sanding_floor
setting_table sharpening_knives shaving_legs shooting_goal_(soccer) shredding_paper
sign_language_interpreting skipping_rope skydiving slapping sneezing sniffing spraying
springboard_diving stretching_arm stretching_leg strumming_guitar swinging_legs sword_fighting
taking_a_shower tasting_beer testifying tossing_coin training_dog tying_bow_tie unloading_truck
using_remote_controller_(not_gaming) using_segway washing_hair water_sliding waxing_back
whistling writing yawning""".split()
SUBSETS = ("k100", "all")


def normalize(name: str) -> str:
  return name.strip().replace(" ", "_").replace('"', "").replace("'", "").lower()


OPTIONS = ("subset",)  # config keys that shape the scan (see builders/__init__.py)


def config_name(config: ml_collections.ConfigDict) -> str:
  return config.subset


def scan(config: ml_collections.ConfigDict) -> Scan:
  root = require_dir(config.source_dir, "source_dir")
  if config.subset not in SUBSETS:
    raise ValueError(f"--config.subset={config.subset!r}: use one of {list(SUBSETS)}")
  result = Scan(class_names=None, items=[], description=(
      "Kinetics-100 (SPEC section 7)" if config.subset == "k100" else "Kinetics") +
      ", JPEG frames.")
  splits = split_subdirs(root, result)
  folders = {s: {normalize(d): d for d in list_dirs(p, result)} for s, p in splits.items()}
  if config.subset == "k100":
    classes = list(K100)
    for s, fs in folders.items():
      for c in classes:
        if c not in fs:
          result.skip(os.path.join(splits[s], c), "K100 class folder missing")
  else:
    classes = sorted(set().union(*[set(fs) for fs in folders.values()]))
  result.class_names = classes
  for s, fs in folders.items():
    for label, c in enumerate(classes):
      if c not in fs:
        continue
      cdir = os.path.join(splits[s], fs[c])
      for v in list_videos(cdir, result):
        result.items.append(VideoItem(s, make_id(f"{fs[c]}/{v}"), os.path.join(cdir, v), label))
  return result
