"""Host rewards in worker processes, so a reward that hangs, raises or crashes costs its rows,
not the run.

:func:`rlalign.rewards.base.score_host` calls host rewards inline: one that loops forever stalls
training, and one that raises ends it. :class:`HostRewardPool` runs them in ``spawn``-started
worker processes instead (the trainer runs JAX with threads, so ``fork`` is unsafe). Each call
of a reward on a chunk of rows gets ``timeout_s``; a chunk whose call raises, returns the wrong
shape or type, kills its worker or runs out of time scores ``fallback`` on its rows, and so do
single non-finite values. A worker that ran out of time is killed and replaced, and every
failure is counted in the metrics and logged as one warning line per reward and call.

A worker finds a reward by name: it imports ``rlalign.rewards`` (which registers the built-in
rewards) and the module that defined the reward's function, then looks the name up in the
registry. Only names and strings cross the process boundary, never functions, so a reward must
be registered when its module is imported (at module level, not inside a function or a
``__main__`` guard; as with any ``spawn`` user, a script that scores through a pool needs
that guard around its work, or its workers fail to start). Workers are daemonic, so a reward
cannot start ``multiprocessing`` processes of its own (``subprocess`` is fine).

This module imports numpy only: workers import JAX through ``rlalign.rewards`` anyway, but the
parent should not pay for anything it does not use.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import math
import multiprocessing
from multiprocessing import connection as mp_connection
import numbers
import os
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
  from rlalign.rewards import base

_LOG = logging.getLogger(__name__)

# A worker imports JAX and every reward module before it takes work; on a loaded machine that
# can take a while, and it is not the reward's time, so it has a budget of its own.
_START_TIMEOUT_S = 120.0
# How long a worker gets to leave after each of: a polite request, SIGTERM, SIGKILL.
_STOP_GRACE_S = 1.0
_MESSAGE_CHARS = 200


@dataclasses.dataclass(frozen=True)
class HostRewardSettings:
  """How host rewards run.

  Attributes:
    workers: worker processes. 0 runs each reward inline in the calling process, as
      ``base.score_host`` does: errors, bad shapes and non-finite values still fall back, but a
      hang cannot be timed out. For debugging.
    timeout_s: the most one call of a reward on one chunk may take, in seconds.
    fallback: the score of a row whose reward failed.
    chunk_size: rows per call; 0 splits the batch evenly over the workers.
  """
  workers: int = 2
  timeout_s: float = 30.0
  fallback: float = 0.0
  chunk_size: int = 0

  def validate(self, prefix: str) -> None:
    if not _is_int(self.workers) or self.workers < 0:
      raise ValueError(f"{prefix}.workers must be an int >= 0 (0 runs rewards inline), "
                       f"got {self.workers!r}")
    if not _is_real(self.timeout_s) or not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
      raise ValueError(f"{prefix}.timeout_s must be a finite number > 0, got {self.timeout_s!r}")
    if not _is_real(self.fallback) or not math.isfinite(self.fallback):
      raise ValueError(f"{prefix}.fallback must be a finite number, got {self.fallback!r}")
    if not _is_int(self.chunk_size) or self.chunk_size < 0:
      raise ValueError(f"{prefix}.chunk_size must be an int >= 0 (0 splits the batch over the "
                       f"workers), got {self.chunk_size!r}")


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(exc: BaseException) -> str:
  return _shorten(f"{type(exc).__name__}: {exc}")


def _shorten(text: str, limit: int = _MESSAGE_CHARS) -> str:
  text = " ".join(text.split())  # one log line, however the message was laid out
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _call(fn, prompts: List[str], completions: List[str], answers: List[str],
          catch: Tuple[type, ...]) -> Tuple[str, Any]:
  """One reward call: ``("ok", float32 [n])`` or ``("error", "Type: message")``."""
  try:
    value = np.asarray(fn(prompts, completions, answers), np.float32)
    if value.shape != (len(completions),):
      raise ValueError(f"returned shape {value.shape}, expected ({len(completions)},)")
  except catch as e:
    return "error", _describe(e)
  return "ok", value


# The worker process.


def _exit_with_parent() -> None:
  """Ends this worker when its parent dies, even mid-reward, so no orphan outlives a run."""
  parent = multiprocessing.parent_process()
  if parent is None:
    return

  def watch():
    parent.join()
    os._exit(1)

  threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_main(conn) -> None:
  """Serves ``(index, module, name, prompts, completions, answers)`` requests until ``None``."""
  # Ctrl-C reaches the whole process group; the parent decides when workers stop.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _exit_with_parent()
  try:
    importlib.import_module("rlalign.rewards")
    from rlalign.rewards import base  # pylint: disable=import-outside-toplevel
  except BaseException as e:  # pylint: disable=broad-except
    conn.send(("failed", _describe(e)))
    return
  conn.send(("ready",))
  while True:
    try:
      request = conn.recv()
    except (EOFError, OSError):
      return
    if request is None:
      return
    index, module, name, prompts, completions, answers = request
    try:
      importlib.import_module(module)  # where the reward registers itself
      fn = base.get(name).fn
    except BaseException as e:  # pylint: disable=broad-except
      reply = ("error", _describe(e))
    else:
      # BaseException too: a reward calling sys.exit should not take its worker with it.
      reply = _call(fn, prompts, completions, answers, (BaseException,))
    conn.send(("done", index) + reply)


# The parent's side.


class _Worker:
  """One worker process and the parent's end of its pipe."""

  def __init__(self, ctx, slot: int):
    conn, child_conn = ctx.Pipe()
    self.process = ctx.Process(target=_worker_main, args=(child_conn,),
                               name=f"host-reward-worker-{slot}", daemon=True)
    self.process.start()
    child_conn.close()  # so that the worker's death reads as EOF here
    self.conn = conn
    self.ready = False
    self.task: Optional[_Task] = None
    self.deadline = time.monotonic() + _START_TIMEOUT_S

  def exit_note(self) -> str:
    self.process.join(_STOP_GRACE_S)
    return f"worker exited with code {self.process.exitcode}"


def _stop(workers: Sequence[Optional[_Worker]], polite: bool = True) -> None:
  """Stops workers: asks, then terminates, then kills, each with a short grace period."""
  workers = [w for w in workers if w is not None]
  if polite:
    for w in workers:
      try:
        w.conn.send(None)
      except (OSError, ValueError):
        pass
    _join_all(workers)
  for escalate in ("terminate", "kill"):
    alive = [w for w in workers if w.process.is_alive()]
    for w in alive:
      getattr(w.process, escalate)()
    _join_all(alive)
  for w in workers:
    w.conn.close()
    if not w.process.is_alive():
      w.process.close()


def _join_all(workers: Sequence[_Worker]) -> None:
  deadline = time.monotonic() + _STOP_GRACE_S
  for w in workers:
    w.process.join(max(0.0, deadline - time.monotonic()))


def _shutdown(slots: List[Optional[_Worker]]) -> None:
  _stop(slots)
  slots[:] = [None] * len(slots)


@dataclasses.dataclass
class _Task:
  """One call of one reward on rows ``[start, stop)``."""
  index: int
  key: str  # the term's source: what its scores are called
  reward: str  # the registered name, which the worker looks up
  module: str  # where the reward's function is defined, which the worker imports
  start: int
  stop: int
  kind: str = ""  # "ok", "error" or "timeout" once done
  value: Any = None  # float32 [stop - start] if ok, else the error's description


class HostRewardPool:
  """Scores host rewards in worker processes that cannot hang or crash the caller.

  Workers start on first use (or at :meth:`start`) and stop at :meth:`close`, at interpreter
  exit, or when the pool is garbage-collected. Use it as a context manager. One call of
  :meth:`score` runs at a time.
  """

  def __init__(self, settings: HostRewardSettings = HostRewardSettings()):
    settings.validate("host_rewards")
    self.settings = settings
    self._ctx = multiprocessing.get_context("spawn")
    self._slots: List[Optional[_Worker]] = [None] * settings.workers
    self._lock = threading.Lock()
    self._closed = False
    # Holds the slot list, not the pool, so an unreferenced pool is still collected.
    self._finalizer = weakref.finalize(self, _shutdown, self._slots)

  def __enter__(self) -> HostRewardPool:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Stops every worker; idempotent. The pool cannot score afterwards."""
    with self._lock:
      self._closed = True
      self._finalizer()

  def start(self, wait: bool = False) -> None:
    """Starts the workers now rather than on first use; ``wait`` blocks until they are up."""
    with self._lock:
      self._check_open()
      self._fill_slots()
      failures: List[str] = []
      while wait and any(w is not None and not w.ready for w in self._slots):
        self._pump(failures)
      if failures:
        _LOG.warning("host reward workers failed to start: %s", failures[0])

  def score(self, terms: Sequence[base.RewardTerm], prompts: Sequence[str],
            completions: Sequence[str], answers: Sequence[str]
            ) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """Scores every host term of ``terms`` (in-graph ones are skipped) on decoded text.

    Args:
      terms: the run's reward terms.
      prompts: decoded prompts, one per row.
      completions: decoded completions, one per row.
      answers: decoded reference answers, one per row.

    Returns:
      ``(scores, metrics)``: float32 [B] per host term, by its ``key`` (its source, else its
      reward's name) as in ``base.score_host``, with ``fallback`` on the rows
      whose reward failed; and, per term, the rows that fell back to an error, a timeout or a
      non-finite value in this call (``host_reward/<key>/{errors,timeouts,nonfinite}``),
      beside ``host_reward/seconds``, this call's wall time.
    """
    begin = time.perf_counter()
    texts = (list(prompts), list(completions), list(answers))
    if not len(texts[0]) == len(texts[1]) == len(texts[2]):
      raise ValueError(f"host rewards got {len(texts[0])} prompts, {len(texts[1])} "
                       f"completions and {len(texts[2])} answers")
    rows = len(texts[0])
    # By source key, as base.score_host: one reward may score under two sources.
    host_terms: Dict[str, Any] = {}
    for term in terms:
      if not term.reward.in_graph:
        host_terms.setdefault(term.key, term.reward)
    tasks: List[_Task] = []
    for key, reward in host_terms.items():
      for start, stop in self._chunks(rows):
        tasks.append(_Task(len(tasks), key, reward.name, reward.fn.__module__, start, stop))
    with self._lock:
      self._check_open()
      if self.settings.workers:
        self._run(tasks, texts)
      else:
        for task in tasks:
          task.kind, task.value = _call(host_terms[task.key].fn,
                                        *(t[task.start:task.stop] for t in texts),
                                        catch=(Exception,))
    scores, metrics = {}, {}
    for key in host_terms:
      scores[key], counts = self._assemble(key, rows, [t for t in tasks if t.key == key])
      metrics.update({f"host_reward/{key}/{k}": float(v) for k, v in counts.items()})
    metrics["host_reward/seconds"] = time.perf_counter() - begin
    return scores, metrics

  # Internals.

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("HostRewardPool is closed")

  def _chunks(self, rows: int) -> List[Tuple[int, int]]:
    size = self.settings.chunk_size
    if not rows:
      return []
    if size:
      return [(start, min(start + size, rows)) for start in range(0, rows, size)]
    parts = min(max(self.settings.workers, 1), rows)
    bounds = [i * rows // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))

  def _spawn(self, slot: int) -> Optional[_Worker]:
    try:
      return _Worker(self._ctx, slot)
    except Exception as e:  # pylint: disable=broad-except
      # Out of processes or memory: the rows fall back now, the next call tries again.
      _LOG.warning("could not start a host reward worker: %s", _describe(e))
      return None

  def _fill_slots(self) -> None:
    for slot, worker in enumerate(self._slots):
      if worker is None:
        self._slots[slot] = self._spawn(slot)

  def _replace(self, worker: _Worker, polite: bool = False) -> None:
    slot = self._slots.index(worker)
    _stop([worker], polite)
    self._slots[slot] = self._spawn(slot)

  def _drop(self, worker: _Worker) -> None:
    """Gives up on a worker that could not start; the next call tries a fresh one."""
    self._slots[self._slots.index(worker)] = None
    _stop([worker], polite=False)

  def _run(self, tasks: List[_Task], texts: Tuple[List[str], ...]) -> None:
    """Runs ``tasks`` on the workers, filling in each task's outcome."""
    pending: Deque[_Task] = collections.deque(tasks)
    failures: List[str] = []  # why workers failed to start, in this call
    if tasks:
      self._fill_slots()
    while True:
      for worker in list(self._slots):
        if pending and worker is not None and worker.ready and worker.task is None:
          self._send(worker, pending.popleft(), texts, pending)
      live = [w for w in self._slots if w is not None]
      if not pending and all(w.task is None for w in live):
        break
      if pending and not live:
        for task in pending:
          task.kind = "error"
          task.value = f"WorkerStartError: {failures[-1] if failures else 'no worker'}"
        break
      self._pump(failures)
    if failures:
      _LOG.warning("host reward workers failed to start: %s", failures[0])

  def _send(self, worker: _Worker, task: _Task, texts: Tuple[List[str], ...],
            pending: Deque[_Task]) -> None:
    request = (task.index, task.module, task.reward) + tuple(t[task.start:task.stop]
                                                           for t in texts)
    try:
      worker.conn.send(request)
    except (OSError, ValueError):
      # It died while idle; the task did nothing yet, so it waits for the replacement.
      pending.appendleft(task)
      self._replace(worker)
      return
    worker.task = task
    worker.deadline = time.monotonic() + self.settings.timeout_s

  def _pump(self, failures: List[str]) -> None:
    """Waits for the next message or deadline among workers that are busy or starting."""
    watched = [w for w in self._slots if w is not None and (w.task is not None or not w.ready)]
    if not watched:
      return
    timeout = max(0.0, min(w.deadline for w in watched) - time.monotonic())
    ready = set(mp_connection.wait([w.conn for w in watched] +
                                   [w.process.sentinel for w in watched], timeout))
    for worker in watched:
      if worker.conn in ready or (worker.process.sentinel in ready and worker.conn.poll()):
        try:
          message = worker.conn.recv()
        except (EOFError, OSError):
          self._on_death(worker, failures)
        else:
          self._on_message(worker, message, failures)
      elif worker.process.sentinel in ready:
        self._on_death(worker, failures)
      elif worker.deadline <= time.monotonic():
        self._on_deadline(worker, failures)

  def _on_message(self, worker: _Worker, message: Tuple[Any, ...], failures: List[str]) -> None:
    if message[0] == "ready":
      worker.ready, worker.deadline = True, math.inf
    elif message[0] == "failed":
      failures.append(message[1])
      self._drop(worker)
    else:  # ("done", index, kind, value)
      task, worker.task, worker.deadline = worker.task, None, math.inf
      assert task is not None and task.index == message[1], (task, message[:2])
      task.kind, task.value = message[2], message[3]

  def _on_death(self, worker: _Worker, failures: List[str]) -> None:
    note = worker.exit_note()
    if worker.task is None:
      failures.append(f"{note} while starting")
      self._drop(worker)
    else:  # the reward took its worker down (a crash, os._exit, the OOM killer)
      worker.task.kind, worker.task.value = "error", f"WorkerDied: {note}"
      self._replace(worker)

  def _on_deadline(self, worker: _Worker, failures: List[str]) -> None:
    if worker.task is None:
      failures.append(f"worker did not start within {_START_TIMEOUT_S:g} s")
      self._drop(worker)
    else:
      worker.task.kind = "timeout"
      self._replace(worker)  # it is stuck inside the reward: only a kill stops it

  def _assemble(self, name: str, rows: int, tasks: Sequence[_Task]
                ) -> Tuple[np.ndarray, Dict[str, int]]:
    fallback = np.float32(self.settings.fallback)
    out = np.full((rows,), fallback, np.float32)
    counts = {"errors": 0, "timeouts": 0, "nonfinite": 0}
    first_error, error_chunks, timeout_chunks = None, 0, 0
    for task in tasks:
      size = task.stop - task.start
      if task.kind == "ok":
        value = task.value
        bad = ~np.isfinite(value)
        counts["nonfinite"] += int(bad.sum())
        out[task.start:task.stop] = np.where(bad, fallback, value)
      elif task.kind == "timeout":
        counts["timeouts"] += size
        timeout_chunks += 1
      else:
        counts["errors"] += size
        error_chunks += 1
        first_error = first_error or task.value
    if any(counts.values()):
      parts = []
      if counts["timeouts"]:
        parts.append(f"timeout after {self.settings.timeout_s:g} s in {timeout_chunks} "
                     f"chunk(s) ({counts['timeouts']} rows)")
      if counts["errors"]:
        parts.append(f"error in {error_chunks} chunk(s) ({counts['errors']} rows), first: "
                     f"{_shorten(str(first_error))}")
      if counts["nonfinite"]:
        parts.append(f"non-finite value in {counts['nonfinite']} rows")
      _LOG.warning("host reward %r: %d of %d rows scored the fallback %g: %s", name,
                   sum(counts.values()), rows, self.settings.fallback, "; ".join(parts))
    return out, counts
