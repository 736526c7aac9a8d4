"""Peak host memory of importing a HF checkpoint, against the checkpoint's size.

  python -m rlalign.models.hf.bench_import --size_mb=500

Writes a random Llama-shaped float32 checkpoint of about ``size_mb`` MB (one tensor at a
time), then imports it with :func:`load_hf_checkpoint` in a fresh subprocess and reports that
process's peak resident set (VmHWM) minus its resident set just before the import, as a
multiple of the checkpoint's size. An importer that held the model twice on the host would
show 2x or more; the target is below 1.3x. On a CPU backend the imported params themselves
live in host memory, so about 1x of the figure is the model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise KeyError(field)


def _reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0), so the peak covers only what follows."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def llama_shape(size_mb: float):
  """A Llama-like config of about ``size_mb`` MB in float32 (untied, GQA 4:1)."""
  d, heads, kv, hd, ff, vocab = 1024, 16, 4, 64, 2816, 32_000
  per_layer = 4 * (2 * d * heads * hd + 2 * d * kv * hd + 3 * d * ff + 2 * d)
  fixed = 4 * (2 * vocab * d + d)
  target = size_mb * 1e6
  while fixed + per_layer > target and vocab > 1000:  # small sizes: shrink the vocabulary
    vocab //= 2
    fixed = 4 * (2 * vocab * d + d)
  layers = max(1, round((target - fixed) / per_layer))
  return dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=vocab,
              hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
              rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=4096,
              rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
              hidden_act="silu", dtype="float32")


def write_random_checkpoint(path: str, size_mb: float, shard_mb: float) -> int:
  """A random checkpoint written tensor by tensor; returns its size in bytes."""
  from rlalign.models.hf import families
  from rlalign.models.hf import checkpoint as ckpt
  from rlalign.models.hf.safetensors_io import TensorToWrite
  from rlalign.models import transformer as tfm

  hf_cfg = llama_shape(size_mb)
  cfg = families.model_config_from_hf(hf_cfg)
  specs = tfm.param_specs(cfg)
  rng = np.random.default_rng(0)
  tensors = []
  for entry in families.tensor_table(cfg, ("lm",)):
    spec = specs
    for k in entry.path:
      spec = spec[k]
    shape = entry.layout.hf_shape(spec.shape[1:] if entry.stacked else spec.shape)
    for name in families.hf_names(entry, cfg.n_layers):
      tensors.append(TensorToWrite(name, shape, np.dtype(np.float32),
                                   lambda s=shape: rng.standard_normal(s, np.float32) * 0.02))
  os.makedirs(path, exist_ok=True)
  ckpt._write_weights(path, tensors, int(shard_mb * 1e6))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2)
  return sum(os.path.getsize(os.path.join(path, p)) for p in os.listdir(path)
             if p.endswith(".safetensors"))


def _measure_load(path: str, dtype: str) -> dict:
  import jax
  from rlalign.models.hf import load_hf_checkpoint

  jax.devices()  # start the backend before the baseline
  reset = _reset_peak()
  base_kb, hwm_before_kb = _status_kb("VmRSS"), _status_kb("VmHWM")
  t = time.perf_counter()
  cfg, params = load_hf_checkpoint(path, dtype=dtype)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t
  return dict(base_kb=base_kb, peak_kb=_status_kb("VmHWM"), after_kb=_status_kb("VmRSS"),
              hwm_before_kb=hwm_before_kb, peak_reset=reset, seconds=seconds,
              n_params=sum(int(x.size) for x in jax.tree.leaves(params)), backend=jax.default_backend())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size_mb", type=float, default=500.0)
  parser.add_argument("--shard_mb", type=float, default=5000.0,
                      help="shard size when writing (smaller gives an indexed, sharded checkpoint)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--dir", default="", help="where to write the checkpoint (default: a temp dir)")
  parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # the child process
  args = parser.parse_args(argv)
  if args.measure:
    print(json.dumps(_measure_load(args.measure, args.dtype)))
    return
  root = args.dir or tempfile.mkdtemp(prefix="bench_import_")
  path = os.path.join(root, "ckpt")
  try:
    t = time.perf_counter()
    size = write_random_checkpoint(path, args.size_mb, args.shard_mb)
    written = time.perf_counter() - t
    out = subprocess.run([sys.executable, "-m", "rlalign.models.hf.bench_import",
                          f"--measure={path}", f"--dtype={args.dtype}"],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)
  mb = lambda kb: kb * 1024 / 1e6
  peak = (r["peak_kb"] - r["base_kb"]) * 1024
  resident = (r["after_kb"] - r["base_kb"]) * 1024
  print(f"checkpoint: {size / 1e6:.1f} MB ({r['n_params'] / 1e6:.1f}M params, written in "
        f"{written:.1f}s); imported as {args.dtype} on {r['backend']} in {r['seconds']:.2f}s")
  print(f"host RSS before import {mb(r['base_kb']):.0f} MB; peak increase {peak / 1e6:.1f} MB "
        f"= {peak / size:.3f}x the checkpoint; resident after {resident / 1e6:.1f} MB "
        f"= {resident / size:.3f}x" + ("" if r["peak_reset"] else
                                       " (peak could not be reset: VmHWM from process start)"))


if __name__ == "__main__":
  main()
