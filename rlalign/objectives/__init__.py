"""Loss functions, advantage estimators and KL estimators.

Every module in this package is imported here, so an objective registers itself by existing:
add ``my_loss.py`` with a ``base.register(...)`` call and name it in a config.
"""
import importlib
import pkgutil

from rlalign.objectives import advantages, base, kl
from rlalign.objectives.base import ModelOutputs, Objective, aggregate, get, names, register

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ModelOutputs", "Objective", "advantages", "aggregate", "base", "get", "kl", "names",
           "register"]
