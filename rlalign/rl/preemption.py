"""Preemption: SIGTERM or SIGINT ends a run at the next step boundary with a checkpoint.

Clusters preempt with SIGTERM (SLURM, Kubernetes, Cloud TPU maintenance), and a person stops a
run with Ctrl-C. Either signal only raises a flag; the phase loop finishes the step it is in,
writes a checkpoint of that step (a save already under way completes first), and raises
:class:`Preempted`. The CLI turns that into exit code :data:`EXIT_CODE`, which a launcher
reads as "requeue me" (``launch/slurm.sbatch``). A second signal while the first is pending
stops the process at once, as Ctrl-C normally would.

On several processes, only some may receive the signal; the loop asks every process each step
(:func:`agreed`), so all of them stop after the same step and save it together.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

# sysexits' EX_TEMPFAIL: a temporary failure; running the same command again is expected to work.
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: Optional[int] = None


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint; rerunning resumes it."""

  def __init__(self, phase: str, step: int, signum: int):
    self.phase, self.step, self.signum = phase, step, signum
    super().__init__(f"stopped by {signal.Signals(signum).name} after step {step} of phase "
                     f"{phase!r}, checkpoint saved; run the same command again to resume")


def _handle(signum, frame) -> None:
  global _received
  if _received is not None:  # the second signal: stop now, as if no handler were installed
    if signum == signal.SIGINT:
      raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    return
  _received = signum


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
  """SIGTERM and SIGINT set the flag instead of stopping the process, inside the block."""
  global _received
  _received = None
  previous = {s: signal.signal(s, _handle) for s in SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _received = None


def request(signum: int = signal.SIGTERM) -> None:
  """Raises the flag as the signal handler would (for tests, and for code that decides to
  stop a run itself)."""
  global _received
  _received = signum


def received() -> Optional[int]:
  """The signal this process received, if any."""
  return _received


def agreed() -> Optional[int]:
  """The signal any process received, the same on every process (a host allgather when
  there are several; every process must call it at the same point)."""
  if jax.process_count() == 1:
    return _received
  mine = np.int32(_received or 0)
  every = np.asarray(multihost_utils.process_allgather(mine))
  signum = int(every.max())
  return signum or None
