"""Packaging beyond what pyproject.toml can say: the repository's `configs/` ships inside the
wheel as the `auxskd_jax.configs` package, so `auxskd --config=NAME` finds them when installed
(`auxskd_jax.cli_help.configs_dir`)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["auxskd_jax", "auxskd_jax.*"]) + ["auxskd_jax.configs"],
      package_dir={"auxskd_jax.configs": "configs"})
