"""A non-editable install works on its own: the wheel ships the configs and `auxskd --help`
lists them, from a directory that is not the repository. The quick demo runs through the
installed command in tests/test_demo.py (`installed` is shared: one demo run serves both).

The wheel goes into a fresh venv that sees this interpreter's packages (jax & co.) through a
.pth file, without dependencies or build isolation, so the test builds and installs in seconds;
the test checks that the installed copy, not this checkout, is the one imported.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__", ".venv*",
                               "workdir*", ".pytest_cache")


def run(args, cwd, env, timeout=300):
  out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
  return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("install")
  source = tmp / "src"
  shutil.copytree(_ROOT, source, ignore=_SKIP)  # an in-tree build must not touch the checkout
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        str(source), "-w", str(tmp / "wheel")], cwd=tmp, env=env)
  wheel = next((tmp / "wheel").glob("auxskd_jax-*.whl"))
  env_dir = tmp / "venv"
  venv.create(env_dir, with_pip=False)
  python = env_dir / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                            "print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(purelib, "outer.pth"), "w") as f:  # after the venv's own packages
    f.write(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
  run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
        "--no-build-isolation", str(wheel)], cwd=tmp, env=env)
  home = tmp / "elsewhere"
  home.mkdir()
  return env_dir / "bin", home, env, purelib


def cache_flag() -> str:
  """The test session's compilation cache (tests/conftest.py) for an installed command, which
  would otherwise write to the user's ~/.cache (config.compilation_cache_dir's default)."""
  return f"--config.compilation_cache_dir={os.environ['JAX_COMPILATION_CACHE_DIR']}"


@pytest.mark.slow
def test_installed_command_runs_from_anywhere(installed):
  bin_dir, home, env, purelib = installed
  where = run([str(bin_dir / "python"), "-c", "import auxskd_jax, auxskd_jax.configs; "
                "print(auxskd_jax.__file__)"], cwd=home, env=env).stdout.strip()
  assert where.startswith(purelib), where  # the wheel's copy, not the checkout
  out = run([str(bin_dir / "auxskd"), "--help"], cwd=home, env=env).stdout
  for name in ("auxskd_r21d_k100", "vspp_r21d_k100", "demo", "retrieval", "--show_config"):
    assert name in out
  shown = run([str(bin_dir / "auxskd"), "--config=auxskd_r21d_k100", "--show_config"],
               cwd=home, env=env).stdout
  assert "auxskd.queue_size = 15360" in shown and not (home / "runs").exists()
  config_file = os.path.join(purelib, "auxskd_jax", "configs", "vspp_r21d_k100.py")
  assert "task = \"vspp\"" in run([str(bin_dir / "auxskd"), f"--config={config_file}",
                                    "--show_config"], cwd=home, env=env).stdout
