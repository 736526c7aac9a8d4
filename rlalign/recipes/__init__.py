"""Recipes: loops over phases and roles. Every module here registers its recipe on import."""
import importlib
import pkgutil

from rlalign.recipes.base import Recipe, get, names, register, run

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Recipe", "get", "names", "register", "run"]
