"""Import and export of Hugging Face checkpoint directories.

Import reads ``config.json`` and ``model.safetensors`` (or the shards that
``model.safetensors.index.json`` lists), checks every tensor name and shape against the config
before allocating anything, then builds one param at a time: a preallocated host array is
filled layer by layer from the memory-mapped files, placed with ``jax.device_put`` and dropped,
so the host never holds the model twice.

Export writes ``config.json``, the safetensors file(s) and the tokenizer files into a temporary
directory beside the target and renames it into place, so a failure leaves no partial
checkpoint. Weights are transposed/reshaped only, so float32 round-trips bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import transformer as tfm
from rlalign.models.hf import families as fams
from rlalign.models.hf.safetensors_io import (SafetensorsFile, TensorToWrite, tensor_nbytes,
                                              write_safetensors)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BAND_BYTES = 32 << 20  # rows of a large tensor copied (and their file pages dropped) at a time
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")


class CheckpointError(ValueError):
  """A checkpoint whose tensors do not match its config; names the tensor and the file."""


def read_hf_config(path: str) -> Dict[str, Any]:
  """The parsed ``config.json`` of a checkpoint directory (or the file itself)."""
  file = os.path.join(path, "config.json") if os.path.isdir(path) else path
  if not os.path.exists(file):
    raise FileNotFoundError(f"no config.json at {file}")
  with open(file) as f:
    return json.load(f)


def model_config_from_dir(path: str, *, heads: Optional[Sequence[str]] = None,
                          dtype: str = "float32") -> tfm.ModelConfig:
  """The :class:`ModelConfig` of a HF checkpoint directory, from its config.json."""
  file = os.path.join(path, "config.json") if os.path.isdir(path) else path
  return fams.model_config_from_hf(read_hf_config(file), source=file, heads=heads, dtype=dtype)


def _weight_files(path: str) -> Dict[str, str]:
  """Tensor name -> absolute file, from the index when the checkpoint is sharded."""
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index}: missing required key 'weight_map'")
    return {name: os.path.join(path, file) for name, file in weight_map.items()}
  single = os.path.join(path, SINGLE_FILE)
  if not os.path.exists(single):
    raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found (only "
                            "safetensors checkpoints are read; convert .bin files first)")
  return {}  # filled from the single file's header


def _sharding_at(shardings: Any, path: Tuple[str, ...]):
  node = shardings
  for key in path:
    if node is None:
      return None
    if not isinstance(node, Mapping) or key not in node:
      raise ValueError(f"shardings has no entry for param {'/'.join(path)}; it must be a "
                       "pytree shaped like the params (or None)")
    node = node[key]
  return node


def _leaf_paths(tree: Mapping[str, Any], prefix=()) -> List[Tuple[Tuple[str, ...], Any]]:
  out = []
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out += _leaf_paths(value, prefix + (key,))
    else:
      out.append((prefix + (key,), value))
  return out


def _set(tree: Dict[str, Any], path: Tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_hf_checkpoint(path: str, *, dtype: str = "float32", shardings: Any = None,
                       heads: Optional[Sequence[str]] = None, scalar_heads: Optional[int] = None,
                       ) -> Tuple[tfm.ModelConfig, tfm.Params]:
  """Loads a HF checkpoint directory as ``(ModelConfig, params)``.

  Args:
    dtype: "float32" or "bfloat16", for the params and the compute dtype of the config.
    shardings: None (default device) or a pytree like the params of ``jax.sharding.Sharding``
      (a None leaf also means the default device).
    heads: which heads to load; defaults to the architecture's own ("lm" for *ForCausalLM,
      "scalar" for *ForSequenceClassification). A "scalar" head the checkpoint lacks starts at
      zero (a value head on a policy); an "lm" head on a reward checkpoint needs tied embeddings.
    scalar_heads: how many scalar heads; defaults to the score layer's labels (1 without one).
      K > 1 fresh heads start from a fixed random draw, not zero, so that they can disagree.
  """
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  config_file = os.path.join(path, "config.json")
  hf = read_hf_config(config_file)
  family, own_head = fams.resolve_family(hf, config_file)
  cfg = fams.model_config_from_hf(hf, source=config_file, heads=heads, dtype=dtype,
                                  scalar_heads=scalar_heads)
  if "lm" in cfg.heads and own_head != "lm" and not cfg.tie_embeddings:
    raise CheckpointError(f"{path}: the 'lm' head was asked for but this {family.seq_cls} "
                          "checkpoint has no lm_head.weight (its embeddings are untied)")
  files = _weight_files(path)
  readers: Dict[str, SafetensorsFile] = {}
  try:
    for file in sorted(set(files.values()) or {os.path.join(path, SINGLE_FILE)}):
      if not os.path.exists(file):
        raise FileNotFoundError(f"{path}: {INDEX_FILE} lists {os.path.basename(file)}, which "
                                "does not exist")
      readers[file] = SafetensorsFile(file)
    where: Dict[str, str] = {}  # tensor -> file, as the headers say
    for file, reader in readers.items():
      for name in reader.keys():
        where[name] = file
    for name, file in files.items():
      if name not in readers[file].tensors:
        raise CheckpointError(f"{INDEX_FILE} maps tensor {name!r} to "
                              f"{os.path.basename(file)}, which does not contain it")
    _check_tensors(cfg, own_head, where, readers, path)
    params = _build_params(cfg, own_head, where, readers, shardings,
                           _score_bias(hf, cfg, config_file) if own_head == "scalar" else None)
  finally:
    for reader in readers.values():
      reader.close()
  return cfg, params


# config.json key for the score layer's bias, which HF's *ForSequenceClassification lacks;
# written by save_hf_checkpoint(drop_score_bias=True), ignored by transformers.
SCORE_BIAS_KEY = "rlalign_score_bias"


def _score_bias(hf: Mapping[str, Any], cfg: tfm.ModelConfig, config_file: str):
  if SCORE_BIAS_KEY not in hf:
    return None
  value = np.asarray(hf[SCORE_BIAS_KEY], np.float64).reshape(-1)
  if value.shape != (cfg.scalar_heads,) or not np.all(np.isfinite(value)):
    raise CheckpointError(f"{config_file}: {SCORE_BIAS_KEY} must be {cfg.scalar_heads} finite "
                          f"number(s), one per label, got {hf[SCORE_BIAS_KEY]!r}")
  return value.reshape(() if cfg.scalar_heads == 1 else (-1,))


def _check_tensors(cfg, own_head, where, readers, path) -> None:
  """Missing, unexpected and wrong-shape tensors, before anything is allocated."""
  expected: Dict[str, Tuple[int, ...]] = {}
  specs = tfm.param_specs(dataclasses.replace(cfg, heads=(own_head,)))
  for entry in fams.tensor_table(cfg, (own_head,)):
    spec = _spec_at(specs, entry.path)
    shape = spec.shape[1:] if entry.stacked else spec.shape
    for name in fams.hf_names(entry, cfg.n_layers):
      expected[name] = entry.layout.hf_shape(shape)
  files = sorted({os.path.basename(f) for f in readers})
  for name, shape in expected.items():
    if name not in where:
      raise CheckpointError(f"{path}: missing tensor {name!r} (searched {', '.join(files)})")
    found = readers[where[name]].tensors[name].shape
    if found != shape:
      raise CheckpointError(f"tensor {name!r} in {where[name]} has shape {found}, expected "
                            f"{shape} from config.json")
  for name in where:
    if name in expected or name.endswith(fams.IGNORED_SUFFIXES):
      continue
    if name == "lm_head.weight" and cfg.tie_embeddings:
      continue  # some tied checkpoints store the copy too
    raise CheckpointError(f"unexpected tensor {name!r} in {where[name]}: a checkpoint with this "
                          "config.json has no such tensor (does config.json match the weights?)")


def _spec_at(specs, path):
  for key in path:
    specs = specs[key]
  return specs


def _aligned_empty(shape: Tuple[int, ...], dtype: np.dtype, align: int = 4096) -> np.ndarray:
  """An uninitialised host array on an ``align``-byte boundary: jax's CPU backend adopts such
  a buffer in ``device_put`` instead of copying it (numpy alone aligns to 16 bytes)."""
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + align, np.uint8)
  start = -raw.ctypes.data % align
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _copy_in_bands(target: np.ndarray, layout: fams.Layout, reader: SafetensorsFile, name: str,
                   our_shape: Tuple[int, ...]) -> None:
  """Copies one HF tensor into ``target`` a band of rows at a time, dropping each band's
  file pages once copied: a large tensor (the embedding) is never resident twice."""
  band_bytes = BAND_BYTES
  src = reader.get(name)
  rows = src.shape[0] if src.ndim else 1
  row_bytes = max(1, src.nbytes // max(rows, 1))
  align = layout.row_align(our_shape)
  step = max(align, band_bytes // row_bytes // align * align)
  if src.ndim == 0 or rows <= step:
    layout.place(target, src, 0)
  else:
    for a in range(0, rows, step):
      layout.place(target, src[a:a + step], a)
      reader.release(name, a * row_bytes, min(rows, a + step) * row_bytes)
  del src
  reader.release(name)


def _build_params(cfg, own_head, where, readers, shardings, score_bias=None) -> tfm.Params:
  np_dtype = np.dtype(jnp.dtype(cfg.param_dtype))
  table = {entry.path: entry for entry in fams.tensor_table(cfg, (own_head,))}
  params: Dict[str, Any] = {}
  for path, spec in _leaf_paths(tfm.param_specs(cfg)):
    entry = table.get(path)
    host = _aligned_empty(spec.shape, np_dtype)
    if entry is None and path == ("scalar_head", "w") and cfg.scalar_heads > 1:
      # Fresh ensemble heads: identical (zero) heads would get identical gradients forever.
      host[...] = np.random.default_rng(0).normal(0, spec.shape[0] ** -0.5, spec.shape)
    elif entry is None and path == ("scalar_head", "b") and score_bias is not None:
      host[...] = score_bias  # the bias an export had to leave out of HF's score layer
    elif entry is None:  # a head the checkpoint lacks starts at zero (and the scalar head bias)
      host[...] = 0
    else:
      names = fams.hf_names(entry, cfg.n_layers)
      slice_shape = spec.shape[1:] if entry.stacked else spec.shape
      for i, name in enumerate(names):
        _copy_in_bands(host[i] if entry.stacked else host, entry.layout, readers[where[name]],
                       name, slice_shape)
    value = jax.device_put(host, _sharding_at(shardings, path))
    value.block_until_ready()
    del host  # the device copy (on CPU, the adopted buffer itself) is the only one now
    _set(params, path, value)
  return params


# ------------------------------------------------------------------------------------ export


def _shard_plan(tensors: List[TensorToWrite], max_bytes: int) -> List[List[TensorToWrite]]:
  shards: List[List[TensorToWrite]] = [[]]
  size = 0
  for t in tensors:
    nbytes = tensor_nbytes(t.shape, t.dtype)
    if shards[-1] and size + nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes
  return shards


def save_hf_checkpoint(params: tfm.Params, model_cfg: tfm.ModelConfig, path: str, *,
                       family: Optional[str] = None,
                       hf_config_template: Optional[Any] = None,
                       head: Optional[str] = None,
                       tokenizer_dir: Optional[str] = None,
                       max_shard_bytes: int = 5_000_000_000,
                       overwrite: bool = False, drop_score_bias: bool = False) -> str:
  """Writes ``params`` as a HF checkpoint directory at ``path`` and returns ``path``.

  Args:
    family: the HF family ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"); may
      be left out when ``hf_config_template`` (a config.json dict, file or checkpoint
      directory) gives it. The template's other keys (token ids, max_position_embeddings, ...)
      are kept.
    head: "lm" (writes *ForCausalLM) or "scalar" (*ForSequenceClassification with one label);
      defaults to "lm" when the config has it.
    tokenizer_dir: tokenizer and generation config files found here are copied alongside.
    max_shard_bytes: above this the weights are split into shards plus an index.
    overwrite: replace an existing ``path``; otherwise an existing one is an error.
    drop_score_bias: HF's score layer has no bias, so a nonzero ``scalar_head/b`` exports only
      with this: transformers' scores then leave ``b`` out (a constant shift, which keeps the
      ranking of a Bradley–Terry reward but moves a verifier's threshold), and the bias
      is kept in config.json as ``rlalign_score_bias``, which :func:`load_hf_checkpoint`
      adds back.
  """
  template = hf_config_template
  if isinstance(template, str):
    template = read_hf_config(template)
  if family is None:
    if template is None:
      raise ValueError("save_hf_checkpoint needs family= or hf_config_template=")
    family = fams.resolve_family(template, "hf_config_template")[0].name
  head = head or ("lm" if "lm" in model_cfg.heads else "scalar")
  if head not in model_cfg.heads:
    raise ValueError(f"head {head!r} is not among model.heads {model_cfg.heads}")
  hf = fams.hf_config_from_model(model_cfg, family, head, template)
  if head == "scalar":
    bias = np.asarray(params["scalar_head"]["b"])
    if np.any(bias != 0.0):
      if not drop_score_bias:
        raise ValueError(f"scalar_head/b is {bias.tolist()}; HF's score layer has no bias: "
                         "export with drop_score_bias (--drop_score_bias) to shift "
                         "transformers' scores by that constant, keeping it in config.json")
      hf[SCORE_BIAS_KEY] = bias.astype(np.float64).tolist()
  tensors = _export_tensors(params, model_cfg, head)
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    _write_weights(tmp, tensors, max_shard_bytes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf, f, indent=2, sort_keys=True)
      f.write("\n")
    if tokenizer_dir is not None:
      for name in TOKENIZER_FILES:
        src = os.path.join(tokenizer_dir, name)
        if os.path.isfile(src):
          shutil.copy2(src, os.path.join(tmp, name))
    if os.path.exists(path):  # overwrite: move the old one aside only once the new one is whole
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "ckpt"))
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def _export_tensors(params, cfg, head) -> List[TensorToWrite]:
  """HF tensors in param order; each param is fetched to host once and dropped after."""
  cache: Dict[str, Any] = {}

  def host(path):
    key = "/".join(path)
    if key not in cache:
      cache.clear()  # one param on the host at a time
      value = params
      for k in path:
        value = value[k]
      cache[key] = np.asarray(jax.device_get(value))
    return cache[key]

  tensors = []
  specs = tfm.param_specs(cfg)
  for entry in fams.tensor_table(cfg, (head,)):
    spec = _spec_at(specs, entry.path)
    value = params
    for k in entry.path:
      if k not in value:
        raise KeyError(f"params have no {'/'.join(entry.path)} (needed for {entry.hf})")
      value = value[k]
    if tuple(value.shape) != spec.shape:
      raise ValueError(f"params {'/'.join(entry.path)} has shape {tuple(value.shape)}, expected "
                       f"{spec.shape} from the model config")
    slice_shape = spec.shape[1:] if entry.stacked else spec.shape
    dtype = np.dtype(value.dtype)
    for i, name in enumerate(fams.hf_names(entry, cfg.n_layers)):
      fetch = (lambda e=entry, i=i: e.layout.to_hf(host(e.path)[i])) if entry.stacked else (
          lambda e=entry: e.layout.to_hf(host(e.path)))
      tensors.append(TensorToWrite(name, entry.layout.hf_shape(slice_shape), dtype, fetch))
  return tensors


def _write_weights(directory: str, tensors: List[TensorToWrite], max_shard_bytes: int) -> None:
  meta = {"format": "pt"}
  shards = _shard_plan(tensors, max_shard_bytes)
  if len(shards) == 1:
    write_safetensors(os.path.join(directory, SINGLE_FILE), shards[0], meta)
    return
  weight_map, total = {}, 0
  for k, shard in enumerate(shards):
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    total += write_safetensors(os.path.join(directory, file), shard, meta)
    weight_map.update({t.name: file for t in shard})
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
              f, indent=2)
    f.write("\n")
