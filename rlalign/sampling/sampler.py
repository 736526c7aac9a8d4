"""In-graph sampling: prefill plus a ``lax.while_loop`` decode over a KV cache.

Prompts are left-padded to one length P, so every row's next token lands in the same cache
slot and the decode step is a single [B, 1] forward. The loop stops as soon as every row has
emitted a stop token, so short answers cost short loops, with shapes still static.

A multi-turn rollout keeps its cache between turns (``Conversation``: ``start``, ``reply``,
``say``): the prompt, the model's attempt and the feedback after it are each read once.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

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
  P = prompt_tokens.shape[1]
  conversation = start(params, prompt_tokens, prompt_mask, model_cfg, P + cfg.max_new_tokens)
  return reply(conversation, rng, model_cfg, cfg, pad_id, on_token=on_token)[1]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("params", "cache", "tokens", "key_mask", "position", "logits"),
                   meta_fields=("cursor",))
@dataclasses.dataclass(frozen=True)
class Conversation:
  """A batch of dialogues mid-way, in one KV cache of static size: what carries a multi-turn
  rollout (attempt, feedback, attempt: RISE) from one turn to the next without re-reading
  its history. Each turn fills a fixed range of slots; the slots a row left empty (its pads
  after a stop, a turn it sat out) are masked, and positions count only the real tokens, so
  attention sees exactly the left-packed history (``history``), as training reads it.

  Built by :func:`start`; :func:`reply` samples the model's turn, :func:`say` appends fixed
  text (feedback), :func:`repeat` tiles each row (best-of-N continuations of one history)
  and :func:`take` picks rows. A pytree whose cursor is static.
  """
  params: tfm.Params      # unstacked for decode (tfm.unstack_layers)
  cache: tfm.KVCache      # per-layer arrays
  tokens: jax.Array       # [B, S] every slot's token (pad where empty)
  key_mask: jax.Array     # [B, S] the slots holding a real token of the row's history
  position: jax.Array     # [B] the rotary position of each row's next token
  logits: Optional[jax.Array]  # [B, V] the next token's, None right after a reply
  cursor: int             # the first unwritten slot

  @property
  def slots(self) -> int:
    return self.tokens.shape[1]

  def history(self) -> Tuple[jax.Array, jax.Array]:
    """Each row's tokens so far and their mask [B, cursor], left-packed (pads first): the
    prompt a training step reads for the next turn."""
    tokens, mask = self.tokens[:, :self.cursor], self.key_mask[:, :self.cursor]
    order = jnp.argsort(mask, axis=1, stable=True)
    return (jnp.take_along_axis(tokens, order, axis=1),
            jnp.take_along_axis(mask, order, axis=1))


def start(params: tfm.Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
          model_cfg: tfm.ModelConfig, slots: int, pad_id: int = 0) -> Conversation:
  """Prefills left-padded prompts [B, P] into a cache of ``slots`` slots."""
  B, P = prompt_tokens.shape
  if slots < P:
    raise ValueError(f"a conversation of {slots} slots cannot hold prompts of {P} tokens")
  prompt_mask = prompt_mask.astype(bool)
  key_mask = jnp.zeros((B, slots), bool).at[:, :P].set(prompt_mask)
  tokens = jnp.full((B, slots), pad_id, jnp.int32).at[:, :P].set(prompt_tokens)
  positions = tfm.positions_from_mask(prompt_mask)
  # The prefill scans the stacked layers: one layer's activations live at a time, and its
  # compile does not grow with depth. The decode then runs the layers unstacked (see
  # tfm.unstack_layers), each with its own cache arrays.
  cache = tfm.init_cache(model_cfg, B, slots)
  hidden, cache = tfm.forward(params, prompt_tokens, positions, key_mask, model_cfg,
                              cache=cache, cache_index=0)
  # With left padding the last prompt slot is always a real token.
  logits = tfm.lm_logits(params, hidden[:, -1], model_cfg)
  return Conversation(tfm.unstack_layers(params), tfm.unstack_cache(cache), tokens, key_mask,
                      positions[:, -1] + 1, logits, P)


def reply(conversation: Conversation, rng: jax.Array, model_cfg: tfm.ModelConfig,
          cfg: SamplingConfig, pad_id: int = 0, active: Optional[jax.Array] = None,
          on_token: Optional[Callable[[np.ndarray, np.ndarray], None]] = None
          ) -> Tuple[Conversation, Samples]:
  """The model's turn: up to ``cfg.max_new_tokens`` sampled tokens per row, in the next
  slots; rows not ``active`` [B] sit it out (all pad, masked). The loop stops as soon as
  every row has emitted a stop token."""
  c0 = conversation
  if c0.logits is None:
    raise ValueError("reply right after a reply: say something (sampler.say) in between")
  B, N, P = c0.tokens.shape[0], cfg.max_new_tokens, c0.cursor
  if P + N > c0.slots:
    raise ValueError(f"a reply of {N} tokens from slot {P} overflows the conversation's "
                     f"{c0.slots} slots")
  stop = jnp.asarray(cfg.stop_tokens or (-1,), jnp.int32)
  params = c0.params

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

  done = jnp.zeros((B,), bool) if active is None else ~active.astype(bool)
  init = Carry(t=jnp.int32(0), cache=c0.cache, key_mask=c0.key_mask, logits=c0.logits,
               position=c0.position, done=done,
               tokens=jnp.full((B, N), pad_id, jnp.int32),
               logprobs=jnp.zeros((B, N), jnp.float32))
  final = jax.lax.while_loop(cond, body, init)
  mask = generated_mask(final.tokens, stop, final.t)
  if active is not None:
    mask = mask & active.astype(bool)[:, None]
  samples = Samples(final.tokens, final.logprobs, mask, mask.sum(-1).astype(jnp.int32))
  # The loop marked every slot it wrote; the history keeps only each row's real tokens.
  after = Conversation(params, final.cache, c0.tokens.at[:, P:P + N].set(final.tokens),
                       c0.key_mask.at[:, P:P + N].set(mask), c0.position + samples.lengths,
                       None, P + N)
  return after, samples


def say(conversation: Conversation, tokens, model_cfg: tfm.ModelConfig,
        active: Optional[jax.Array] = None, mask: Optional[jax.Array] = None
        ) -> Conversation:
  """Appends text in one forward pass: the same ids [L] for every row (feedback), or each
  row's own [B, L] with ``mask`` [B, L] (its prompt again, left-padded: a row's last slot
  must be a real token). Rows not ``active`` [B] keep their slots masked."""
  c0 = conversation
  B = c0.tokens.shape[0]
  ids = jnp.asarray(tokens, jnp.int32)
  ids = jnp.broadcast_to(ids, (B,) + ids.shape) if ids.ndim == 1 else ids
  L = ids.shape[1]
  if not L:
    raise ValueError("say needs at least one token")
  if c0.cursor + L > c0.slots:
    raise ValueError(f"{L} tokens from slot {c0.cursor} overflow the conversation's "
                     f"{c0.slots} slots")
  real = jnp.ones((B,), bool) if active is None else active.astype(bool)
  real = jnp.broadcast_to(real[:, None], (B, L))
  if mask is not None:
    real = real & mask.astype(bool)
  key_mask = c0.key_mask.at[:, c0.cursor:c0.cursor + L].set(real)
  positions = c0.position[:, None] + jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)
  hidden, cache = tfm.forward(c0.params, ids, positions, key_mask, model_cfg, cache=c0.cache,
                              cache_index=c0.cursor)
  logits = tfm.lm_logits(c0.params, hidden[:, -1], model_cfg)
  return Conversation(c0.params, cache, c0.tokens.at[:, c0.cursor:c0.cursor + L].set(ids),
                      key_mask, c0.position + real.sum(axis=1), logits, c0.cursor + L)


def _rows(conversation: Conversation, fn) -> Conversation:
  c = conversation
  return dataclasses.replace(
      c, cache=jax.tree.map(fn, c.cache), tokens=fn(c.tokens), key_mask=fn(c.key_mask),
      position=fn(c.position), logits=None if c.logits is None else fn(c.logits))


def repeat(conversation: Conversation, n: int) -> Conversation:
  """Each row ``n`` times in a row ([B] -> [B * n]): ``n`` continuations of one history
  share its prefill."""
  return _rows(conversation, lambda x: jnp.repeat(x, n, axis=0))


def take(conversation: Conversation, rows: jax.Array) -> Conversation:
  """The rows ``rows`` [B'] of the batch, in that order."""
  return _rows(conversation, lambda x: jnp.take(x, rows, axis=0))


def generated_mask(tokens: jax.Array, stop: jax.Array, steps: jax.Array) -> jax.Array:
  """True up to and including each row's first stop token, within the steps taken."""
  N = tokens.shape[1]
  is_stop = jnp.isin(tokens, stop)
  stops_before = jnp.cumsum(is_stop, axis=1) - is_stop
  return (stops_before == 0) & (jnp.arange(N)[None, :] < steps)
