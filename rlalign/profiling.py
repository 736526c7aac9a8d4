"""Counting XLA compilations, to keep "one compile per shape" an observed fact, and the
persistent compilation cache that lets a relaunch skip them."""
from __future__ import annotations

import contextlib
import os
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


def enable_compilation_cache(directory: str) -> None:
  """Keeps every compiled program in ``directory`` across processes.

  A relaunch of the same config (a resume after preemption, a rerun with another seed) then
  loads its programs instead of compiling them. Entries are keyed by the program and the
  XLA version, so a stale one is never used.
  """
  import jax
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  # Cache even sub-second compiles: on a small model they are most of the start-up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
