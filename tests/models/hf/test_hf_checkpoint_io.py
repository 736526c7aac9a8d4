"""Checkpoint I/O: bad inputs name what is wrong; sharding, heads, atomic export, config keys."""
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors.numpy import load_file, save_file

from rlalign import config as config_lib
from rlalign.models import hf
from rlalign.models import transformer as tfm
from rlalign.models.hf import checkpoint as ckpt_lib
from tests.configs import load_config

from hf_zoo import transformers, torch


def _copy(zoo, tmp_path, family="llama", head="lm"):
  dst = str(tmp_path / "ckpt")
  shutil.copytree(zoo.get(family, head).path, dst)
  return dst


def _edit_tensors(path, fn):
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  fn(tensors)
  save_file(tensors, file, metadata={"format": "pt"})
  return file


def _edit_config(path, fn):
  file = os.path.join(path, "config.json")
  with open(file) as f:
    config = json.load(f)
  fn(config)
  with open(file, "w") as f:
    json.dump(config, f)
  return file


# ----------------------------------------------------------------------------- bad inputs


def test_missing_tensor_is_named(zoo, tmp_path):
  path = _copy(zoo, tmp_path)
  _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(hf.CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj"
                     r"\.weight'.*model\.safetensors"):
    hf.load_hf_checkpoint(path)


def test_unexpected_tensor_is_named_with_its_file(zoo, tmp_path):
  path = _copy(zoo, tmp_path)
  file = _edit_tensors(path, lambda t: t.update(
      {"model.layers.0.self_attn.extra.weight": np.zeros((2, 2), np.float32)}))
  with pytest.raises(hf.CheckpointError) as e:
    hf.load_hf_checkpoint(path)
  assert "unexpected tensor 'model.layers.0.self_attn.extra.weight'" in str(e.value)
  assert file in str(e.value)


def test_wrong_shape_names_tensor_expected_found_and_file(zoo, tmp_path):
  path = _copy(zoo, tmp_path)
  file = _edit_tensors(path, lambda t: t.update(
      {"model.layers.0.self_attn.q_proj.weight": np.zeros((60, 64), np.float32)}))
  with pytest.raises(hf.CheckpointError) as e:
    hf.load_hf_checkpoint(path)
  msg = str(e.value)
  assert "'model.layers.0.self_attn.q_proj.weight'" in msg and file in msg
  assert "(60, 64)" in msg and "expected (64, 64)" in msg


def test_unsupported_architecture_names_value_and_supported_list(zoo, tmp_path):
  path = _copy(zoo, tmp_path)
  _edit_config(path, lambda c: c.update(architectures=["MistralForCausalLM"]))
  with pytest.raises(hf.HFConfigError) as e:
    hf.load_hf_checkpoint(path)
  assert "MistralForCausalLM" in str(e.value)
  for supported in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"):
    assert supported in str(e.value)
  _edit_config(path, lambda c: c.update(architectures=None, model_type="mistral"))
  with pytest.raises(hf.HFConfigError, match=r"model_type 'mistral'.*'gemma2'"):
    hf.model_config_from_dir(path)


def test_missing_required_config_key_names_key_and_file(zoo, tmp_path):
  path = _copy(zoo, tmp_path)
  file = _edit_config(path, lambda c: c.pop("hidden_size"))
  with pytest.raises(hf.HFConfigError) as e:
    hf.load_hf_checkpoint(path)
  assert "'hidden_size'" in str(e.value) and file in str(e.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "'yarn'"),
    (lambda c: c.update(hidden_act="relu"), "'relu'"),
    (lambda c: c.update(mlp_bias=True), "mlp_bias"),
])
def test_unsupported_features_are_named(zoo, tmp_path, edit, needle):
  path = _copy(zoo, tmp_path)
  _edit_config(path, edit)
  with pytest.raises(hf.HFConfigError, match=needle):
    hf.model_config_from_dir(path)


def test_truncated_safetensors_names_file_tensor_and_byte_range(zoo, tmp_path):
  path = _copy(zoo, tmp_path)
  file = os.path.join(path, "model.safetensors")
  reader = hf.SafetensorsFile(file)
  last, info = max(reader.tensors.items(), key=lambda kv: kv[1].end)
  reader.close()
  size = os.path.getsize(file)
  with open(file, "r+b") as f:
    f.truncate(size - 100)
  with pytest.raises(hf.SafetensorsError) as e:
    hf.load_hf_checkpoint(path)
  msg = str(e.value)
  assert file in msg and repr(last) in msg
  assert f"[{info.begin}, {info.end})" in msg and f"only {size - 100} bytes" in msg


def test_index_naming_a_missing_shard_is_reported(zoo, tmp_path):
  b = zoo.get("llama")
  path = hf.save_hf_checkpoint(b.params, b.cfg, str(tmp_path / "sharded"), family="llama",
                               max_shard_bytes=40_000)
  shards = sorted(p for p in os.listdir(path) if p.endswith(".safetensors"))
  os.remove(os.path.join(path, shards[-1]))
  with pytest.raises(FileNotFoundError, match=shards[-1]):
    hf.load_hf_checkpoint(path)


# ---------------------------------------------------------------------------- export, heads


def test_sharded_export_loads_in_transformers_and_back(zoo, tmp_path):
  b = zoo.get("llama")
  path = hf.save_hf_checkpoint(b.params, b.cfg, str(tmp_path / "sharded"),
                               hf_config_template=b.path, max_shard_bytes=40_000)
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert len(set(index["weight_map"].values())) > 2
  assert not os.path.exists(os.path.join(path, "model.safetensors"))
  again = transformers.AutoModelForCausalLM.from_pretrained(path)
  for name, value in b.model.state_dict().items():
    assert torch.equal(value, again.state_dict()[name]), name
  cfg, params = hf.load_hf_checkpoint(path)
  assert cfg == b.cfg
  jax.tree.map(np.testing.assert_array_equal, params, b.params)


def test_failed_export_leaves_nothing_behind(zoo, tmp_path, monkeypatch):
  b = zoo.get("llama")
  real = ckpt_lib.write_safetensors
  calls = []

  def flaky(path, tensors, metadata=None):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    return real(path, tensors, metadata)

  monkeypatch.setattr(ckpt_lib, "write_safetensors", flaky)
  target = tmp_path / "out"
  with pytest.raises(OSError, match="disk full"):
    hf.save_hf_checkpoint(b.params, b.cfg, str(target), family="llama", max_shard_bytes=40_000)
  assert os.listdir(tmp_path) == []  # neither the target nor the temporary directory
  monkeypatch.undo()
  hf.save_hf_checkpoint(b.params, b.cfg, str(target), family="llama")
  with pytest.raises(FileExistsError, match="overwrite"):
    hf.save_hf_checkpoint(b.params, b.cfg, str(target), family="llama")
  hf.save_hf_checkpoint(b.params, b.cfg, str(target), family="llama", overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_export_refuses_what_the_family_cannot_express(zoo, tmp_path):
  b = zoo.get("qwen2")  # q/k/v biases without an o bias: not a Llama
  with pytest.raises(hf.HFConfigError, match=r"'llama' cannot express model\.qkv_bias=True"):
    hf.save_hf_checkpoint(b.params, b.cfg, str(tmp_path / "x"), family="llama")
  assert not os.path.exists(tmp_path / "x")
  cfg = dataclasses.replace(zoo.get("llama").cfg, attn_windows=(0, 8))
  with pytest.raises(hf.HFConfigError, match="attn_windows"):
    hf.hf_config_from_model(cfg, "llama")


def test_heads_other_than_the_checkpoints_own(zoo, tmp_path):
  b = zoo.get("llama")
  cfg, params = hf.load_hf_checkpoint(b.path, heads=("lm", "scalar"))
  assert cfg.heads == ("lm", "scalar")
  assert not np.any(np.asarray(params["scalar_head"]["w"]))  # a fresh value head starts at 0
  np.testing.assert_array_equal(params["lm_head"], b.params["lm_head"])
  rm = zoo.get("llama", "scalar")  # untied: no LM head to be had
  with pytest.raises(hf.CheckpointError, match="no lm_head.weight"):
    hf.load_hf_checkpoint(rm.path, heads=("lm",))
  tied = zoo.get("qwen3", "scalar")  # tied: the LM head is the embedding
  cfg, params = hf.load_hf_checkpoint(tied.path, heads=("lm", "scalar"))
  assert cfg.heads == ("lm", "scalar") and "lm_head" not in params


def test_copying_in_small_bands_changes_nothing(zoo, monkeypatch):
  """Every layout (plain, transposed, split into heads, biases) copied a few rows at a time."""
  b = zoo.get("llama")  # biases on q, k, v and o, an untied lm_head
  monkeypatch.setattr(ckpt_lib, "BAND_BYTES", 1000)
  _, params = hf.load_hf_checkpoint(b.path)
  jax.tree.map(np.testing.assert_array_equal, params, b.params)


def test_shardings_place_each_param(zoo):
  b = zoo.get("qwen2")
  mesh = Mesh(np.array(jax.devices()[:4]), ("model",))
  rules = {"embed": None, "q_heads": "model", "kv_heads": None, "mlp": "model", "vocab": "model"}
  shardings = jax.tree.map(
      lambda axes: NamedSharding(mesh, PartitionSpec(*(rules.get(a) for a in axes))),
      tfm.logical_axes(b.cfg), is_leaf=lambda x: isinstance(x, tuple))
  cfg, params = hf.load_hf_checkpoint(b.path, shardings=shardings)
  assert params["layers"]["q"].sharding == shardings["layers"]["q"]
  assert params["embed"].sharding.spec == PartitionSpec("model", None)
  jax.tree.map(np.testing.assert_array_equal, params, b.params)


# --------------------------------------------------------------------------- config mapping


def test_pre_v5_config_keys_map_like_rope_parameters(zoo):
  llama = zoo.get("llama")
  old = hf.read_hf_config(llama.path)
  rope = old.pop("rope_parameters")
  old["rope_theta"] = rope.pop("rope_theta")
  old["rope_scaling"] = rope
  assert hf.model_config_from_hf(old) == llama.cfg
  gemma3 = zoo.get("gemma3_text")
  old = hf.read_hf_config(gemma3.path)
  for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
    old.pop(key)
  old.update(rope_theta=1e6, rope_local_base_freq=10_000.0, sliding_window_pattern=2,
             rope_scaling={"rope_type": "linear", "factor": 8.0})
  assert hf.model_config_from_hf(old) == gemma3.cfg
  gemma = hf.read_hf_config(zoo.get("gemma").path)
  gemma["hidden_act"] = "gelu"  # Gemma 1's legacy spelling of the tanh approximation
  assert hf.model_config_from_hf(gemma).mlp_activation == "gelu_tanh"


def test_grpo_hf_config_takes_the_model_from_the_checkpoint(zoo):
  path = zoo.get("gemma2").path
  config = load_config("grpo_hf", path)
  config.data.data_dir = "/tmp/unused"
  config.data.train_path = "/tmp/unused.jsonl"
  experiment = config_lib.from_config_dict(config)
  expected = hf.model_config_from_dir(path)
  assert dataclasses.replace(experiment.model, dtype="float32", remat=False) == expected
  assert experiment.sampling.stop_tokens == (2,)
