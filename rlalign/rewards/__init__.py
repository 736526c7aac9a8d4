"""Rewards: the shared interface, and every module here, which registers its rewards on import.

A new reward is one new file in this package: it is imported below, so naming it in a config
is enough.
"""
import importlib
import pkgutil

from rlalign.rewards import base
from rlalign.rewards.base import (NoSettings, Reward, RewardTerm, RoleModel, combine, get, host,
                                  in_graph, names)

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["NoSettings", "Reward", "RewardTerm", "RoleModel", "base", "combine", "get", "host",
           "in_graph", "names"]
