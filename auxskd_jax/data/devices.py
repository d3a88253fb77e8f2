"""Kept only so that `from auxskd_jax.data import shard_for_devices, prefetch_to_devices`
still works: the implementation lives in `auxskd_jax.train.devices` (the one module that puts
data on devices). Delete this file once `data/__init__.py` imports from there."""

from auxskd_jax.train.devices import prefetch_to_devices, shard_for_devices

__all__ = ["prefetch_to_devices", "shard_for_devices"]
