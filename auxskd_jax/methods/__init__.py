"""Training methods: each module defines one `Method` subclass (`methods/base.py`) for
`train.loop.fit`; every such file is a pretraining task (`auxskd_jax.tasks.pretrain`)."""
