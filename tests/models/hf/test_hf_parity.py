"""Parity with transformers on tiny random models of every family: logits, greedy decoding,
export round trips and reward scores, all in float32."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.models import hf
from rlalign.models import transformer as tfm
from rlalign.sampling import sampler

from hf_zoo import FAMILY_NAMES, hf_positions, left_padded_batch, torch, transformers

LOGIT_TOL = 1e-4
NEW_TOKENS = 16


@functools.lru_cache(maxsize=None)
def _logits_fn(cfg):
  return jax.jit(lambda p, t, m: tfm.lm_logits(
      p, tfm.forward(p, t, tfm.positions_from_mask(m), m, cfg)[0], cfg))


def _hf_logits(model, tokens, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(hf_positions(mask), dtype=torch.long))
  return out.logits.float().numpy()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_logits_match_transformers_with_left_padding(zoo, family):
  b = zoo.get(family)
  tokens, mask = left_padded_batch(seed=1)
  ours = np.asarray(_logits_fn(b.cfg)(b.params, jnp.asarray(tokens), jnp.asarray(mask)))
  theirs = _hf_logits(b.model, tokens, mask)
  diff = np.abs(ours - theirs)[mask].max()
  print(f"{family}: max |logit diff| {diff:.2e} (logit scale {np.abs(theirs[mask]).max():.2f})")
  assert diff < LOGIT_TOL
  # The features under test are live: the logits are not flat and padding is exercised.
  assert theirs[mask].std() > 0.3


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_greedy_generation_matches_generate(zoo, family):
  b = zoo.get(family)
  prompts, mask = left_padded_batch(seed=2)
  scfg = sampler.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0)
  sample = jax.jit(lambda p, t, m: sampler.sample(p, t, m, jax.random.PRNGKey(0), b.cfg, scfg))
  ours = np.asarray(sample(b.params, jnp.asarray(prompts), jnp.asarray(mask)).tokens)
  b.model.generation_config.eos_token_id = None  # run all 16 steps, like stop_tokens=()
  with torch.no_grad():
    out = b.model.generate(input_ids=torch.tensor(prompts, dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long),
                           do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           pad_token_id=0)
  theirs = out[:, prompts.shape[1]:].numpy()
  np.testing.assert_array_equal(ours, theirs)
  for row in theirs:  # not a trivially constant continuation
    assert len(set(row.tolist())) >= 4, row


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_round_trips_through_from_pretrained(zoo, family, tmp_path):
  b = zoo.get(family)
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  (tok_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
  out = hf.save_hf_checkpoint(b.params, b.cfg, str(tmp_path / "export"),
                              hf_config_template=b.path, tokenizer_dir=str(tok_dir))
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer_config.json"]
  assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp dir left
  again = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  ref, got = b.model.state_dict(), again.state_dict()
  assert sorted(ref) == sorted(got)
  for name in ref:
    assert torch.equal(ref[name], got[name]), name
  tokens, mask = left_padded_batch(seed=3)
  np.testing.assert_array_equal(_hf_logits(again, tokens, mask), _hf_logits(b.model, tokens, mask))
  # And our own import of the export is bitwise the params we exported.
  cfg2, params2 = hf.load_hf_checkpoint(out)
  assert cfg2 == b.cfg
  jax.tree.map(np.testing.assert_array_equal, params2, b.params)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reward_model_scores_match_sequence_classification(zoo, family):
  b = zoo.get(family, "scalar")
  assert b.cfg.heads == ("scalar",)
  assert float(b.params["scalar_head"]["b"]) == 0.0
  tokens, mask = left_padded_batch(seed=4)
  # Right padding, as HF expects: it scores the last token that is not pad_token_id.
  right = np.zeros_like(tokens)
  for r in range(len(tokens)):
    real = tokens[r][mask[r]]
    right[r, :len(real)] = real
  right_mask = right != 0
  with torch.no_grad():
    theirs = b.model(input_ids=torch.tensor(right, dtype=torch.long),
                     attention_mask=torch.tensor(right_mask, dtype=torch.long)).logits[:, 0].numpy()
  scores = jax.jit(tfm.sequence_scores, static_argnums=3)
  ours_right = np.asarray(scores(b.params, jnp.asarray(right), jnp.asarray(right_mask), b.cfg))
  ours_left = np.asarray(scores(b.params, jnp.asarray(tokens), jnp.asarray(mask), b.cfg))
  print(f"{family} reward: max |diff| {np.abs(ours_right - theirs).max():.2e}")
  np.testing.assert_allclose(ours_right, theirs, atol=LOGIT_TOL, rtol=0)
  # Left padding scores the same rows the same, since positions come from the mask.
  np.testing.assert_allclose(ours_left, theirs, atol=LOGIT_TOL, rtol=0)
  assert np.ptp(theirs) > 1e-2  # the rows really score differently


def test_reward_model_export_round_trips(zoo, tmp_path):
  b = zoo.get("qwen2", "scalar")
  out = hf.save_hf_checkpoint(b.params, b.cfg, str(tmp_path / "rm"), hf_config_template=b.path)
  again = transformers.AutoModelForSequenceClassification.from_pretrained(out)
  for name, value in b.model.state_dict().items():
    assert torch.equal(value, again.state_dict()[name]), name


def test_bf16_import_gives_bf16_params(zoo, tmp_path):
  b = zoo.get("qwen2")
  path = str(tmp_path / "bf16")
  b.model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
  b.model.to(torch.float32)
  assert json.load(open(os.path.join(path, "config.json")))["dtype"] == "bfloat16"
  cfg, params = hf.load_hf_checkpoint(path, dtype="bfloat16")
  assert cfg.param_dtype == cfg.dtype == "bfloat16"
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
  # Bitwise the stored bf16 values, and an f32 import of them is their exact widening.
  expected = jax.tree.map(lambda a: np.asarray(a).astype(jnp.bfloat16), b.params)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  _, params32 = hf.load_hf_checkpoint(path, dtype="float32")
  jax.tree.map(lambda a, c: np.testing.assert_array_equal(np.asarray(a, np.float32), c),
               params, params32)
  # bf16 compute stays close to the float32 model.
  tokens, mask = left_padded_batch(seed=5)
  lo = np.asarray(_logits_fn(cfg)(params, jnp.asarray(tokens), jnp.asarray(mask)))
  hi = np.asarray(_logits_fn(b.cfg)(b.params, jnp.asarray(tokens), jnp.asarray(mask)))
  assert np.abs(lo - hi)[mask].max() < 0.25
