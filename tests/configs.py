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
