"""Loading the repository's config files by path, as ``--config=configs/<name>.py:<arg>``."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")


def config_path(name: str) -> str:
  return os.path.join(CONFIG_DIR, name if name.endswith(".py") else f"{name}.py")


def load_config(name: str, arg: str = ""):
  """``get_config(arg)`` of ``configs/<name>.py``: a ConfigDict, as the launcher gets it."""
  path = config_path(name)
  spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def typed_config(name: str, arg: str, data_dir: str, **changes):
  """``configs/<name>.py:<arg>`` typed and validated, its data in ``data_dir``, after
  ``changes`` ({"dotted.path": value}) to the ConfigDict."""
  from rlalign import config as config_lib
  config = load_config(name, arg)
  config.data.data_dir = str(data_dir)
  for path, value in changes.items():
    node = config
    *parents, key = path.split(".")
    for p in parents:
      node = node[p]
    node[key] = value
  return config_lib.from_config_dict(config)
