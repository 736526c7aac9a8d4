"""The package's folders import one way, as the README's layout says; an AST scan keeps it so.

  parallel, data, checkpoint, metrics, profiling, registry, diagnostics  <  models, games
    <  sampling  <  rewards
    <  objectives  <  rl  <  recipes  <  presets, config  <  configs, workdir
    <  main, eval, sample, export  <  bench, studies

A module may import its own folder or any folder ranked below it, never one ranked the same or
above: every import counts, inside functions too.
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rlalign")
RANKS = {
    "parallel": 0, "data": 0, "checkpoint": 0, "metrics": 0, "profiling": 0, "registry": 0,
    "diagnostics": 0,
    "models": 1, "games": 1, "sampling": 2, "rewards": 3, "objectives": 4, "rl": 5, "recipes": 6,
    "presets": 7, "config": 7, "configs": 8, "workdir": 8, "main": 9, "eval": 9, "sample": 9,
    "export": 9, "bench": 10, "studies": 10,
}


def _part(module: str) -> str:
  """``rlalign.rl.iteration`` -> ``rl``; ``rlalign.config`` -> ``config``."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports():
  """(importing part, file, imported part) for every rlalign import in the package."""
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
      importer = _part(rel)
      for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
          targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
          targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
          continue
        for target in targets:
          if target.split(".")[0] == "rlalign" and target != "rlalign":
            part = _part(target)
            if part in RANKS or target.count(".") == 1:
              yield importer, os.path.relpath(path, PACKAGE), part


def test_every_part_is_ranked():
  parts = {p[:-3] if p.endswith(".py") else p for p in os.listdir(PACKAGE)
           if not p.startswith(("_", ".")) and (p.endswith(".py")
                                                or os.path.isdir(os.path.join(PACKAGE, p)))}
  assert parts <= set(RANKS), f"rank the new parts in this test: {sorted(parts - set(RANKS))}"


def test_imports_flow_one_way():
  wrong = sorted({(f, part) for importer, f, part in _imports()
                  if part in RANKS and part != importer
                  and RANKS[part] >= RANKS[importer]})
  assert not wrong, "imports against the layering: " + ", ".join(
      f"{f} imports rlalign.{part}" for f, part in wrong)


@pytest.mark.parametrize("importer, imported", [("models", "parallel"), ("recipes", "rl"),
                                                ("config", "recipes"), ("rl", "objectives")])
def test_the_scan_sees_real_imports(importer, imported):
  """Imports known to exist are found, so an empty list of wrong ones means something."""
  assert (importer, imported) in {(a, b) for a, _, b in _imports()}
