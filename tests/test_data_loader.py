"""The TF-free reader and the grain loader, on the `tiny_prepared` dataset."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from auxskd_jax import data
from auxskd_jax.train import devices
from auxskd_jax.testing import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def train(tiny_prepared):
  return data.open_split(*tiny_prepared, "train")


def _check_windows(batch, source):
  for row in np.flatnonzero(batch["mask"]):
    i, n = batch["index"][row], batch["num_frames"][row]
    assert n == source.num_frames(i) and batch["label"][row] == source.label(i)
    for v, start in enumerate(batch["starts"][row]):
      got = [synthetic.decode_index(f) for f in batch["windows"][row, v]]
      assert got == [(start + j) % n for j in range(batch["windows"].shape[2])]


def test_source_metadata_and_random_access(train):
  assert len(train) == 12 and train.num_classes == 3 and train.frame_shape == (32, 40)
  assert sorted({train.label(i) for i in range(12)}) == [0, 1, 2]
  assert all(20 <= train.num_frames(i) <= 40 for i in range(12))
  frames = train.read_frames(3, [2, 0, train.num_frames(3)])
  assert frames.shape == (3, 32, 40, 3) and frames.dtype == np.uint8
  assert [synthetic.decode_index(f) for f in frames] == [2, 0, 0]
  with pytest.raises(IndexError):
    train.read_frames(12, [0])


def test_open_split_errors(tiny_prepared, tmp_path):
  data_dir, name = tiny_prepared
  with pytest.raises(FileNotFoundError, match="available"):
    data.open_split(data_dir, "nope/x", "train")
  with pytest.raises(KeyError, match="no split"):
    data.open_split(data_dir, name, "validation")
  with pytest.raises(FileNotFoundError, match="data_dir"):
    data.open_split(str(tmp_path / "missing"), name, "train")
  assert len(data.open_split(data_dir, "ucf101", "test")) == 6  # single config resolves


def test_windows_are_frame_exact_and_loop(train):
  it = data.make_loader(train, batch_size=4, views=2, window_len=45, seed=3, num_epochs=1)
  batches = list(it)
  assert len(batches) == 3
  b = batches[0]
  assert b["windows"].shape == (4, 2, 45, 32, 40, 3) and b["windows"].dtype == np.uint8
  assert b["starts"].dtype == np.int32 and b["mask"].dtype == bool and b["mask"].all()
  for batch in batches:  # 45 > every video's length: all windows loop
    _check_windows(batch, train)
  assert sorted(np.concatenate([x["index"] for x in batches])) == list(range(12))


@pytest.mark.parametrize("mode", ["uniform", "center", "zero"])
def test_deterministic_start_modes(train, mode):
  b = next(data.make_loader(train, batch_size=12, views=3, window_len=16, start_mode=mode,
                            shuffle=False, num_epochs=1))
  _check_windows(b, train)
  for row in range(12):
    last = b["num_frames"][row] - 16
    expect = {"uniform": np.round(np.linspace(0, last, 3)), "center": [last // 2] * 3,
              "zero": [0, 0, 0]}[mode]
    np.testing.assert_array_equal(b["starts"][row], expect)


def test_random_starts_depend_on_seed_epoch_and_video(train):
  def starts(seed, epochs=2):
    it = data.make_loader(train, batch_size=6, views=2, window_len=8, seed=seed,
                          num_epochs=epochs)
    out = {}
    for k, b in enumerate(it):
      for i, s in zip(b["index"], b["starts"]):
        out[(k // 2, int(i))] = tuple(s)
    return out

  a, b = starts(0), starts(0)
  assert a == b and len(a) == 24
  assert a != starts(1)
  assert any(a[(0, i)] != a[(1, i)] for i in range(12))  # epochs differ
  assert len({v for v in a.values()}) > 12  # views within a video differ


def test_shards_cover_every_video_once_with_padding(train):
  for shuffle in (False, True):
    seen, counts = [], []
    for shard in range(2):
      batches = list(data.make_loader(train, batch_size=4, views=1, window_len=4,
                                      shuffle=shuffle, num_epochs=1, drop_remainder=False,
                                      shard_index=shard, shard_count=2, start_mode="zero"))
      counts.append(len(batches))
      for b in batches:
        seen += list(b["index"][b["mask"]])
        assert (b["index"][~b["mask"]] == -1).all() and (b["windows"][~b["mask"]] == 0).all()
    assert counts == [2, 2] and sorted(seen) == list(range(12))


def test_training_shards_are_disjoint_and_equal_length(train):
  a = list(data.make_loader(train, batch_size=2, window_len=2, num_epochs=1, shard_index=0,
                            shard_count=3))
  b = list(data.make_loader(train, batch_size=2, window_len=2, num_epochs=1, shard_index=1,
                            shard_count=3))
  ia, ib = np.concatenate([x["index"] for x in a]), np.concatenate([x["index"] for x in b])
  assert len(a) == len(b) == data.num_batches(12, batch_size=2, shard_count=3) == 2
  assert not set(ia) & set(ib)


def test_resume_from_state_gives_same_batches(train):
  kwargs = dict(batch_size=3, views=2, window_len=6, seed=7)
  it = data.make_loader(train, **kwargs)
  for _ in range(5):  # into the second epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = data.make_loader(train, **kwargs)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_worker_processes_give_identical_data(train):
  kwargs = dict(batch_size=4, views=2, window_len=5, seed=2, num_epochs=1)
  plain = list(data.make_loader(train, **kwargs))
  workers = list(data.make_loader(train, workers=2, **kwargs))
  threads = list(data.make_loader(train, threads=3, **kwargs))
  for a, b, c in zip(plain, workers, threads, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(a[key], c[key])


def test_bad_loader_arguments(train):
  with pytest.raises(ValueError, match="start_mode"):
    data.make_loader(train, batch_size=2, start_mode="middle")
  with pytest.raises(ValueError, match="shard_index"):
    data.make_loader(train, batch_size=2, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="num_epochs"):
    data.make_loader(train, batch_size=2, drop_remainder=False)


def test_shard_and_prefetch_to_devices(train):
  n = jax.local_device_count()
  assert n == 4
  batch = {"x": np.arange(8 * 3).reshape(8, 3)}
  assert devices.shard_for_devices(batch, n)["x"].shape == (4, 2, 3)
  with pytest.raises(ValueError, match="multiple"):
    devices.shard_for_devices({"x": np.zeros(6)}, n)
  it = data.make_loader(train, batch_size=8, window_len=3, num_epochs=1, shuffle=False)
  out = list(devices.prefetch_to_devices(it, size=2))
  assert len(out) == 1 and out[0]["windows"].shape == (4, 2, 1, 3, 32, 40, 3)
  np.testing.assert_array_equal(np.asarray(out[0]["index"]).ravel(), np.arange(8))
  assert jax.pmap(lambda i: i.sum())(out[0]["index"]).shape == (4,)


def test_reading_needs_no_tensorflow(tiny_prepared):
  code = textwrap.dedent(f"""
      import sys
      sys.modules["tensorflow"] = None  # any `import tensorflow` now fails
      from auxskd_jax import data
      from auxskd_jax.testing import synthetic
      src = data.open_split({tiny_prepared[0]!r}, {tiny_prepared[1]!r}, "train")
      b = next(data.make_loader(src, batch_size=2, views=2, window_len=31))
      n = b["num_frames"][0]
      got = [synthetic.decode_index(f) for f in b["windows"][0, 1]]
      assert got == [(b["starts"][0, 1] + j) % n for j in range(31)], got
      assert "tensorflow_datasets" not in sys.modules and sys.modules["tensorflow"] is None
      print("ok")
  """)
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
