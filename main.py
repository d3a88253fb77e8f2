"""`python main.py --config=configs/X.py --workdir=DIR --config.k=v`: the command line of
`auxskd_jax/cli.py` (also installed as `auxskd`)."""

from auxskd_jax import cli

if __name__ == "__main__":
  cli.main()
