"""Every declared install requirement is one rlalign imports (or, named here, needs at run
time without importing it); nothing is declared that no module uses."""
import ast
import configparser
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# distribution name -> the module it provides
MODULE = {"jaxlib": "jax", "orbax-checkpoint": "orbax", "tensorflow-datasets":
          "tensorflow_datasets", "array-record": "array_record", "ml-collections":
          "ml_collections", "absl-py": "absl", "tensorboardX": "tensorboardX"}
# Loaded by another package rather than imported by name: TFDS reads array_record files
# through it, and jaxlib is jax's compiled half.
USED_INDIRECTLY = {"array-record", "jaxlib"}


def _requirements():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, "setup.cfg"))
  lines = parser["options"]["install_requires"].strip().splitlines()
  return [re.split(r"[=<>!~ ]", line.strip())[0] for line in lines if line.strip()]


def _imported_top_levels():
  found = set()
  for directory, _, files in os.walk(os.path.join(REPO, "rlalign")):
    if os.path.join("rlalign", "bench", "peers") in directory:
      continue  # peers run in their own environments
    for name in files:
      if name.endswith(".py"):
        tree = ast.parse(open(os.path.join(directory, name)).read())
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
          elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
  return found


def test_every_install_requirement_is_imported():
  imported = _imported_top_levels()
  unused = [req for req in _requirements() if req not in USED_INDIRECTLY
            and MODULE.get(req, req.replace("-", "_")) not in imported]
  assert not unused, f"declared in install_requires but imported by no module: {unused}"
