"""The generic training loop, its state, optimizer, checkpoints, logs and encoder loading.

Import submodules directly (`from auxskd_jax.train import loop`); nothing here imports
TensorFlow.
"""
