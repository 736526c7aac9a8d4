"""Tests for rlalign.data.buckets: prompt length buckets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.data import buckets
from rlalign.models import transformer as tfm
from rlalign.sampling import sampler


def _left_padded(lengths, width, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros((len(lengths), width), bool)
  for r, n in enumerate(lengths):
    tokens[r, width - n:] = rng.integers(3, 16, n)
    mask[r, width - n:] = True
  return {"prompt_tokens": tokens, "prompt_mask": mask,
          "answer_tokens": np.ones((len(lengths), 2), np.int32)}


@pytest.mark.parametrize("lengths,expected", [((3, 5), 8), ((8, 1), 8), ((9, 2), 16),
                                              ((16, 16), 16), ((17, 3), 32), ((30, 2), 32)])
def test_trim_cuts_to_smallest_bucket_holding_longest(lengths, expected):
  batch = _left_padded(lengths, 32)
  out = buckets.trim_prompts(batch, (8, 16))
  assert out["prompt_tokens"].shape == (2, expected)
  np.testing.assert_array_equal(out["prompt_tokens"], batch["prompt_tokens"][:, 32 - expected:])
  np.testing.assert_array_equal(out["prompt_mask"].sum(1), lengths)
  assert out["answer_tokens"] is batch["answer_tokens"]


def test_trim_uses_given_global_longest():
  batch = _left_padded((3, 4), 32)
  assert buckets.trim_prompts(batch, (8, 16, 32), longest=12)["prompt_tokens"].shape[1] == 16


def test_no_buckets_is_identity():
  batch = _left_padded((3, 4), 32)
  assert buckets.trim_prompts(batch, ()) is batch


def test_right_padded_prompts_are_refused():
  batch = _left_padded((3, 4), 32)
  batch["prompt_mask"] = batch["prompt_mask"][:, ::-1].copy()
  with pytest.raises(ValueError, match="left-padded"):
    buckets.trim_prompts(batch, (8,))


@pytest.mark.parametrize("bad", [(16, 8), (8, 8), (0, 8), (8, 64)])
def test_validate_names_key(bad):
  with pytest.raises(ValueError, match="data.prompt_buckets"):
    buckets.validate(bad, 32)


def test_trimmed_batch_samples_the_same_tokens():
  """Left padding is invisible to the model, so cutting it changes no sampled token."""
  cfg = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
  params = jax.jit(tfm.init, static_argnums=0)(cfg, jax.random.key(0, impl="rbg"))
  batch = _left_padded((5, 7, 2), 24)
  trimmed = buckets.trim_prompts(batch, (8, 16))
  assert trimmed["prompt_tokens"].shape[1] == 8
  scfg = sampler.SamplingConfig(max_new_tokens=6, temperature=1.0)
  run = lambda b: sampler.sample(params, jnp.asarray(b["prompt_tokens"]),
                                 jnp.asarray(b["prompt_mask"]), jax.random.key(1), cfg, scfg)
  full, cut = run(batch), run(trimmed)
  np.testing.assert_array_equal(np.asarray(full.tokens), np.asarray(cut.tokens))
  np.testing.assert_allclose(np.asarray(full.logprobs), np.asarray(cut.logprobs), rtol=1e-5,
                             atol=1e-6)
