"""The shipped experiment configs (each file has `get_config()`); installed as
`auxskd_jax.configs`, listed by `auxskd --help`."""
