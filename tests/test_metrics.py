"""Tests for rlalign.metrics: JSONL + TensorBoard output, resume, plotting, progress."""

import glob
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from rlalign.metrics import MetricsWriter, plot_curves, progress, read_jsonl


def masked_crc(data: bytes) -> int:
  # TFRecord's CRC masking: rotate right by 15 and add a constant.
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str) -> list[bytes]:
  """Reads TFRecord framing: u64 length, u32 crc(length), data, u32 crc(data)."""
  records = []
  with open(path, "rb") as f:
    while header := f.read(8):
      (length,) = struct.unpack("<Q", header)
      (length_crc,) = struct.unpack("<I", f.read(4))
      assert length_crc == masked_crc(header)
      data = f.read(length)
      (data_crc,) = struct.unpack("<I", f.read(4))
      assert data_crc == masked_crc(data)
      records.append(data)
  return records


def tb_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """All scalar (tag -> [(step, value)]) events in the event files of logdir."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for data in read_tfrecords(path):
      event = event_pb2.Event.FromString(data)
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_jsonl_and_tensorboard_contents(tmp_path):
  workdir = str(tmp_path / "run")
  written = [
      (0, {"loss": 2.5, "reward": np.float32(0.125), "kl": jnp.asarray(0.0625)}),
      (1, {"loss": np.asarray(1.75), "reward": 0.5}),
      (2, {"loss": float("nan"), "reward": float("inf")}),
  ]
  with MetricsWriter(workdir) as writer:
    for step, metrics in written:
      writer.write(step, metrics)
    # Flushed per write: readable before close.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      assert len(f.read().splitlines()) == 3

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]  # strict JSON: no bare NaN
  assert lines == [
      {"step": 0, "loss": 2.5, "reward": 0.125, "kl": 0.0625},
      {"step": 1, "loss": 1.75, "reward": 0.5},
      {"step": 2, "loss": None, "reward": None},
  ]

  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == [0, 1, 2]
  assert records[1] == {"step": 1, "loss": 1.75, "reward": 0.5}
  assert math.isnan(records[2]["loss"]) and math.isnan(records[2]["reward"])

  scalars = tb_scalars(os.path.join(workdir, "tensorboard"))
  assert sorted(scalars) == ["kl", "loss", "reward"]
  assert scalars["kl"] == [(0, 0.0625)]
  assert scalars["reward"][:2] == [(0, 0.125), (1, 0.5)]
  assert scalars["reward"][2] == (2, float("inf"))
  assert scalars["loss"][:2] == [(0, 2.5), (1, 1.75)]
  assert scalars["loss"][2][0] == 2 and math.isnan(scalars["loss"][2][1])


def test_tensorboard_values_are_float32(tmp_path):
  value = 0.1  # not exactly representable; TB stores float32
  with MetricsWriter(str(tmp_path)) as writer:
    writer.write(7, {"lr": value})
  ((step, stored),) = tb_scalars(str(tmp_path / "tensorboard"))["lr"]
  assert step == 7 and stored == float(np.float32(value))
  assert read_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 7, "lr": value}]


def test_rejects_non_scalars_and_reserved_step(tmp_path):
  with MetricsWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="'loss'.*shape \\(2,\\)"):
      writer.write(0, {"loss": np.ones(2)})
    with pytest.raises(ValueError, match="reserved"):
      writer.write(0, {"step": 1.0})
  assert read_jsonl(str(tmp_path / "metrics.jsonl")) == []


def test_resume_drops_steps_after_checkpoint(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with MetricsWriter(str(tmp_path)) as writer:
    for step in range(6):
      writer.write(step, {"loss": float(step)})
  # Resume from a checkpoint at step 3: steps 4 and 5 are redone.
  with MetricsWriter(str(tmp_path), resume_step=3) as writer:
    with open(path) as f:
      assert [json.loads(line)["step"] for line in f] == [0, 1, 2, 3]
    for step in range(4, 7):
      writer.write(step, {"loss": 10.0 * step})

  with open(path) as f:
    lines = [json.loads(line) for line in f]
  assert [r["step"] for r in lines] == [0, 1, 2, 3, 4, 5, 6]
  assert [r["loss"] for r in lines] == [0.0, 1.0, 2.0, 3.0, 40.0, 50.0, 60.0]
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp left

  # TensorBoard: each run has its own event file; the resumed run's starts
  # with a purge marker at step 4, which hides the first run's steps >= 4.
  event_files = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert len(event_files) == 2
  runs = {}
  for path in event_files:
    events = [event_pb2.Event.FromString(d) for d in read_tfrecords(path)]
    purge = tuple(e.step for e in events if e.session_log.status == event_pb2.SessionLog.START)
    runs[purge] = [(e.step, v.simple_value) for e in events for v in e.summary.value]
  assert runs == {
      (): [(s, float(s)) for s in range(6)],
      (4,): [(4, 40.0), (5, 50.0), (6, 60.0)],
  }


def test_resume_tolerates_truncated_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
  assert read_jsonl(str(path)) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
  with MetricsWriter(str(tmp_path), resume_step=5) as writer:
    writer.write(2, {"loss": 0.25})
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {"step": 0, "loss": 1.0},
      {"step": 1, "loss": 0.5},
      {"step": 2, "loss": 0.25},
  ]


def test_append_after_truncated_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
  with MetricsWriter(str(tmp_path)) as writer:  # not resuming: append
    writer.write(1, {"loss": 0.5})
  assert read_jsonl(str(path)) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]


def test_read_jsonl_keeps_last_record_per_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
      '{"step": 2, "loss": 1.0}\n{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 7.0}\n'
  )
  assert read_jsonl(str(path)) == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 7.0}]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  writer = MetricsWriter(str(workdir), enabled=False)
  writer.write(0, {"loss": 1.0})
  writer.close()
  assert not workdir.exists()


def test_plot_curves_writes_png(tmp_path):
  jsonl = str(tmp_path / "metrics.jsonl")
  with MetricsWriter(str(tmp_path)) as writer:
    for step in range(5):
      metrics = {"loss": 1.0 / (step + 1), "reward": float(step)}
      if step % 2:
        metrics["kl"] = 0.01 * step
      writer.write(step, metrics)
  png = str(tmp_path / "plots" / "curves.png")
  assert plot_curves(jsonl, png, keys=["loss", "kl", "not_logged"], title="run") == png
  with open(png, "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  # IHDR width/height: a 2-subplot grid is wider than tall, 3 subplots wider still.
  width2, height2 = struct.unpack(">II", data[16:24])
  assert width2 > height2 > 0
  plot_curves(jsonl, png)  # default keys: loss, reward, kl
  with open(png, "rb") as f:
    width3, height3 = struct.unpack(">II", f.read(24)[16:24])
  assert width3 > width2 and height3 == height2
  assert sorted(os.listdir(tmp_path / "plots")) == ["curves.png"]  # no temp left


def test_plot_curves_raises_when_nothing_to_plot(tmp_path):
  empty = tmp_path / "metrics.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match="metrics.jsonl"):
    plot_curves(str(empty), str(tmp_path / "a.png"))
  only_steps = tmp_path / "steps.jsonl"
  only_steps.write_text('{"step": 0, "loss": 1.0}\n')
  with pytest.raises(ValueError, match="steps.jsonl"):
    plot_curves(str(only_steps), str(tmp_path / "b.png"), keys=["reward"])
  assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_progress_bar(capsys):
  bar = progress(total=10, initial=4, desc="train")
  bar.update(3)
  bar.set_postfix(loss=0.5)
  bar.close()
  err = capsys.readouterr().err
  assert "train" in err and "7/10" in err and "loss=0.5" in err
  silent = progress(total=10, enabled=False)
  silent.update(5)
  silent.close()
  assert capsys.readouterr().err == ""


def test_a_second_write_at_the_same_step_joins_its_record(tmp_path):
  with MetricsWriter(str(tmp_path)) as w:
    w.write(10, {"warm_start/loss": 1.0, "eval/pass": 0.2})
    w.write(10, {"eval/margin": 0.0, "eval/pass": 0.3})  # the next phase's start
    w.write(12, {"loss": 0.5})
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 10, "warm_start/loss": 1.0, "eval/pass": 0.3, "eval/margin": 0.0},
                   {"step": 12, "loss": 0.5}]
