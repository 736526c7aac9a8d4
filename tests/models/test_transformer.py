"""Tests for rlalign.models.transformer against a plain-numpy reference forward."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.models import transformer as tfm

CFG = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=8, d_ff=64)
# Every optional param present; one compiled init serves every config and seed below.
_FULL_CFG = dataclasses.replace(CFG, tie_embeddings=False, heads=("lm", "scalar"))
_INIT = jax.jit(tfm.init, static_argnums=0)
# The backbone does not depend on the heads, so one compiled forward per input shape.
_FORWARD_WITH_CACHE = jax.jit(lambda params, tokens, positions, mask: tfm.forward(
    params, tokens, positions, mask, CFG))
_FORWARD = lambda *args: _FORWARD_WITH_CACHE(*args)[0]


def _params(cfg, seed=0):
  """Random params from ``tfm.init`` with the 'ones' norm weights perturbed so they matter."""
  # An "rbg" key only because it compiles much faster than threefry on CPU.
  full = _INIT(_FULL_CFG, jax.random.key(seed, impl="rbg"))
  params = {k: full[k] for k in tfm.param_specs(cfg)}
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(lambda: tfm.init(cfg, jax.random.PRNGKey(seed))))
  rng = np.random.default_rng(seed + 100)
  params["final_norm"] = jnp.asarray(1.0 + 0.3 * rng.standard_normal(cfg.d_model), jnp.float32)
  for name in ("attn_norm", "mlp_norm"):
    params["layers"][name] = jnp.asarray(
        1.0 + 0.3 * rng.standard_normal((cfg.n_layers, cfg.d_model)), jnp.float32)
  if "scalar" in cfg.heads:
    params["scalar_head"]["b"] = jnp.asarray(0.37, jnp.float32)
  return params


# ---------------------------------------------------------------- numpy reference


def np_rms_norm(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_rope(x, pos, theta):
  """x [T, hd] at integer positions [T]: rotate (x_i, x_{i+hd/2}) by pos * theta^(-2i/hd)."""
  hd = x.shape[-1]
  half = hd // 2
  out = np.empty_like(x)
  for t in range(x.shape[0]):
    for i in range(half):
      angle = pos[t] * theta ** (-2.0 * i / hd)
      c, s = np.cos(angle), np.sin(angle)
      a, b = x[t, i], x[t, i + half]
      out[t, i] = a * c - b * s
      out[t, i + half] = b * c + a * s
  return out


def np_silu(x):
  return x / (1.0 + np.exp(-x))


def np_forward(params, tokens, mask, cfg):
  """One row at a time: tokens [T], mask [T] (left padding) -> final-normed hidden [T, d].

  Only rows with mask True are meaningful; padded queries are returned as zeros.
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  H, K, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  group = H // K
  T = len(tokens)
  real = np.nonzero(mask)[0]
  pos = np.zeros(T, np.int64)
  pos[real] = np.arange(len(real))  # 0 at the first real token
  x = p["embed"][np.asarray(tokens)]
  for layer in range(cfg.n_layers):
    lp = {k: v[layer] for k, v in p["layers"].items()}
    h = np_rms_norm(x, lp["attn_norm"], cfg.norm_eps)
    attn_out = np.zeros((T, H, hd))
    for head in range(H):
      kv = head // group  # query heads [kv*group, (kv+1)*group) share kv head kv
      q = np_rope(h @ lp["q"][:, head, :], pos, cfg.rope_theta)
      k = np_rope(h @ lp["k"][:, kv, :], pos, cfg.rope_theta)
      v = h @ lp["v"][:, kv, :]
      for t in real:
        keys = [s for s in range(t + 1) if mask[s]]
        scores = np.array([q[t] @ k[s] for s in keys]) / np.sqrt(hd)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        attn_out[t, head] = sum(wi * v[s] for wi, s in zip(w, keys))
    o = np.zeros((T, cfg.d_model))
    for head in range(H):
      o += attn_out[:, head, :] @ lp["o"][head]
    x = x + o
    h = np_rms_norm(x, lp["mlp_norm"], cfg.norm_eps)
    x = x + (np_silu(h @ lp["gate"]) * (h @ lp["up"])) @ lp["down"]
  out = np_rms_norm(x, p["final_norm"], cfg.norm_eps)
  out[~np.asarray(mask, bool)] = 0.0
  return out


def np_logits(params, hidden, cfg):
  if cfg.tie_embeddings:
    w = np.asarray(params["embed"], np.float64).T
  else:
    w = np.asarray(params["lm_head"], np.float64)
  return hidden @ w


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _padded_batch():
  tokens = np.array([[0, 0, 0, 5, 9, 3, 7],
                     [4, 8, 1, 15, 2, 6, 11],
                     [0, 0, 0, 0, 0, 12, 3]], np.int32)
  mask = tokens != 0
  mask[1] = True  # row 1 has no padding
  return tokens, mask


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("tie", [True, False])
def test_forward_matches_numpy_reference(tie):
  cfg = dataclasses.replace(CFG, tie_embeddings=tie)
  params = _params(cfg)
  assert ("lm_head" in params) == (not tie)
  tokens, mask = _padded_batch()
  positions = tfm.positions_from_mask(jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(positions),
                                [[0, 0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6],
                                 [0, 0, 0, 0, 0, 0, 1]])
  hidden, cache = _FORWARD_WITH_CACHE(params, jnp.asarray(tokens), positions, jnp.asarray(mask))
  assert cache is None
  logits = tfm.lm_logits(params, hidden, cfg)
  chex.assert_shape(hidden, (3, 7, cfg.d_model))
  chex.assert_shape(logits, (3, 7, cfg.vocab_size))
  chex.assert_type(logits, jnp.float32)
  for b in range(3):
    ref_h = np_forward(params, tokens[b], mask[b], cfg)
    ref_logits = np_logits(params, ref_h, cfg)
    m = mask[b]
    np.testing.assert_allclose(np.asarray(hidden[b])[m], ref_h[m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits[b])[m], ref_logits[m], rtol=1e-5, atol=1e-5)


def test_reference_is_sensitive_to_rotary_and_gqa_layout():
  """Guards the reference itself: swapping the kv-head mapping changes the output."""
  params = _params(CFG)
  tokens, mask = _padded_batch()
  ref = np_forward(params, tokens[1], mask[1], CFG)
  swapped = jax.tree.map(lambda a: a, params)
  swapped["layers"] = dict(params["layers"])
  swapped["layers"]["k"] = params["layers"]["k"][:, :, ::-1]
  swapped["layers"]["v"] = params["layers"]["v"][:, :, ::-1]
  assert np.max(np.abs(np_forward(swapped, tokens[1], mask[1], CFG) - ref)) > 1e-3


def _prefill_then_decode(params, cache, tokens, positions, mask, cfg, P):
  """Hidden states of a P-token prefill, then one decode call per remaining token."""
  # The key mask covers every slot; causality by slot order hides the not-yet-written ones.
  step_fn = jax.jit(lambda c, tok, pos, i: tfm.forward(params, tok, pos, mask, cfg, cache=c,
                                                       cache_index=i))
  h, cache = step_fn(cache, tokens[:, :P], positions[:, :P], 0)
  out = [h]
  for i in range(P, tokens.shape[1]):
    h, cache = step_fn(cache, tokens[:, i:i + 1], positions[:, i:i + 1], jnp.int32(i))
    out.append(h)
  return jnp.concatenate(out, axis=1), cache


def test_kv_cache_prefill_then_decode_matches_full_forward():
  params = _params(CFG, seed=1)
  tokens, mask = _padded_batch()
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  B, T = tokens.shape
  P = 4
  positions = tfm.positions_from_mask(mask)
  full = _FORWARD(params, tokens, positions, mask)

  cache = tfm.init_cache(CFG, B, T)
  chex.assert_shape(cache.k, (CFG.n_layers, B, CFG.n_kv_heads, T, CFG.head_dim))
  cached, _ = _prefill_then_decode(params, cache, tokens, positions, mask, CFG, P)
  m = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(cached)[m], np.asarray(full)[m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fuse", [False, True])
def test_unstacked_layers_decode_like_the_stacked_scan(fuse):
  """The sampler's path (unstacked, fused qkv and gate/up, per-layer caches) against the
  stacked scan with a stacked cache, for prefill and decode; q/k/v biases and q/k norms on, so
  the fused projection must split and route them exactly."""
  cfg = dataclasses.replace(CFG, qkv_bias=True, qk_norm=True)
  params = _INIT(cfg, jax.random.key(3, impl="rbg"))
  rng = np.random.default_rng(3)
  for name in ("q_bias", "k_bias", "v_bias"):
    params["layers"][name] = jnp.asarray(
        0.3 * rng.standard_normal(params["layers"][name].shape), jnp.float32)
  tokens, mask = (jnp.asarray(x) for x in _padded_batch())
  B, T = tokens.shape
  P = 4
  positions = tfm.positions_from_mask(mask)
  unstacked = tfm.unstack_layers(params, fuse=fuse)
  assert isinstance(unstacked["layers"], tuple) and len(unstacked["layers"]) == cfg.n_layers
  assert ("qkv" in unstacked["layers"][0]) == fuse

  run = lambda p, cache: _prefill_then_decode(p, cache, tokens, positions, mask, cfg, P)
  stacked_h, stacked_cache = run(params, tfm.init_cache(cfg, B, T))
  flat_h, flat_cache = run(unstacked, tfm.unstack_cache(tfm.init_cache(cfg, B, T)))
  m = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(flat_h)[m], np.asarray(stacked_h)[m], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.stack(flat_cache.k), np.asarray(stacked_cache.k), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.stack(flat_cache.v), np.asarray(stacked_cache.v), rtol=1e-5,
                             atol=1e-5)
  # No cache: the unstacked loop is also a plain forward.
  np.testing.assert_allclose(
      np.asarray(tfm.forward(unstacked, tokens, positions, mask, cfg)[0])[m],
      np.asarray(tfm.forward(params, tokens, positions, mask, cfg)[0])[m], rtol=1e-5, atol=1e-5)


def test_logical_axes_match_params():
  for cfg in (CFG, _FULL_CFG):
    params = jax.eval_shape(lambda: tfm.init(cfg, jax.random.PRNGKey(0)))
    axes = tfm.logical_axes(cfg)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    assert (jax.tree.structure(axes, is_leaf=is_axes)
            == jax.tree.structure(params))
    flat_axes = jax.tree.leaves(axes, is_leaf=is_axes)
    flat_params = jax.tree.leaves(params)
    assert len(flat_axes) == len(flat_params)
    for a, p in zip(flat_axes, flat_params):
      assert len(a) == p.ndim, (a, p.shape)
    abstract = tfm.abstract_params(cfg)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
        lambda a: (a.shape, a.dtype), params)
  assert tfm.logical_axes(CFG)["layers"]["q"] == ("layers", "embed", "q_heads", "head_dim")
  assert tfm.logical_axes(CFG)["embed"] == ("vocab", "embed")


def test_param_shapes_and_count():
  params = _params(CFG)
  chex.assert_shape(params["layers"]["q"], (2, 32, 4, 8))
  chex.assert_shape(params["layers"]["k"], (2, 32, 2, 8))
  chex.assert_shape(params["layers"]["o"], (2, 4, 8, 32))
  assert "lm_head" not in params and "scalar_head" not in params
  L, d, H, K, hd, F, V = 2, 32, 4, 2, 8, 64, 16
  expected = V * d + L * (2 * d + d * H * hd + 2 * d * K * hd + H * hd * d + 3 * d * F) + d
  assert tfm.count_params(params) == expected


def test_token_logprobs_equals_gathered_log_softmax():
  params = _params(CFG, seed=2)
  tokens, mask = _padded_batch()
  token_logprobs = jax.jit(tfm.token_logprobs, static_argnums=3,
                           static_argnames="with_entropy")
  logp, entropy = token_logprobs(params, jnp.asarray(tokens), jnp.asarray(mask), CFG,
                                 with_entropy=True)
  chex.assert_shape(logp, (3, 6))
  chex.assert_shape(entropy, (3, 6))
  for b in range(3):
    ref_lsm = np_log_softmax(np_logits(params, np_forward(params, tokens[b], mask[b], CFG), CFG))
    for t in range(6):
      if not mask[b, t]:
        continue  # the prediction from a pad position is meaningless
      np.testing.assert_allclose(float(logp[b, t]), ref_lsm[t, tokens[b, t + 1]], atol=1e-5)
      ref_ent = -np.sum(np.exp(ref_lsm[t]) * ref_lsm[t])
      np.testing.assert_allclose(float(entropy[b, t]), ref_ent, atol=1e-5)
  only = token_logprobs(params, jnp.asarray(tokens), jnp.asarray(mask), CFG)
  np.testing.assert_allclose(np.asarray(only), np.asarray(logp), atol=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_heads=3, n_kv_heads=2), "model.n_heads"),
    (dict(head_dim=7), "model.head_dim"),
    (dict(d_model=0), "model.d_model"),
    (dict(vocab_size=-1), "model.vocab_size"),
    (dict(heads=("lm", "policy")), "model.heads"),
    (dict(heads=()), "model.heads"),
    (dict(dtype="float16"), "model.dtype"),
    (dict(param_dtype="int8"), "model.param_dtype"),
])
def test_model_config_validate_names_field(kwargs, field):
  with pytest.raises(ValueError) as e:
    dataclasses.replace(CFG, **kwargs).validate()
  assert str(e.value).startswith(field), str(e.value)


def test_model_config_validate_prefix_and_valid():
  CFG.validate()
  tfm.ModelConfig().validate()
  with pytest.raises(ValueError) as e:
    dataclasses.replace(CFG, n_heads=6, n_kv_heads=4).validate("reward_model")
  assert "reward_model.n_heads (6)" in str(e.value)
  assert "reward_model.n_kv_heads (4)" in str(e.value)


def test_scalar_head_shape_and_value():
  cfg = dataclasses.replace(CFG, heads=("scalar",))
  params = _params(cfg, seed=3)
  assert "scalar_head" in params
  tokens, mask = _padded_batch()
  hidden = _FORWARD(params, jnp.asarray(tokens), tfm.positions_from_mask(jnp.asarray(mask)),
                    jnp.asarray(mask))
  values = tfm.scalar_output(params, hidden)
  chex.assert_shape(values, (3, 7))
  chex.assert_type(values, jnp.float32)
  w = np.asarray(params["scalar_head"]["w"], np.float64)
  for b in range(3):
    ref = np_forward(params, tokens[b], mask[b], cfg) @ w + 0.37
    np.testing.assert_allclose(np.asarray(values[b])[mask[b]], ref[mask[b]], atol=1e-5)
  chex.assert_shape(tfm.scalar_output(params, hidden[:, -1]), (3,))


def test_left_padding_does_not_change_real_token_logits():
  params = _params(CFG, seed=4)
  row = np.array([5, 9, 3, 7, 1], np.int32)
  padded = np.concatenate([np.zeros(3, np.int32), row])[None]
  padded_mask = padded != 0
  # Give a pad slot a non-pad id too: masked keys must not matter whatever they hold.
  padded_junk = padded.copy()
  padded_junk[0, 1] = 13

  def logits(tokens, mask):
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    h = _FORWARD(params, tokens, tfm.positions_from_mask(mask), mask)
    return np.asarray(tfm.lm_logits(params, h, CFG))

  plain = logits(row[None], np.ones((1, 5), bool))[0]
  np.testing.assert_allclose(logits(padded, padded_mask)[0, 3:], plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits(padded_junk, padded_mask)[0, 3:], plain, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_attention_gradients_match_autodiff_of_plain_softmax(softcap):
  """The custom (FlashAttention-style) backward against jax.grad of the textbook formula, with
  grouped heads, random masks and one query row whose keys are all masked (a pad)."""
  cfg = dataclasses.replace(CFG, attn_softcap=softcap)
  rng = np.random.default_rng(0)
  B, T, S, H, K, hd = 2, 5, 7, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  q = jnp.asarray(rng.standard_normal((B, T, H, hd)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((B, K, S, hd)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((B, K, S, hd)), jnp.float32)
  mask = jnp.asarray(rng.random((B, T, S)) > 0.3).at[0, 0].set(False)
  w = jnp.asarray(rng.standard_normal((B, T, H, hd)), jnp.float32)

  def plain(q, k, v):
    qg = q.reshape(B, T, K, H // K, hd)
    s = jnp.einsum("btkgd,bksd->bkgts", qg, k) / np.sqrt(hd)
    if softcap:
      s = softcap * jnp.tanh(s / softcap)
    s = jnp.where(mask[:, None, None], s, jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bkgts,bksd->btkgd", jax.nn.softmax(s, axis=-1), v)
    return out.reshape(B, T, H, hd)

  ours = lambda q, k, v: tfm._attention(q, k, v, mask, cfg)
  np.testing.assert_allclose(ours(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
  got = jax.grad(loss(ours), (0, 1, 2))(q, k, v)
  want = jax.grad(loss(plain), (0, 1, 2))(q, k, v)
  for name, a, b in zip("qkv", got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")
