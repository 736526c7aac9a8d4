"""Atomic, shape-checked checkpoints of the training state, built on Orbax.

A checkpoint at step N is the directory `<directory>/N/` with two items:

  state/  the training-state pytree (step, params, opt_state, rng, ...) as
          Orbax StandardSave arrays, restorable with any sharding;
  data/   a JSON dict, the data iterator position (grain `get_state()`).

Atomicity: Orbax writes a step into `<directory>/N.orbax-checkpoint-tmp`
and renames it to `N/` only after every item is complete (ATOMIC_RENAME
mode; on GCS, where renames are slow, Orbax's COMMIT_FILE mode gives the
same guarantee via a commit marker). Step discovery only accepts finalized
names, so a crash mid-save leaves nothing that `latest_step`/`restore` would
pick up; leftover tmp dirs are deleted when the next `Checkpointer` opens
(in the background, awaited before its first save).

Saves are synchronous: when `save` returns the checkpoint is on disk, so the
caller may immediately donate or overwrite the state's buffers.

Multi-host: every process must call `save`/`restore` (Orbax synchronises
them and writes each array shard from the process that holds it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from orbax.checkpoint import options as ocp_options

STATE_ITEM = "state"
DATA_ITEM = "data"
_MAX_LISTED = 10  # cap on paths listed in a mismatch error


class CheckpointMismatch(ValueError):
  """A readable checkpoint of another state: a different tree or different shapes."""


class CheckpointUnreadable(ValueError):
  """A checkpoint whose files cannot be read back (damaged, truncated, emptied)."""


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  line = text[0] if text else ""
  return f"{type(error).__name__}: {line[:200]}"


def _key_name(key: Any) -> str:
  """Name of one pytree path entry: dict key, attribute name or index."""
  for attr in ("key", "name", "idx"):  # DictKey / GetAttrKey / SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """Maps 'a/b/0/c' leaf paths to shapes.

  Paths are normalised to plain names so that the live state (namedtuples,
  tuples) and Orbax's saved metadata (which stores them as dicts and lists)
  compare equal when they describe the same arrays.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  shapes = {}
  for path, leaf in flat:
    shape = getattr(leaf, "shape", None)
    shapes["/".join(_key_name(k) for k in path)] = tuple(
        np.shape(leaf) if shape is None else shape
    )
  return shapes


def _listing(paths: set[str]) -> str:
  shown = sorted(paths)[:_MAX_LISTED]
  more = len(paths) - len(shown)
  return ", ".join(shown) + (f" (+{more} more)" if more else "")


class Checkpointer:
  """Saves and restores (state pytree, data-iterator dict) pairs by step.

  Args:
    directory: root directory holding one subdirectory per step.
    save_every: `should_save(step)` is true when step % save_every == 0.
    max_to_keep: newest checkpoints retained; older ones are deleted after
      each successful save.
    read_only: only read: create, clean up and delete nothing, so another run
      may still be saving into `directory` (its unfinished save survives).
  """

  def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 2,
               read_only: bool = False):
    if save_every < 1:
      raise ValueError(f"save_every must be >= 1, got {save_every}")
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    is_remote = "://" in directory
    self.directory = directory if is_remote else os.path.abspath(directory)
    self.save_every = save_every
    # Pin write-to-tmp-then-rename locally rather than trusting Orbax's AUTO
    # choice; on object stores keep AUTO (COMMIT_FILE), as renames are slow.
    mode = (
        ocp_options.AtomicityMode.AUTO
        if is_remote
        else ocp_options.AtomicityMode.ATOMIC_RENAME
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        atomicity_options=ocp_options.AtomicityOptions(mode=mode),
        # Delete (possibly large) tmp dirs of saves a crash interrupted; they
        # are never read, and Orbax only replaces one when re-saving its step.
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
        create=True,
    )
    self.read_only = read_only
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, enable_async_checkpointing=False, create=False)
    # Explicit handlers (not just item names): a fresh manager otherwise
    # cannot read item metadata before its first save, e.g. when resuming.
    handlers = {
        STATE_ITEM: ocp.StandardCheckpointHandler(),
        DATA_ITEM: ocp.JsonCheckpointHandler(),
    }
    verbosity = absl_logging.get_verbosity()
    if read_only:  # Orbax warns that a read-only manager's directory is read-only
      absl_logging.set_verbosity(absl_logging.ERROR)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_handlers=handlers)
    finally:
      absl_logging.set_verbosity(verbosity)

  def step_dir(self, step: int) -> str:
    """Directory of a finalized checkpoint (Orbax's default step naming)."""
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    """Finalized checkpoint steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Newest finalized checkpoint step, or None if there is none."""
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.save_every == 0

  def save(
      self,
      step: int,
      state: Any,
      data_state: Mapping[str, Any],
      *,
      force: bool = False,
  ) -> bool:
    """Saves `state` and `data_state` as checkpoint `step`.

    Returns True if a checkpoint was written: only when `should_save(step)`
    or `force`, and never over an existing checkpoint for that step (so a
    final forced save that coincides with a periodic one is a no-op).
    """
    if self.read_only:
      raise RuntimeError(f"checkpoint directory {self.directory} was opened read-only")
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      return False
    # force=True: the save decision is ours; Orbax's own policy would also
    # refuse steps below its latest one.
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardSave(state),
                DATA_ITEM: ocp.args.JsonSave(dict(data_state)),
            }
        ),
        force=True,
    )

  def restore(
      self, abstract_state: Any, step: int | None = None
  ) -> tuple[Any, dict[str, Any]]:
    """Restores (state, data_state) from `step` (default: latest).

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (e.g. from
    jax.eval_shape); restored arrays take its structure, dtype and, where
    given, `.sharding`. Raises FileNotFoundError if the checkpoint does not
    exist and ValueError if its tree or shapes differ from `abstract_state`.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; "
          f"available steps: {self.all_steps()}"
      )
    with self._naming_the_file(step):
      self._check_compatible(step, abstract_state)
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
              **{
                  STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                  DATA_ITEM: ocp.args.JsonRestore(),
              }
          ),
      )
    return restored[STATE_ITEM], dict(restored[DATA_ITEM])

  @contextlib.contextmanager
  def _naming_the_file(self, step: int):
    """Any error reading checkpoint ``step`` as CheckpointUnreadable naming its directory
    (Orbax and tensorstore errors name neither, or only a chunk's hash)."""
    try:
      yield
    except (CheckpointMismatch, CheckpointUnreadable):
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointUnreadable(
          f"checkpoint {self.step_dir(step)} is unreadable: {_first_line(e)}") from e

  def restore_newest_intact(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]]:
    """``(step, state, data_state)`` of the newest checkpoint that restores.

    A newer checkpoint that cannot be read (a truncated array chunk, empty metadata, a cut
    iterator state) is moved aside to ``<step>.unreadable``, kept for inspection, with a
    warning naming it; one of another state's shape (``CheckpointMismatch``) is not damage
    and fails at once. If none can be read, nothing is moved and the error names each.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    unreadable = []
    for step in steps:
      try:
        state, data_state = self.restore(abstract_state, step)
      except CheckpointUnreadable as e:
        unreadable.append((step, _first_line(e.__cause__ or e)))
        continue
      for bad, reason in unreadable:
        aside = self._set_aside(bad)
        absl_logging.warning("checkpoint %s is unreadable (%s); moved to %s, resuming from "
                             "step %d", self.step_dir(bad), reason, aside, step)
        print(f"warning: checkpoint {self.step_dir(bad)} is unreadable ({reason}); moved to "
              f"{aside}, resuming from step {step}", flush=True)
      return step, state, data_state
    raise ValueError(f"no readable checkpoint in {self.directory}: " + "; ".join(
        f"{self.step_dir(step)}: {reason}" for step, reason in unreadable))

  def _set_aside(self, step: int) -> str:
    """Renames checkpoint ``step`` out of Orbax's sight (process 0; the others wait)."""
    source = self.step_dir(step)
    target = f"{source}.unreadable"
    if jax.process_index() == 0:
      n = 1
      while os.path.exists(target):
        n += 1
        target = f"{source}.unreadable{n}"
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"rlalign: set aside {source}")
    self._manager.reload()
    return target

  def restore_subtree(self, step: int, path: tuple[str, ...], abstract: Any) -> Any:
    """Restores one subtree of checkpoint `step`'s state (say one role's params) into the
    shardings of `abstract`; the rest of the state is read to host memory and dropped."""
    with self._naming_the_file(step):
      return self._restore_subtree(step, path, abstract)

  def _restore_subtree(self, step: int, path: tuple[str, ...], abstract: Any) -> Any:
    where = f"checkpoint {self.step_dir(step)}"
    tree = self._manager.item_metadata(step)[STATE_ITEM]
    if tree is None:
      raise CheckpointUnreadable(f"{where}: no readable metadata for item {STATE_ITEM!r}")
    tree = getattr(tree, "tree", tree)
    node = tree
    for i, key in enumerate(path):
      if not isinstance(node, Mapping) or key not in node:
        have = sorted(node) if isinstance(node, Mapping) else []
        raise CheckpointMismatch(f"{where}: no {'/'.join(path[:i + 1])} in its state; "
                         f"{'/'.join(path[:i]) or 'the state'} holds {have}")
      node = node[key]
    saved, expected = _flat_shapes(node), _flat_shapes(abstract)
    if saved != expected:
      diff = sorted(set(saved.items()) ^ set(expected.items()))
      raise CheckpointMismatch(f"{where}: {'/'.join(path)} differs from the expected tree: "
                       f"{_listing({f'{k} {v}' for k, v in diff})}")
    # The rest is read replicated over the same devices as the subtree (restoring it in the
    # saved layout would fail on another topology), then dropped.
    first = jax.tree.leaves(abstract)[0].sharding
    rest = (jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
            if isinstance(first, jax.sharding.NamedSharding) else first)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rest), tree)
    parent = target
    for key in path[:-1]:
      parent = parent[key]
    parent[path[-1]] = abstract
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(target), DATA_ITEM: ocp.args.JsonRestore()}
        ),
    )[STATE_ITEM]
    for key in path:
      restored = restored[key]
    return restored

  def _check_compatible(self, step: int, abstract_state: Any) -> None:
    """Fails loudly if checkpoint `step` does not match `abstract_state`.

    Without this, a checkpoint of a differently shaped model could be
    silently padded/truncated or fail deep inside tensorstore.
    """
    where = f"checkpoint {self.step_dir(step)}"
    metadata = self._manager.item_metadata(step)[STATE_ITEM]
    if metadata is None:
      raise CheckpointUnreadable(f"{where}: no readable metadata for item {STATE_ITEM!r}")
    saved = _flat_shapes(metadata)
    expected = _flat_shapes(abstract_state)
    missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys()
    if missing or unexpected:
      raise CheckpointMismatch(
          f"{where}: tree structure differs from the expected state; "
          f"missing from checkpoint: [{_listing(missing)}]; "
          f"in checkpoint but not expected: [{_listing(unexpected)}]"
      )
    mismatches = [
        f"{where}: {path}: saved shape {saved[path]}, expected {shape}"
        for path, shape in sorted(expected.items())
        if saved[path] != shape
    ]
    if mismatches:
      raise CheckpointMismatch("\n".join(mismatches))

  def wait_until_finished(self) -> None:
    """Blocks until pending work (none for synchronous saves) is done."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
