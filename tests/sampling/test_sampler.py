"""Tests for rlalign.sampling.sampler: greedy/temperature sampling, stop tokens, filtering."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.models import transformer as tfm
from rlalign.sampling import sampler

# Untied embeddings: a random tied model mostly repeats one token under greedy decoding,
# which would make the token-for-token comparisons below weak.
CFG = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=8, d_ff=64, tie_embeddings=False)
NEG = float(jnp.finfo(jnp.float32).min)

PROMPTS = np.array([[0, 0, 3, 4, 5],
                    [1, 6, 7, 8, 9],
                    [0, 0, 0, 10, 11]], np.int32)
PROMPT_MASK = np.array([[0, 0, 1, 1, 1],
                        [1, 1, 1, 1, 1],
                        [0, 0, 0, 1, 1]], bool)


@pytest.fixture(scope="module")
def params():
  # An "rbg" key only because it compiles much faster than threefry on CPU.
  return jax.jit(tfm.init, static_argnums=0)(CFG, jax.random.key(2, impl="rbg"))


@functools.lru_cache(maxsize=None)
def _compiled_sample(cfg, pad_id=0):
  return jax.jit(lambda p, t, m, r: sampler.sample(p, t, m, r, CFG, cfg, pad_id=pad_id))


def _sample(params, cfg, prompts=PROMPTS, prompt_mask=PROMPT_MASK, seed=0, fn=None):
  fn = fn or _compiled_sample(cfg)
  return fn(params, jnp.asarray(prompts), jnp.asarray(prompt_mask), jax.random.PRNGKey(seed))


_FULL_LOGITS = jax.jit(lambda p, tokens, mask: tfm.lm_logits(
    p, tfm.forward(p, tokens, tfm.positions_from_mask(mask), mask, CFG)[0], CFG))


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _naive_greedy(params, prompts, prompt_mask, n):
  """Recomputes the full forward (no cache) over prompt + generated tokens at every step."""
  B, P = prompts.shape
  tokens = np.zeros((B, P + n), np.int32)
  mask = np.zeros((B, P + n), bool)
  tokens[:, :P], mask[:, :P] = prompts, prompt_mask
  for t in range(n):
    # Slots past P + t are masked out and, being later, cannot affect slot P + t - 1.
    logits = np.asarray(_FULL_LOGITS(params, jnp.asarray(tokens), jnp.asarray(mask)))
    tokens[:, P + t] = np.argmax(logits[:, P + t - 1], axis=-1)
    mask[:, P + t] = True
  return tokens[:, P:]


def test_greedy_matches_naive_full_forward_loop(params):
  n = 6
  out = _sample(params, sampler.SamplingConfig(max_new_tokens=n, temperature=0.0))
  chex.assert_shape([out.tokens, out.logprobs, out.mask], (3, n))
  chex.assert_shape(out.lengths, (3,))
  chex.assert_type([out.tokens, out.lengths], jnp.int32)
  expected = _naive_greedy(params, PROMPTS, PROMPT_MASK, n)
  assert len(np.unique(expected)) >= 5  # not a degenerate repeat-one-token model
  np.testing.assert_array_equal(np.asarray(out.tokens), expected)
  # No stop tokens: every row runs the full budget.
  assert np.asarray(out.mask).all()
  np.testing.assert_array_equal(np.asarray(out.lengths), [n, n, n])


def test_naive_loop_reference_depends_on_padding(params):
  """Guards the reference: dropping the prompt mask changes what greedy produces."""
  a = _naive_greedy(params, PROMPTS, PROMPT_MASK, 4)
  b = _naive_greedy(params, PROMPTS, np.ones_like(PROMPT_MASK), 4)
  assert (a[[0, 2]] != b[[0, 2]]).any()
  np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("cfg", [
    sampler.SamplingConfig(max_new_tokens=6, temperature=0.0),
    sampler.SamplingConfig(max_new_tokens=6, temperature=0.6, top_k=4),
], ids=["greedy", "temperature_top_k"])
def test_logprobs_are_unmodified_policy_logprobs(params, cfg):
  out = _sample(params, cfg, seed=3)
  P, n = PROMPTS.shape[1], cfg.max_new_tokens
  full = np.concatenate([PROMPTS, np.asarray(out.tokens)], axis=1)
  full_mask = np.concatenate([PROMPT_MASK, np.ones((3, n), bool)], axis=1)
  logsm = _np_log_softmax(_FULL_LOGITS(params, jnp.asarray(full), jnp.asarray(full_mask)))
  tokens = np.asarray(out.tokens)
  for b in range(3):
    for t in range(n):
      np.testing.assert_allclose(float(out.logprobs[b, t]), logsm[b, P + t - 1, tokens[b, t]],
                                 atol=1e-5)


def test_stop_token_ends_rows(params):
  n = 6
  free = np.asarray(_sample(params, sampler.SamplingConfig(max_new_tokens=n,
                                                           temperature=0.0)).tokens)
  # The stop token: one that some row first emits at step 1 (so it stops mid-budget), while
  # another row never emits it (so it runs the whole budget).
  candidates = [int(free[b, 1]) for b in range(3)
                if free[b, 0] != free[b, 1] and any((row != free[b, 1]).all() for row in free)]
  assert candidates, free
  stop = candidates[0]
  out = _sample(params, sampler.SamplingConfig(max_new_tokens=n, temperature=0.0,
                                               stop_tokens=(stop,)))
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  logprobs, lengths = np.asarray(out.logprobs), np.asarray(out.lengths)
  stopped_rows = 0
  for b in range(3):
    hits = [t for t in range(n) if free[b, t] == stop]
    length = hits[0] + 1 if hits else n
    stopped_rows += length < n
    np.testing.assert_array_equal(tokens[b, :length], free[b, :length])
    np.testing.assert_array_equal(tokens[b, length:], 0)  # pad_id
    np.testing.assert_array_equal(mask[b], np.arange(n) < length)
    np.testing.assert_array_equal(logprobs[b, length:], 0.0)
    assert lengths[b] == length
    if hits:
      assert tokens[b, length - 1] == stop and mask[b, length - 1]  # the stop token counts
  assert stopped_rows >= 1


def test_filter_logits_top_k_keeps_exactly_k_largest():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.5, -1.0], [0.0, -2.0, 5.0, 4.0, 4.5]])
  out = np.asarray(sampler.filter_logits(logits, sampler.SamplingConfig(top_k=2)))
  np.testing.assert_array_equal(out[0], [NEG, 3.0, 2.0, NEG, NEG])
  np.testing.assert_array_equal(out[1], [NEG, NEG, 5.0, NEG, 4.5])
  out3 = np.asarray(sampler.filter_logits(logits, sampler.SamplingConfig(top_k=3)))
  np.testing.assert_array_equal(out3[0] > NEG, [True, True, True, False, False])


@pytest.mark.parametrize("top_p, kept", [(0.3, 1), (0.5, 1), (0.7, 2), (0.8, 2), (0.81, 3),
                                         (0.96, 4), (1.0, 4)])
def test_filter_logits_top_p_keeps_smallest_prefix_reaching_p(top_p, kept):
  probs = np.array([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  out = np.asarray(sampler.filter_logits(logits, sampler.SamplingConfig(top_p=top_p)))[0]
  order = [1, 3, 0, 2]  # indices by decreasing probability
  expected_keep = np.zeros(4, bool)
  expected_keep[order[:kept]] = True
  np.testing.assert_array_equal(out > NEG, expected_keep)
  np.testing.assert_allclose(out[expected_keep], np.log(probs[expected_keep]), rtol=1e-6)


def test_filter_logits_temperature_scales_then_filters():
  logits = jnp.array([[1.0, 3.0, 2.0, -0.5]])
  out = np.asarray(sampler.filter_logits(logits, sampler.SamplingConfig(temperature=0.5)))
  np.testing.assert_allclose(out, [[2.0, 6.0, 4.0, -1.0]], rtol=1e-6)
  out = np.asarray(sampler.filter_logits(logits, sampler.SamplingConfig(temperature=2.0,
                                                                         top_k=2)))
  np.testing.assert_allclose(out, [[NEG, 1.5, 1.0, NEG]], rtol=1e-6)


@pytest.mark.parametrize("temperature, top_k", [(0.7, 0), (1.3, 3)])
def test_sampled_frequencies_match_softmax(params, temperature, top_k):
  batch = 2000
  prompts = np.tile(PROMPTS[:1], (batch, 1))
  mask = np.tile(PROMPT_MASK[:1], (batch, 1))
  cfg = sampler.SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k)
  out = _sample(params, cfg, prompts=prompts, prompt_mask=mask, seed=11)
  logits = np.asarray(_FULL_LOGITS(params, jnp.asarray(PROMPTS[:1]),
                                   jnp.asarray(PROMPT_MASK[:1])))[0, -1].astype(np.float64)
  scaled = logits / temperature
  if top_k:
    kth = np.sort(scaled)[::-1][top_k - 1]
    scaled = np.where(scaled >= kth, scaled, -np.inf)
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  assert probs.max() < 0.9  # a spread-out distribution, so the check means something
  freq = np.bincount(np.asarray(out.tokens)[:, 0], minlength=CFG.vocab_size) / batch
  np.testing.assert_allclose(freq, probs, atol=0.03)
  if top_k:
    assert np.all(freq[probs == 0] == 0)
  assert np.asarray(out.mask).all()


def test_loop_exits_once_every_row_has_stopped(params, monkeypatch):
  calls = []
  original = tfm.forward

  def counting_forward(*args, **kwargs):
    out = original(*args, **kwargs)
    jax.debug.callback(lambda i: calls.append(int(i)), kwargs.get("cache_index", 0))
    return out

  monkeypatch.setattr(tfm, "forward", counting_forward)
  P = PROMPTS.shape[1]
  # Control: without stop tokens the loop runs every step (prefill + 5 decode steps).
  # Fresh closures, so that these trace the patched forward.
  fresh = lambda cfg: jax.jit(lambda p, t, m, r: sampler.sample(p, t, m, r, CFG, cfg))
  cfg = sampler.SamplingConfig(max_new_tokens=5, temperature=0.0)
  _sample(params, cfg, fn=fresh(cfg)).tokens.block_until_ready()
  jax.effects_barrier()
  assert calls == [0] + [P + t for t in range(5)]
  calls.clear()

  # Every token is a stop token: each row stops at its first token.
  cfg = sampler.SamplingConfig(max_new_tokens=50, temperature=1.0,
                               stop_tokens=tuple(range(CFG.vocab_size)))
  out = _sample(params, cfg, seed=5, fn=fresh(cfg))
  out.tokens.block_until_ready()
  jax.effects_barrier()
  assert calls == [0, P]  # the prefill and a single decode step, not 50
  np.testing.assert_array_equal(np.asarray(out.mask).sum(-1), [1, 1, 1])
  np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1, 1])
  assert np.asarray(out.mask)[:, 0].all()
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 1:], 0)
  np.testing.assert_array_equal(np.asarray(out.logprobs)[:, 1:], 0.0)
  assert np.all(np.asarray(out.logprobs)[:, 0] < 0.0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_new_tokens=0), "sampling.max_new_tokens"),
    (dict(temperature=-0.1), "sampling.temperature"),
    (dict(top_k=-1), "sampling.top_k"),
    (dict(top_p=0.0), "sampling.top_p"),
    (dict(top_p=1.5), "sampling.top_p"),
])
def test_sampling_config_validate_names_field(kwargs, field):
  sampler.SamplingConfig().validate()
  with pytest.raises(ValueError) as e:
    sampler.SamplingConfig(**kwargs).validate()
  assert str(e.value).startswith(field), str(e.value)
