"""A resumed run's config against the one it was started with.

A resume continues the stored run, so its config must mean the same run. Some settings only
change how the run is watched or how far it goes, and are accepted and recorded:

  train.log_every, eval_every, checkpoint_every, max_checkpoints, max_consecutive_skips,
  train.wandb.*                     (where the metrics also go)
  data.data_dir                     (the workdir moved; the dataset is checked as usual)
  phases.<name>.steps, larger       (only while no later phase has started: a finished
                                     phase's successor trained on what it ended with)

Anything else (a learning rate, the seed, the data) is refused with the list of changed keys,
unless ``train.allow_config_change`` is set; an accepted change is appended to
``<workdir>/config_changes.jsonl`` with the step it was made at.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

WATCH_KEYS = frozenset({"train.log_every", "train.eval_every", "train.checkpoint_every",
                        "train.max_checkpoints", "train.max_consecutive_skips",
                        "data.data_dir", "train.allow_config_change"})
_MAX_VALUE_CHARS = 60

Changes = Dict[str, Tuple[Any, Any]]
_MISSING = "<absent>"


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  """Dotted keys of a nested dict; lists are values."""
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


def diff(old: Mapping[str, Any], new: Mapping[str, Any],
         defaults: Optional[Mapping[str, Any]] = None) -> Changes:
  """Every dotted key whose value differs: ``key -> (old, new)``. A key the old config lacks
  whose new value is its field's default (``defaults``, dotted) is a setting added to the
  code since the run started, at the value the run had: no change."""
  a, b = flatten(old), flatten(new)
  defaults = defaults or {}
  added = lambda k: k not in a and k in defaults and b.get(k, _MISSING) == defaults[k]
  return {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
          if a.get(k, _MISSING) != b.get(k, _MISSING) and not added(k)}


def _short(value: Any) -> str:
  text = json.dumps(value) if not isinstance(value, str) or value == _MISSING else repr(value)
  return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 3] + "..."


def describe(changes: Changes) -> str:
  return "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in changes.items())


def split(changes: Changes, schedule: Sequence[str],
            started: Mapping[str, bool]) -> Tuple[Changes, Changes]:
  """``(accepted, refused)`` changes, for a run whose phases run in ``schedule`` order and of
  which ``started[name]`` ones have a checkpoint."""
  accepted, rejected = {}, {}
  for key, (a, b) in changes.items():
    parts = key.split(".")
    if key in WATCH_KEYS or key.startswith("train.wandb."):
      accepted[key] = (a, b)
    elif (len(parts) == 3 and parts[0] == "phases" and parts[2] == "steps"
          and isinstance(a, int) and isinstance(b, int) and b > a and parts[1] in schedule
          and not any(started.get(p) for p in schedule[schedule.index(parts[1]) + 1:])):
      accepted[key] = (a, b)
    else:
      rejected[key] = (a, b)
  return accepted, rejected


def check_resume(workdir: str, new: Mapping[str, Any], schedule: Sequence[str],
                 started: Mapping[str, bool], step: int, allow: bool,
                 record: bool = True, defaults: Optional[Mapping[str, Any]] = None
                 ) -> Optional[Changes]:
  """Compares ``new`` with ``<workdir>/config.json`` when the run has a checkpoint; raises
  ValueError naming the refused keys, or records the accepted changes and returns them."""
  path = os.path.join(workdir, "config.json")
  if not any(started.values()) or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable stored config ({e}); it is what a resume is "
                     "compared with") from None
  changes = diff(old, new, defaults)
  if not changes:
    return None
  accepted, rejected = split(changes, list(schedule), started)
  if rejected and not allow:
    raise ValueError(
        f"{workdir} holds a run with another config; resuming it would mix two runs. Changed: "
        f"{describe(rejected)}. Use a new --workdir, or set "
        "--config.train.allow_config_change=True to resume with the change (it is recorded "
        "in config_changes.jsonl)")
  if record:  # one process writes
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step,
             "changes": {k: [a, b] for k, (a, b) in changes.items()},
             "forced": sorted(rejected)}
    with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
      f.write(json.dumps(entry) + "\n")
  return changes
