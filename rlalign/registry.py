"""Registries by name: objectives, rewards and recipes each keep one.

A name registers once; looking up an unknown one raises a KeyError that lists what is
registered, which the config conversion passes on naming the key at fault.
"""
from __future__ import annotations

from typing import Dict, Generic, Tuple, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):

  def __init__(self, kind: str):
    self.kind = kind
    self._items: Dict[str, T] = {}

  def register(self, name: str, item: T) -> T:
    if name in self._items:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._items[name] = item
    return item

  def get(self, name: str) -> T:
    if name not in self._items:
      raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._items)}")
    return self._items[name]

  def names(self) -> Tuple[str, ...]:
    return tuple(sorted(self._items))

  def __contains__(self, name: str) -> bool:
    return name in self._items
