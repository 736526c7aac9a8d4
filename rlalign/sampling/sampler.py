"""In-graph sampling: prefill plus a ``lax.while_loop`` decode over a KV cache.

Prompts are left-padded to one length P, so every row's next token lands in the same cache
slot and the decode step is a single [B, 1] forward. The loop stops as soon as every row has
emitted a stop token, so short answers cost short loops, with shapes still static.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import transformer as tfm


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 8
  temperature: float = 1.0  # 0 means greedy
  top_k: int = 0            # 0 disables
  top_p: float = 1.0        # 1 disables
  stop_tokens: Tuple[int, ...] = ()

  def validate(self, prefix: str = "sampling") -> None:
    if self.max_new_tokens <= 0:
      raise ValueError(f"{prefix}.max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"{prefix}.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"{prefix}.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"{prefix}.top_p must be in (0, 1], got {self.top_p}")


class Samples(NamedTuple):
  tokens: jax.Array    # [B, N] generated ids, pad after a row stops
  logprobs: jax.Array  # [B, N] log pi(token) under the unmodified policy (temperature 1)
  mask: jax.Array      # [B, N] True for generated tokens, the stop token included
  lengths: jax.Array   # [B]


def filter_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Applies temperature, top-k and top-p to [B, V] float32 logits."""
  neg_inf = jnp.finfo(logits.dtype).min
  logits = logits / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if cfg.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass strictly
    # before it is below top_p. The most likely token always stays.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < cfg.top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, neg_inf, logits)
  return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, cfg: SamplingConfig) -> jax.Array:
  if cfg.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, cfg), axis=-1).astype(jnp.int32)


def sample(params: tfm.Params, prompt_tokens: jax.Array, prompt_mask: jax.Array, rng: jax.Array,
           model_cfg: tfm.ModelConfig, cfg: SamplingConfig, pad_id: int = 0,
           on_token: Optional[Callable[[np.ndarray, np.ndarray], None]] = None) -> Samples:
  """Samples up to ``cfg.max_new_tokens`` continuations of left-padded prompts [B, P].

  ``on_token(tokens [B], done [B])``, if given, is called on the host with each decode step's
  tokens as the compiled loop produces them (pad where a row had already stopped), in order:
  what streams text to a terminal. Training never passes it.
  """
  B, P = prompt_tokens.shape
  N = cfg.max_new_tokens
  stop = jnp.asarray(cfg.stop_tokens or (-1,), jnp.int32)

  key_mask = jnp.zeros((B, P + N), bool).at[:, :P].set(prompt_mask.astype(bool))
  positions = tfm.positions_from_mask(prompt_mask)
  # The prefill scans the stacked layers: one layer's activations live at a time, and its
  # compile does not grow with depth. The decode then runs the layers unstacked (see
  # tfm.unstack_layers), each with its own cache arrays.
  cache = tfm.init_cache(model_cfg, B, P + N)
  hidden, cache = tfm.forward(params, prompt_tokens, positions, key_mask, model_cfg,
                              cache=cache, cache_index=0)
  # With left padding the last prompt slot is always a real token.
  logits = tfm.lm_logits(params, hidden[:, -1], model_cfg)
  params = tfm.unstack_layers(params)
  cache = tfm.unstack_cache(cache)

  class Carry(NamedTuple):
    t: jax.Array
    cache: tfm.KVCache
    key_mask: jax.Array
    logits: jax.Array
    position: jax.Array
    done: jax.Array
    tokens: jax.Array
    logprobs: jax.Array

  def cond(c: Carry):
    return (c.t < N) & ~jnp.all(c.done)

  def body(c: Carry):
    token = choose_tokens(c.logits, jax.random.fold_in(rng, c.t), cfg)
    logp = jnp.take_along_axis(jax.nn.log_softmax(c.logits, axis=-1), token[:, None], axis=-1)[:, 0]
    token = jnp.where(c.done, pad_id, token)
    tokens = c.tokens.at[:, c.t].set(token)
    logprobs = c.logprobs.at[:, c.t].set(jnp.where(c.done, 0.0, logp))
    done = c.done | jnp.isin(token, stop)
    if on_token is not None:
      jax.debug.callback(on_token, token, c.done, ordered=True)
    key_mask = c.key_mask.at[:, P + c.t].set(True)
    hidden, cache = tfm.forward(params, token[:, None], c.position[:, None], key_mask, model_cfg,
                                cache=c.cache, cache_index=P + c.t)
    logits = tfm.lm_logits(params, hidden[:, 0], model_cfg)
    return Carry(c.t + 1, cache, key_mask, logits, c.position + 1, done, tokens, logprobs)

  init = Carry(t=jnp.int32(0), cache=cache, key_mask=key_mask, logits=logits,
               position=positions[:, -1] + 1, done=jnp.zeros((B,), bool),
               tokens=jnp.full((B, N), pad_id, jnp.int32),
               logprobs=jnp.zeros((B, N), jnp.float32))
  final = jax.lax.while_loop(cond, body, init)
  mask = generated_mask(final.tokens, stop, final.t)
  return Samples(final.tokens, final.logprobs, mask, mask.sum(-1).astype(jnp.int32))


def generated_mask(tokens: jax.Array, stop: jax.Array, steps: jax.Array) -> jax.Array:
  """True up to and including each row's first stop token, within the steps taken."""
  N = tokens.shape[1]
  is_stop = jnp.isin(tokens, stop)
  stops_before = jnp.cumsum(is_stop, axis=1) - is_stop
  return (stops_before == 0) & (jnp.arange(N)[None, :] < steps)
