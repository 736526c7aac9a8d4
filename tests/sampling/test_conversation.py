"""Tests for multi-turn sampling over one KV cache (sampler.Conversation: start, reply, say).

The reference for a turn is the plain sampler, or the training forward, on the turn's
history written out left-packed: what a model that re-read everything would see.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.models import transformer as tfm
from rlalign.sampling import sampler

CFG = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=8, d_ff=64, tie_embeddings=False)
PROMPTS = np.array([[0, 0, 3, 4, 5],
                    [1, 6, 7, 8, 9],
                    [0, 0, 0, 10, 11]], np.int32)
PROMPT_MASK = PROMPTS != 0
FEEDBACK = (12, 13, 14)
STOP = 15
N = 4


@pytest.fixture(scope="module")
def params():
  return jax.jit(tfm.init, static_argnums=0)(CFG, jax.random.key(2, impl="rbg"))


def _two_turns(params, rng, cfg, active=None):
  """Attempt, feedback to ``active`` rows, attempt: the second turn's samples and history."""
  B, P = PROMPTS.shape
  c = sampler.start(params, jnp.asarray(PROMPTS), jnp.asarray(PROMPT_MASK), CFG,
                    P + 2 * N + len(FEEDBACK))
  c, first = sampler.reply(c, jax.random.fold_in(rng, 0), CFG, cfg)
  c = sampler.say(c, FEEDBACK, CFG, active)
  history = c.history()
  c, second = sampler.reply(c, jax.random.fold_in(rng, 1), CFG, cfg, active=active)
  return first, second, history, c


def test_second_turn_equals_sampling_from_the_written_out_history(params):
  # A stop token that the untrained model emits now and then ends some first turns early:
  # the pads after it must drop out of the history.
  cfg = sampler.SamplingConfig(max_new_tokens=N, temperature=0.0, stop_tokens=(STOP, 9))
  first, second, (tokens, mask), _ = jax.jit(
      lambda p, r: _two_turns(p, r, cfg))(params, jax.random.PRNGKey(0))
  assert tokens.shape == (3, PROMPTS.shape[1] + N + len(FEEDBACK))
  # The history by hand: each row's prompt, its first attempt up to its stop, the feedback.
  for b in range(3):
    want = (list(PROMPTS[b][PROMPT_MASK[b]]) + list(np.asarray(first.tokens[b])[
        np.asarray(first.mask[b])]) + list(FEEDBACK))
    np.testing.assert_array_equal(np.asarray(tokens[b])[np.asarray(mask[b])], want)
    assert not np.asarray(mask[b])[:tokens.shape[1] - len(want)].any()  # pads first
  plain = jax.jit(lambda p, t, m, r: sampler.sample(p, t, m, r, CFG, cfg))(
      params, tokens, mask, jax.random.PRNGKey(9))
  np.testing.assert_array_equal(second.tokens, plain.tokens)
  np.testing.assert_array_equal(second.mask, plain.mask)
  np.testing.assert_allclose(second.logprobs, plain.logprobs, atol=1e-5)


def test_second_turn_logprobs_match_the_training_forward(params):
  cfg = sampler.SamplingConfig(max_new_tokens=N, temperature=1.0, stop_tokens=(STOP,))
  _, second, (tokens, mask), _ = jax.jit(
      lambda p, r: _two_turns(p, r, cfg))(params, jax.random.PRNGKey(3))
  full = jnp.concatenate([tokens, second.tokens], axis=1)
  full_mask = jnp.concatenate([mask, second.mask], axis=1)
  logp = tfm.token_logprobs(params, full, full_mask, CFG)[:, tokens.shape[1] - 1:]
  np.testing.assert_allclose(np.where(second.mask, second.logprobs, 0.0),
                             np.where(second.mask, logp, 0.0), atol=1e-5)


def test_rows_that_sit_a_turn_out_keep_their_history(params):
  cfg = sampler.SamplingConfig(max_new_tokens=N, temperature=1.0, stop_tokens=(STOP,))
  active = jnp.asarray([True, False, True])
  first, second, (tokens, mask), c = jax.jit(
      lambda p, r: _two_turns(p, r, cfg, active))(params, jax.random.PRNGKey(1))
  assert not np.asarray(second.mask[1]).any() and int(second.lengths[1]) == 0
  np.testing.assert_array_equal(second.tokens[1], 0)
  # Row 1's history is its prompt and first attempt, without the feedback it was not given.
  want = list(PROMPTS[1]) + list(np.asarray(first.tokens[1])[np.asarray(first.mask[1])])
  np.testing.assert_array_equal(np.asarray(tokens[1])[np.asarray(mask[1])], want)
  assert int(c.position[1]) == len(want)
  assert int(c.position[0]) == int(PROMPT_MASK[0].sum() + first.lengths[0] + len(FEEDBACK)
                                   + second.lengths[0])


def test_repeat_then_take_continues_each_history(params):
  """Best-of-N: the continuations of a repeated conversation are samples of its rows' own
  next turn, and taking one of each row's copies gives back that row's history."""
  cfg = sampler.SamplingConfig(max_new_tokens=N, temperature=0.0, stop_tokens=(STOP,))

  def run(p, r):
    c = sampler.start(p, jnp.asarray(PROMPTS), jnp.asarray(PROMPT_MASK), CFG,
                      PROMPTS.shape[1] + 2 * N + len(FEEDBACK))
    c, _ = sampler.reply(c, r, CFG, cfg)
    c = sampler.say(c, FEEDBACK, CFG)
    alone, once = sampler.reply(c, r, CFG, cfg)
    tiled, twice = sampler.reply(sampler.repeat(c, 2), r, CFG, cfg)
    picked = sampler.take(tiled, jnp.asarray([1, 2, 5]))
    return once, twice, alone.history(), picked.history()

  once, twice, alone, picked = jax.jit(run)(params, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(twice.tokens[::2], once.tokens)  # greedy: both copies agree
  np.testing.assert_array_equal(twice.tokens[1::2], once.tokens)
  chex.assert_trees_all_equal(picked, alone)


def test_misuse_fails_before_tracing_a_loop(params):
  cfg = sampler.SamplingConfig(max_new_tokens=N, temperature=0.0)
  c = sampler.start(params, jnp.asarray(PROMPTS), jnp.asarray(PROMPT_MASK), CFG,
                    PROMPTS.shape[1] + N)
  c, _ = sampler.reply(c, jax.random.PRNGKey(0), CFG, cfg)
  with pytest.raises(ValueError, match="reply right after a reply"):
    sampler.reply(c, jax.random.PRNGKey(0), CFG, cfg)
  with pytest.raises(ValueError, match="overflow"):
    sampler.say(c, FEEDBACK, CFG)
  with pytest.raises(ValueError, match="cannot hold prompts"):
    sampler.start(params, jnp.asarray(PROMPTS), jnp.asarray(PROMPT_MASK), CFG, 2)


def test_saying_each_rows_own_left_padded_text(params):
  """The prompt said again after the feedback (per-row ids and mask): the next turn is the
  plain sampler's on the written-out history, pads and all dropped."""
  cfg = sampler.SamplingConfig(max_new_tokens=N, temperature=0.0, stop_tokens=(STOP, 9))
  P = PROMPTS.shape[1]

  def run(p, r):
    c = sampler.start(p, jnp.asarray(PROMPTS), jnp.asarray(PROMPT_MASK), CFG,
                      2 * P + 2 * N + len(FEEDBACK))
    c, first = sampler.reply(c, r, CFG, cfg)
    c = sampler.say(c, FEEDBACK, CFG)
    c = sampler.say(c, jnp.asarray(PROMPTS), CFG, mask=jnp.asarray(PROMPT_MASK))
    history = c.history()
    c, second = sampler.reply(c, r, CFG, cfg)
    return first, second, history

  first, second, (tokens, mask) = jax.jit(run)(params, jax.random.PRNGKey(0))
  for b in range(3):
    prompt = list(PROMPTS[b][PROMPT_MASK[b]])
    want = (prompt + list(np.asarray(first.tokens[b])[np.asarray(first.mask[b])])
            + list(FEEDBACK) + prompt)
    np.testing.assert_array_equal(np.asarray(tokens[b])[np.asarray(mask[b])], want)
  plain = jax.jit(lambda p, t, m, r: sampler.sample(p, t, m, r, CFG, cfg))(
      params, tokens, mask, jax.random.PRNGKey(9))
  np.testing.assert_array_equal(second.tokens, plain.tokens)
  np.testing.assert_allclose(second.logprobs, plain.logprobs, atol=1e-5)
