"""Tests for rlalign.models.lora: selection, axes, merge/unmerge and training adapters only."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm

CFG = tfm.ModelConfig(vocab_size=16, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                      head_dim=8, d_ff=32, tie_embeddings=False)
AXES = tfm.logical_axes(CFG)
LORA = lora_lib.LoRAConfig(rank=4, alpha=8.0, target_regex=r"layers/(q|o|gate|down)|lm_head")


# "rbg" keys and one compiled init only because that is much faster than eager threefry on CPU.
_INIT = jax.jit(tfm.init, static_argnums=0)


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _params(seed=0):
  return _INIT(CFG, _key(seed))


# Compiled once per LoRA config: op-by-op dispatch would compile every small op instead.
_MERGE = jax.jit(lora_lib.merge, static_argnums=2)
_UNMERGE = jax.jit(lora_lib.unmerge, static_argnums=2)


@functools.lru_cache(maxsize=None)
def _jitted_init(cfg):
  return jax.jit(lambda params, key: lora_lib.init_lora(params, cfg, key, AXES))


def _init_lora(params, cfg=LORA, seed=0):
  return _jitted_init(cfg)(params, _key(seed))


def _random_b(lora, seed=1):
  """Adapters with B non-zero too, so merging actually changes the weights."""
  leaves, treedef = jax.tree.flatten(lora)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [jnp.asarray(rng.standard_normal(x.shape), x.dtype)
                                      for x in leaves])


def test_regex_selects_paths_and_axes_follow_the_rule():
  lora = _init_lora(_params())
  assert sorted(lora["layers"]) == ["down", "gate", "o", "q"] and "lm_head" in lora
  L, d, H, hd, F, V, r = 2, 16, 2, 8, 32, 16, 4
  shapes = jax.tree.map(jnp.shape, lora)
  assert shapes["layers"]["q"] == {"a": (L, d, r), "b": (L, r, H, hd)}
  assert shapes["layers"]["o"] == {"a": (L, H, hd, r), "b": (L, r, d)}
  assert shapes["layers"]["down"] == {"a": (L, F, r), "b": (L, r, d)}
  assert shapes["lm_head"] == {"a": (d, r), "b": (r, V)}
  axes = lora_lib.lora_logical_axes(AXES, LORA)
  assert axes["layers"]["q"] == {"a": ("layers", "embed", "lora_rank"),
                                 "b": ("layers", "lora_rank", "q_heads", "head_dim")}
  assert axes["layers"]["o"] == {"a": ("layers", "q_heads", "head_dim", "lora_rank"),
                                 "b": ("layers", "lora_rank", "embed")}
  assert axes["lm_head"] == {"a": ("embed", "lora_rank"), "b": ("lora_rank", "vocab")}
  is_axes = lambda x: isinstance(x, tuple)
  assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(lora)
  # B starts at zero, so a fresh adapter leaves the model unchanged; A is random.
  assert all(not np.any(b) for b in jax.tree.leaves(jax.tree.map(
      lambda t: t["b"], lora, is_leaf=lambda t: "b" in t)))
  assert np.std(np.asarray(lora["layers"]["q"]["a"])) > 0.1
  # The regex must match a whole path: "layers/q" does not select "layers/q_extra" etc.
  only_q = dataclasses.replace(LORA, target_regex="layers/q")
  assert list(lora_lib.lora_logical_axes(AXES, only_q)["layers"]) == ["q"]


def test_regex_matching_nothing_names_the_regex():
  cfg = dataclasses.replace(LORA, target_regex=r"layers/(query|value)")
  with pytest.raises(ValueError, match=r"'layers/\(query\|value\)' matches no parameter"):
    lora_lib.init_lora(_params(), cfg, _key(0), AXES)


@pytest.mark.parametrize("regex,path", [(r"layers/.*", "layers/attn_norm"),
                                        ("final_norm", "final_norm")])
def test_matching_a_norm_names_the_path(regex, path):
  cfg = dataclasses.replace(LORA, target_regex=regex)
  with pytest.raises(ValueError, match=f"LoRA target '{path}'.*not a linear map"):
    lora_lib.lora_logical_axes(AXES, cfg)
  scalar = tfm.logical_axes(dataclasses.replace(CFG, heads=("lm", "scalar")))
  with pytest.raises(ValueError, match="'scalar_head/w'"):
    lora_lib.lora_logical_axes(scalar, dataclasses.replace(LORA, target_regex="scalar_head/w"))


def test_bad_config_values():
  for bad, match in (({"rank": 0}, "rank"), ({"alpha": 0.0}, "alpha"),
                     ({"target_regex": "layers/(q"}, "not a valid regex")):
    with pytest.raises(ValueError, match=match):
      lora_lib.lora_logical_axes(AXES, dataclasses.replace(LORA, **bad))


def test_merge_unmerge_round_trip_keeps_structure_and_dtypes():
  params = _params()
  lora = _random_b(_init_lora(params))
  merged = _MERGE(params, lora, LORA)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), merged) == jax.tree.map(
      lambda x: (x.shape, x.dtype), params)
  assert not np.allclose(merged["layers"]["q"], params["layers"]["q"])
  np.testing.assert_array_equal(merged["layers"]["k"], params["layers"]["k"])  # not targeted
  restored = _UNMERGE(merged, lora, LORA)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=0),
               restored, params)
  # bfloat16 weights stay bfloat16 (adapters are float32).
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(_MERGE(bf16, lora, LORA)))


def test_merged_weights_equal_hand_computed_low_rank_update():
  params = _params()
  lora = _random_b(_init_lora(params))
  merged = _MERGE(params, lora, LORA)
  s = LORA.alpha / LORA.rank
  # A float64 numpy reference: x @ (W + s A B) == x @ W + s (x @ A) @ B, per stacked layer.
  p, m, lo = jax.tree.map(lambda t: np.asarray(t, np.float64), (params, merged, lora))
  x = np.random.default_rng(2).standard_normal((5, CFG.d_model))
  h = x.reshape(5, CFG.n_heads, CFG.head_dim)
  for layer in range(CFG.n_layers):
    # q: embed -> (q_heads, head_dim).
    a, b = lo["layers"]["q"]["a"][layer], lo["layers"]["q"]["b"][layer]
    np.testing.assert_allclose(
        np.einsum("td,dhk->thk", x, m["layers"]["q"][layer]),
        np.einsum("td,dhk->thk", x, p["layers"]["q"][layer])
        + s * np.einsum("tr,rhk->thk", x @ a, b), atol=1e-5, rtol=1e-5)
    # o: (q_heads, head_dim) -> embed.
    a, b = lo["layers"]["o"]["a"][layer], lo["layers"]["o"]["b"][layer]
    np.testing.assert_allclose(
        np.einsum("thk,hkd->td", h, m["layers"]["o"][layer]),
        np.einsum("thk,hkd->td", h, p["layers"]["o"][layer])
        + s * np.einsum("thk,hkr->tr", h, a) @ b, atol=1e-5, rtol=1e-5)
  # Through the model: lm_head sits after the backbone, so the hidden states are unchanged
  # by adapting only it, and the logits gain exactly s (h @ A) @ B.
  head_only = dataclasses.replace(LORA, target_regex="lm_head")
  lora = _random_b(_init_lora(params, head_only))
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % CFG.vocab_size
  mask = jnp.ones_like(tokens, bool)
  hidden, _ = jax.jit(tfm.forward, static_argnums=4)(params, tokens,
                                                    tfm.positions_from_mask(mask), mask, CFG)
  logits = tfm.lm_logits(_MERGE(params, lora, head_only), hidden, CFG)
  hidden = np.asarray(hidden, np.float64)
  w, a, b = (np.asarray(t, np.float64) for t in (params["lm_head"], *lora["lm_head"].values()))
  np.testing.assert_allclose(logits, hidden @ w + s * (hidden @ a) @ b, atol=1e-4, rtol=1e-4)


def _loss(lora, params, tokens, target):
  """MSE of the logits of the merged model; differentiated wrt `lora` (argument 0) only."""
  mask = jnp.ones_like(tokens, bool)
  merged = lora_lib.merge(params, lora, LORA)
  hidden, _ = tfm.forward(merged, tokens, tfm.positions_from_mask(mask), mask, CFG)
  return jnp.mean((tfm.lm_logits(merged, hidden, CFG) - target) ** 2)


def test_gradients_and_training_touch_only_the_adapters():
  params = _params()
  lora = _init_lora(params, seed=3)
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 6)), jnp.int32)
  target = jnp.asarray(rng.standard_normal((2, 6, CFG.vocab_size)), jnp.float32)
  opt = optax.adam(1e-2)

  @jax.jit
  def step(lora, opt_state, params):
    value, grads = jax.value_and_grad(_loss)(lora, params, tokens, target)
    updates, opt_state = opt.update(grads, opt_state, lora)
    return optax.apply_updates(lora, updates), opt_state, value, grads

  params_before = jax.tree.map(np.array, params)
  trained, opt_state, first, grads = step(lora, opt.init(lora), params)
  # At init B = 0, so dL/dA = s dL/dW B^T = 0 while dL/dB = s A^T dL/dW != 0.
  for path, g in lora_lib.flatten_paths(grads).items():
    if path.endswith("/a"):
      np.testing.assert_array_equal(g, 0.0, err_msg=path)
    else:
      assert np.abs(np.asarray(g)).max() > 1e-6, path
  for _ in range(5):
    trained, opt_state, value, _ = step(trained, opt_state, params)
  assert float(value) < float(first)
  # Base params are untouched; both adapter factors moved.
  jax.tree.map(np.testing.assert_array_equal, params, params_before)
  before = lora_lib.flatten_paths(lora)
  for path, after in lora_lib.flatten_paths(trained).items():
    assert not np.allclose(before[path], after), path
  # The merged model differs from the base model exactly at the adapted weights.
  merged = lora_lib.flatten_paths(_MERGE(params, trained, LORA))
  changed = {path for path, w in lora_lib.flatten_paths(params).items()
             if not np.array_equal(merged[path], w)}
  assert changed == {"layers/q", "layers/o", "layers/gate", "layers/down", "lm_head"}
