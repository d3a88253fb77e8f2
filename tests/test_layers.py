"""The package's layers import only downward, and no module imports itself back round a cycle.

docs/DESIGN.md draws the layers: errors -> config -> models, ops, data, weights -> train ->
methods, evaluate -> tasks -> cli (main.py). Imports inside functions count too: they were how
the old config.py <-> evaluate/backbone.py cycle hid. The check reads the source (ast), so it
costs nothing and sees modules that are never imported in the test run.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "auxskd_jax")

# Each top-level module or package of auxskd_jax and its layer: a module may import from its
# own layer or lower ones only. Small helpers every layer needs sit just above `errors`.
LAYERS: dict[str, int] = {
    "errors": 0,
    "defaults": 1, "distributed": 1, "runtime": 1, "trees": 1,
    "config": 2,
    "models": 3, "ops": 3, "data": 3, "weights": 3, "testing": 3,
    "train": 4, "workdir_lock": 4,
    "methods": 5, "evaluate": 5, "demo": 5, "api": 5,
    "tasks": 6,
    "cli_help": 7, "cli": 7,
}


def _modules() -> dict[str, str]:
  """Every module of the package: dotted name -> file."""
  found = {}
  for dirpath, _, files in os.walk(ROOT):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
      found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return found


def _imports(module: str, path: str, known: set[str]) -> set[str]:
  """The package modules `module` imports, anywhere in its file (absolute and relative)."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
      else:
        stem = node.module or ""
      # `from pkg import name`: name may be a submodule or an attribute of pkg.
      targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    else:
      continue
    for target in targets:
      while target and target not in known:  # an attribute: fall back to its module
        target = target.rpartition(".")[0]
      if target.startswith("auxskd_jax.") and target != module:
        out.add(target)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  return {m: _imports(m, p, known) for m, p in modules.items()}


def _top(module: str) -> str:
  return module.split(".")[1] if module.count(".") else ""


def test_every_top_level_module_has_a_layer():
  tops = {_top(m) for m in _modules()} - {""}
  missing = sorted(tops - set(LAYERS))
  assert not missing, f"add these to LAYERS here and to docs/DESIGN.md: {missing}"


def test_imports_only_go_down():
  upward = []
  for module, targets in _graph().items():
    if not _top(module):
      continue  # auxskd_jax/__init__.py re-exports; it imports nothing at load time (lazy)
    for target in targets:
      if _top(target) and LAYERS[_top(target)] > LAYERS[_top(module)]:
        upward.append(f"{module} -> {target}")
  assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan, iterative)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = 0
  for root in graph:
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = counter
    counter += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is None:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          component = []
          while True:
            member = stack.pop()
            on_stack.discard(member)
            component.append(member)
            if member == node:
              break
          if len(component) > 1:
            out.append(sorted(component))
      elif child not in index:
        index[child] = low[child] = counter
        counter += 1
        stack.append(child)
        on_stack.add(child)
        work.append((child, iter(sorted(graph.get(child, ())))))
      elif child in on_stack:
        low[node] = min(low[node], index[child])
  return out


def test_no_import_cycles():
  # A package's __init__ that re-exports its submodules is not a cycle with them; only
  # import edges between different files count, so drop child -> own-package edges.
  graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _graph().items()}
  cycles = _cycles(graph)
  assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
  """The check itself works: a module that imports from a higher layer is found."""
  modules = {"auxskd_jax.models.bad": str(tmp_path / "bad.py")}
  (tmp_path / "bad.py").write_text("from auxskd_jax.tasks import pipeline\n"
                                   "def f():\n  import auxskd_jax.train.loop\n")
  known = {"auxskd_jax.tasks", "auxskd_jax.tasks.pipeline", "auxskd_jax.train.loop",
           "auxskd_jax.models.bad"}
  got = _imports("auxskd_jax.models.bad", modules["auxskd_jax.models.bad"], known)
  assert got == {"auxskd_jax.tasks", "auxskd_jax.tasks.pipeline", "auxskd_jax.train.loop"}
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
