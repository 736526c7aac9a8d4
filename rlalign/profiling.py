"""Counting XLA compilations, to keep "one compile per shape" an observed fact."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List

from jax import monitoring

# The event JAX records once per backend (XLA) compilation.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  def __init__(self) -> None:
    self.durations: List[float] = []
    self._lock = threading.Lock()

  @property
  def count(self) -> int:
    return len(self.durations)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event == BACKEND_COMPILE_EVENT:
      with self._lock:
        self.durations.append(duration)


@contextlib.contextmanager
def count_compilations() -> Iterator[CompileCounter]:
  """Counts backend compilations inside the block (jit cache hits do not count)."""
  counter = CompileCounter()
  monitoring.register_event_duration_secs_listener(counter._on_event)
  try:
    yield counter
  finally:
    monitoring.unregister_event_duration_listener(counter._on_event)
