"""Scalar metric logging: JSONL + TensorBoard, plotting, and a progress bar.

`MetricsWriter` is the single sink the trainer writes to. Every call to
`write` appends one JSON object to `<workdir>/metrics.jsonl` (the format that
scripts and tests read back with `read_jsonl`) and logs the same scalars to
TensorBoard event files under `<workdir>/tensorboard/`, and, when configured,
to a Weights & Biases run (`WandbConfig`). All are flushed on every write so a
crash loses at most the record being written.

Resuming: a run restarted from a checkpoint at step S re-executes steps > S,
so `MetricsWriter(..., resume_step=S)` drops JSONL records with step > S and
asks TensorBoard to purge events after S. The resumed run thus has exactly one
record per step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Tuple

import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
WANDB_ID_FILENAME = "wandb_run_id"


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases logging beside JSONL and TensorBoard (``train.wandb``).

  ``mode`` is W&B's: "online", "offline" (written under ``<workdir>/wandb``, for ``wandb
  sync`` later) or "disabled". The run id is kept in ``<workdir>/wandb_run_id``, so a resumed
  run continues the same W&B run. Without the ``wandb`` package (``pip install
  'rlalign[wandb]'``) or when W&B cannot start, logging goes on without it after a one-line
  note: W&B never stops a run.
  """
  enabled: bool = False
  project: str = "rlalign"
  name: str = ""        # "": the workdir's name
  entity: str = ""
  mode: str = "online"
  tags: Tuple[str, ...] = ()

  def validate(self, prefix: str = "train.wandb") -> None:
    if self.mode not in ("online", "offline", "disabled"):
      raise ValueError(f"{prefix}.mode must be 'online', 'offline' or 'disabled', got "
                       f"{self.mode!r}")


class _WandbSink:
  """One W&B run; every failure turns it off with a note instead of raising."""

  def __init__(self, cfg: WandbConfig, workdir: str, run_config: Mapping[str, Any] | None):
    self.run = None
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError:
      print("note: W&B logging is off: the wandb package is not installed "
            "(pip install 'rlalign[wandb]')", file=sys.stderr)
      return
    id_path = os.path.join(workdir, WANDB_ID_FILENAME)
    if os.path.exists(id_path):
      run_id = open(id_path).read().strip()
    else:
      run_id = uuid.uuid4().hex[:12]
      atomic_write(id_path, lambda f: f.write(run_id.encode()))
    try:
      self.run = wandb.init(
          project=cfg.project, entity=cfg.entity or None,
          name=cfg.name or os.path.basename(os.path.abspath(workdir)), id=run_id,
          resume="allow", dir=workdir, mode=cfg.mode, tags=list(cfg.tags),
          config=dict(run_config or {}))
    except Exception as e:  # pylint: disable=broad-except  # a network or login failure
      print(f"note: W&B logging is off: wandb.init failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})", file=sys.stderr)
      self.run = None

  def log(self, step: int, values: Mapping[str, float]) -> None:
    if self.run is not None:
      self.run.log(dict(values), step=step)

  def finish(self, summary: Mapping[str, Any] | None = None,
             images: Sequence[str] = ()) -> None:
    if self.run is None:
      return
    import wandb  # pylint: disable=import-outside-toplevel
    for key, value in _flat(summary or {}).items():
      self.run.summary[key] = value
    for path in images:
      if os.path.exists(path):
        self.run.log({os.path.splitext(os.path.basename(path))[0]: wandb.Image(path)})
    self.run.finish()
    self.run = None


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(_flat(value, name))
    else:
      out[name] = value
  return out


def _to_float(name: str, value: Any) -> float:
  """Converts a Python/NumPy/JAX scalar to float; rejects non-scalars."""
  # np.asarray also pulls 0-d jax.Arrays to host without importing jax here.
  array = np.asarray(value)
  if array.ndim != 0:
    raise ValueError(
        f"metric {name!r} must be a scalar, got shape {array.shape}"
    )
  return float(array)


def _json_float(value: float) -> float | None:
  # Bare NaN/Infinity are not valid JSON; null keeps the file parseable by
  # any JSON reader.
  return value if math.isfinite(value) else None


def atomic_write(path: str, write_fn, *, suffix: str = "") -> None:
  """Calls write_fn(file) on a temp file next to `path`, then renames it.

  os.replace within one directory is atomic, so readers see either the old
  or the new file, never a half-written one.
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix
  )
  try:
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
    os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; match a normal file.
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def _parse_lines(path: str) -> list[dict[str, Any]]:
  """Parses a JSONL file, tolerating a truncated final line.

  A crash in the middle of a write can leave a partial last line; that record
  is lost anyway, so it is skipped. Corruption anywhere else is an error.
  """
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        continue
      raise ValueError(
          f"{path}:{i + 1}: invalid JSON line: {line[:80]!r}"
      ) from None
    if not isinstance(record, dict) or "step" not in record:
      raise ValueError(f"{path}:{i + 1}: expected an object with a 'step'")
    records.append(record)
  return records


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    if f.seek(0, os.SEEK_END) == 0:
      return True  # empty file
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


class MetricsWriter:
  """Writes scalar metrics to metrics.jsonl and TensorBoard under `workdir`.

  Args:
    workdir: run directory; created if missing.
    resume_step: when resuming from a checkpoint at this step, records with a
      larger step (written by the interrupted run) are dropped.
    enabled: False on non-zero processes of a multi-host run, so only one
      process writes; all methods then do nothing.
  """

  def __init__(
      self,
      workdir: str,
      *,
      resume_step: int | None = None,
      enabled: bool = True,
      wandb: WandbConfig | None = None,
      run_config: Mapping[str, Any] | None = None,
  ):
    self.enabled = enabled
    self._wandb = None
    self.jsonl_path = os.path.join(workdir, METRICS_FILENAME)
    self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIRNAME)
    self._file = None
    self._tb = None
    self._last = None  # (step, file offset, record) of the last record written
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.jsonl_path) and (
        resume_step is not None or not _ends_with_newline(self.jsonl_path)
    ):
      # Also rewrite when a crash left a partial last line: appending to it
      # would corrupt the next record.
      self._rewrite(keep_through=resume_step)
    self._file = open(self.jsonl_path, "a", encoding="utf-8")

    # Imported lazily: disabled writers (most processes) never need it.
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(
        logdir=self.tensorboard_dir,
        # TensorBoard hides events with step >= purge_step from earlier event
        # files, mirroring the JSONL truncation.
        purge_step=None if resume_step is None else resume_step + 1,
        # Event file names only carry the time in whole seconds and the host,
        # and tensorboardX opens them with "wb": a restart within the same
        # second would truncate the previous run's events without this.
        filename_suffix=f".{uuid.uuid4().hex[:8]}",
    )
    if wandb is not None and wandb.enabled:
      self._wandb = _WandbSink(wandb, workdir, run_config)

  def rewind(self, step: int) -> None:
    """Drops every record after ``step`` (a resume that fell back to an older checkpoint
    than the one this writer was opened for)."""
    if not self.enabled:
      return
    self._file.close()
    self._rewrite(keep_through=step)
    self._file = open(self.jsonl_path, "a", encoding="utf-8")
    self._last = None
    from tensorboardX import SummaryWriter
    self._tb.close()
    self._tb = SummaryWriter(logdir=self.tensorboard_dir, purge_step=step + 1,
                             filename_suffix=f".{uuid.uuid4().hex[:8]}")

  def _rewrite(self, keep_through: int | None) -> None:
    """Atomically rewrites the JSONL, keeping records with step <= keep_through."""
    kept = [
        r
        for r in _parse_lines(self.jsonl_path)
        if keep_through is None or r["step"] <= keep_through
    ]
    payload = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
    atomic_write(self.jsonl_path, lambda f: f.write(payload.encode("utf-8")))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs `metrics` (name -> scalar float/np/jax value) at `step`."""
    if not self.enabled:
      return
    if self._file is None:
      raise RuntimeError("MetricsWriter.write called after close()")
    if "step" in metrics:
      raise ValueError("'step' is reserved; pass it as the step argument")
    step = int(step)
    values = {name: _to_float(name, v) for name, v in metrics.items()}

    record = {"step": step}
    record.update({k: _json_float(v) for k, v in values.items()})
    if self._last is not None and self._last[0] == step:
      # A second write at the same step (a phase's start after the previous phase's end)
      # joins that step's record, so the file keeps one record per step.
      offset, previous = self._last[1], self._last[2]
      self._file.flush()
      self._file.truncate(offset)
      record = {**previous, **record}
    offset = self._file.tell()
    # allow_nan=False guards the invariant that every line is strict JSON.
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    self._last = (step, offset, record)

    for name, value in values.items():
      self._tb.add_scalar(name, value, global_step=step)
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(step, values)

  def close(self) -> None:
    """Flushes and closes the JSONL and TensorBoard sinks (W&B ends in :meth:`finish_wandb`,
    or when the process exits). Safe to call more than once."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def finish_wandb(self, summary: Mapping[str, Any] | None = None,
                   images: Sequence[str] = ()) -> None:
    """Ends the W&B run, if any, with the run's summary and its PNGs."""
    if self._wandb is not None:
      self._wandb.finish(summary, images)
      self._wandb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a metrics.jsonl file back, one record per step, sorted by step.

  If a step appears more than once (e.g. a resumed run that did not truncate)
  the last record wins. Non-finite values, stored as null, come back as NaN
  so every metric value is a float.
  """
  by_step: dict[int, dict[str, Any]] = {}
  for record in _parse_lines(path):
    by_step[record["step"]] = {
        k: (float("nan") if v is None else v) for k, v in record.items()
    }
  return [by_step[s] for s in sorted(by_step)]


def plot_curves(
    jsonl_path: str,
    png_path: str,
    keys: Sequence[str] | None = None,
    title: str = "",
) -> str:
  """Plots metrics from `jsonl_path` into a PNG grid (one subplot per key).

  Keys default to every metric in the file; requested keys absent from every
  record are skipped. Returns `png_path`. Raises ValueError if nothing is
  left to plot.
  """
  # Figure + Agg canvas directly (no pyplot): never touches a display or the
  # global matplotlib backend of the calling process.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  records = read_jsonl(jsonl_path)
  present: dict[str, None] = {}  # ordered set, in first-seen order
  for record in records:
    present.update(dict.fromkeys(k for k in record if k != "step"))
  keys = [k for k in (present if keys is None else keys) if k in present]
  if not keys:
    raise ValueError(f"nothing to plot in {jsonl_path}")

  ncols = min(3, len(keys))
  nrows = math.ceil(len(keys) / ncols)
  fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
  FigureCanvasAgg(fig)  # attaches a headless (Agg) canvas to fig
  for i, key in enumerate(keys):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    points = [(r["step"], r[key]) for r in records if key in r]
    steps, values = zip(*points)
    # A marker keeps single-point series (and isolated points between NaN
    # gaps) visible.
    ax.plot(steps, values, marker="." if len(points) < 50 else None)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)

  os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
  save_png(fig, png_path, dpi=fig.dpi)
  return png_path


def save_png(fig, path: str, dpi: int = 110) -> None:
  """A matplotlib figure written to ``path`` as a PNG, atomically (no half-written file)."""
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi), suffix=".png")


def progress(total: int, initial: int = 0, desc: str = "", *, enabled: bool = True):
  """Returns a tqdm bar on stderr; call .update(n) and .set_postfix(...)."""
  # Plain tqdm, not tqdm.auto: always a text bar on stderr, even in notebooks.
  from tqdm import tqdm

  return tqdm(
      total=total,
      initial=initial,
      desc=desc,
      dynamic_ncols=True,
      file=sys.stderr,
      disable=not enabled,
  )
