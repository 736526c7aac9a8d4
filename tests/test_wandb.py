"""Weights & Biases logging, in offline mode: what the run directory holds is read back from
W&B's own record file, parsed here with its protobuf schema (no W&B reader involved)."""
import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from rlalign import metrics as metrics_lib

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

OFFLINE = metrics_lib.WandbConfig(enabled=True, project="rlalign-test", mode="offline")
_BLOCK = 32768


def read_records(path):
  """The records of a .wandb file: a 7-byte header (":W&B", magic, version) then LevelDB log
  records (crc32, length, type; FULL/FIRST/MIDDLE/LAST) in 32 KiB blocks."""
  data = open(path, "rb").read()
  assert data[:4] == b":W&B"
  pos, pending, records = 7, b"", []
  while pos + 7 <= len(data):
    left = _BLOCK - pos % _BLOCK
    if left < 7:  # a block's tail too short for a header is padding
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunk = data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind == 0 and length == 0:
      break
    pending += chunk
    if kind in (1, 4):  # FULL, LAST
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def history(records):
  out = {}
  for r in records:
    if r.WhichOneof("record_type") == "history":
      values = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                for i in r.history.item}
      step = values.pop("_step", None)
      if step is not None:
        out.setdefault(step, {}).update({k: v for k, v in values.items()
                                         if not k.startswith("_")})
  return out


def run_files(workdir):
  return sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")))


def test_metrics_config_summary_and_curves_reach_the_offline_run(tmp_path):
  workdir = str(tmp_path)
  writer = metrics_lib.MetricsWriter(workdir, wandb=OFFLINE,
                                     run_config={"seed": 3, "phases": {"rl": {"steps": 2}}})
  writer.write(1, {"reward": 0.25, "eval/pass@1_greedy": 0.5})
  writer.write(2, {"reward": 0.75})
  writer.close()
  png = os.path.join(workdir, "curves.png")
  metrics_lib.plot_curves(os.path.join(workdir, "metrics.jsonl"), png, keys=["reward"])
  writer.finish_wandb({"after_rl": {"eval/pass@1_greedy": 0.9}, "status": "completed"}, [png])

  [path] = run_files(workdir)
  records = read_records(path)
  got = history(records)
  assert got[1]["reward"] == 0.25 and got[1]["eval/pass@1_greedy"] == 0.5
  assert got[2]["reward"] == 0.75
  config = {}
  for r in records:
    kind = r.WhichOneof("record_type")
    updates = (r.run.config.update if kind == "run" else r.config.update if kind == "config"
               else ())
    config.update({i.key: json.loads(i.value_json) for i in updates})
  assert config["seed"] == 3 and config["phases"] == {"rl": {"steps": 2}}
  summary = {}
  for r in records:
    if r.WhichOneof("record_type") == "summary":
      summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                      for i in r.summary.update})
  assert summary["after_rl/eval/pass@1_greedy"] == 0.9
  assert summary["status"] == "completed"
  assert any(k.startswith("curves") for k in summary)  # the PNG, logged as an image
  with open(os.path.join(workdir, metrics_lib.WANDB_ID_FILENAME)) as f:
    run_id = f.read().strip()
  assert path.endswith(f"run-{run_id}.wandb")


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
  workdir = str(tmp_path)
  for step in (1, 2):
    writer = metrics_lib.MetricsWriter(workdir, resume_step=step - 1, wandb=OFFLINE)
    writer.write(step, {"loss": float(step)})
    writer.close()
    writer.finish_wandb()
  ids = {os.path.basename(p).split("-")[-1] for p in run_files(workdir)}
  assert len(run_files(workdir)) == 2 and len(ids) == 1


def test_without_the_package_logging_goes_on_after_a_note(tmp_path):
  """``wandb`` made unimportable, as on a machine without the extra: one note, and the JSONL
  is written as always."""
  code = ("import sys; sys.modules['wandb'] = None\n"
          "from rlalign import metrics as m\n"
          f"w = m.MetricsWriter({str(tmp_path)!r}, wandb=m.WandbConfig(enabled=True))\n"
          "w.write(1, {'loss': 1.0}); w.close(); w.finish_wandb({'x': 1})\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "note: W&B logging is off: the wandb package is not installed "
      "(pip install 'rlalign[wandb]')"]
  assert metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 1, "loss": 1.0}]
