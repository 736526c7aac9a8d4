"""The Tunix baseline: times one GRPO iteration of Google Tunix's ``GRPOLearner``.

Runs one workload of :mod:`rlalign.bench.settings` (the checkpoint and prompts that
:mod:`rlalign.bench.fixtures` wrote under ``--root``) for ``1 + steps`` global steps, each one
iteration: generate ``rollouts`` completions of exactly ``new_tokens`` tokens with Tunix's
vanilla sampler, score the reference model, score them with the shared reward, then one
loss/backward/Adam update on the whole batch. It writes one JSON result::

  .venvs/tunix/bin/python rlalign/bench/peers/tunix_grpo.py --root=/tmp/rlalign_bench \\
      --setting=medium --out=/tmp/tunix_medium.json [--launch_time=<epoch seconds>] [--steps=N]

Tunix pins ``safetensors<0.8``, so this runs in its own virtualenv
(``rlalign/bench/setup_tunix.sh``); only ``rlalign.bench.settings`` (pure python) is imported
from rlalign.
"""
import time

_T0 = time.time()  # startup is measured from here, unless --launch_time is given

import dataclasses
import functools
import importlib.metadata
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
from rlalign.bench import settings as S  # noqa: E402
from rlalign.bench.peers import common  # noqa: E402

import flax  # noqa: E402
from flax import nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tunix.models.llama3 import model as llama_model  # noqa: E402
from tunix.models.llama3 import params as llama_params  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.grpo import grpo_learner  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402

Role = rl_cluster_lib.Role


class WordTokenizer:
  """The checkpoint's word-level vocabulary (``tokenizer.json``): text and ids map exactly.

  Tunix accepts any object with encode/decode/bos_id/eos_id/pad_id. A Hugging Face tokenizer
  would bring pad id 0, and Tunix treats every token equal to the pad id as padding (masked out
  of attention and of the loss), while to a random model id 0 is an ordinary token it samples.
  So pad and eos here are ids outside the vocabulary, which the sampler can never produce:
  nothing is ever padded (all prompts have ``prompt_len`` tokens, completions never stop), and
  every sampled token is trained on. bos_id is None so the sampler prepends nothing.
  """

  def __init__(self, tokenizer_json: str, vocab_size: int):
    with open(tokenizer_json) as f:
      vocab = json.load(f)["model"]["vocab"]
    self.vocab = {w: int(i) for w, i in vocab.items()}
    self.words = {i: w for w, i in self.vocab.items()}
    if sorted(self.words) != list(range(vocab_size)):
      raise RuntimeError(f"{tokenizer_json} is not a word vocabulary of ids 0..{vocab_size - 1}")
    self.vocab_size = vocab_size

  def encode(self, text, **_):
    return [self.vocab[w] for w in str(text).split()]

  def decode(self, ids, **_):
    return " ".join(self.words[int(i)] for i in ids)

  def bos_id(self):
    return None

  def eos_id(self):
    return self.vocab_size + 1

  def pad_id(self):
    return self.vocab_size


def load_hf_config(model_dir: str, shape: S.ModelShape) -> dict:
  with open(os.path.join(model_dir, "config.json")) as f:
    hf = json.load(f)
  want = {"num_hidden_layers": shape.n_layers, "hidden_size": shape.d_model,
          "num_attention_heads": shape.n_heads, "num_key_value_heads": shape.n_heads,
          "head_dim": shape.head_dim, "intermediate_size": shape.d_ff,
          "vocab_size": shape.vocab_size, "tie_word_embeddings": False, "hidden_act": "silu"}
  got = {k: hf.get(k) for k in want}
  if got != want:
    raise RuntimeError(f"{model_dir}/config.json does not match the settings: {got} vs {want}")
  hf["rope_theta"] = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))
  if (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
    raise RuntimeError("only default RoPE is supported here")
  return hf


def tunix_model_config(hf: dict) -> llama_model.ModelConfig:
  return llama_model.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
      num_kv_heads=hf["num_key_value_heads"], rope_theta=hf["rope_theta"],
      norm_eps=hf["rms_norm_eps"], weight_tying=False,
      remat_config=llama_model.RematConfig.NONE)


def patch_rope_theta(theta: float) -> None:
  """Tunix 0.1.7's Llama attention calls ``apply_rope`` without the config's rope_theta, so
  every Llama runs with the function default (1e6); the checkpoint's theta is set here."""
  llama_model.apply_rope = functools.partial(llama_model.apply_rope, rope_theta=theta)


def reference_logits(model_dir: str, hf: dict, ids: np.ndarray):
  """The checkpoint's logits on one sequence: transformers' Llama where torch is installed,
  else the same forward pass written out in float64 numpy straight from the safetensors."""
  try:
    import torch
    import transformers
    m = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
      out = m(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
    return out, f"transformers {transformers.__version__} LlamaForCausalLM"
  except ImportError:
    pass
  from safetensors.numpy import load_file
  w = {k: v.astype(np.float64) for k, v in
       load_file(os.path.join(model_dir, "model.safetensors")).items()}
  n, hd = len(ids), hf["head_dim"]
  nh, nkv, eps = hf["num_attention_heads"], hf["num_key_value_heads"], hf["rms_norm_eps"]
  inv_freq = 1.0 / hf["rope_theta"] ** (np.arange(0, hd, 2) / hd)
  angles = np.arange(n)[:, None] * inv_freq[None]
  cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

  def rms(x, g):
    return g * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)

  def rope(t):  # [n, heads, hd], HF rotate_half
    rot = np.concatenate([-t[..., hd // 2:], t[..., :hd // 2]], -1)
    return t * cos[:, None] + rot * sin[:, None]

  causal = np.tril(np.ones((n, n), bool))
  x = w["model.embed_tokens.weight"][ids]
  for i in range(hf["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = rms(x, w[p + "input_layernorm.weight"])
    q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd))
    k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd))
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
    k, v = np.repeat(k, nh // nkv, 1), np.repeat(v, nh // nkv, 1)
    s = np.where(causal, np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd), -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    x = x + np.einsum("hqk,khd->qhd", a, v).reshape(n, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
    h = rms(x, w[p + "post_attention_layernorm.weight"])
    g = h @ w[p + "mlp.gate_proj.weight"].T
    x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[
        p + "mlp.down_proj.weight"].T
  x = rms(x, w["model.norm.weight"])
  return x @ w["lm_head.weight"].T, "float64 numpy Llama forward from the safetensors"


def tunix_logits(model, ids: np.ndarray) -> np.ndarray:
  n = len(ids)
  logits, _ = model(jnp.asarray(ids[None], jnp.int32), positions=jnp.arange(n)[None],
                    cache=None, attention_mask=jnp.tril(jnp.ones((1, n, n), jnp.bool_)))
  return np.asarray(logits[0], np.float64)


def main() -> None:
  p = common.parser(__doc__.splitlines()[0])
  a = p.parse_args()
  setting, steps, start = common.resolve(p, a, _T0)
  shape = S.MODELS[setting.model]
  P, G, n_new = setting.prompts_per_step, setting.group_size, setting.new_tokens
  model_dir = os.path.join(a.root, "models", setting.model)
  with open(os.path.join(a.root, "prompts", f"{setting.name}.json")) as f:
    prompts = json.load(f)
  prompt_ids = np.asarray(prompts["ids"], np.int32)
  if prompt_ids.shape[1:] != (setting.prompt_len,) or len(prompt_ids) < (1 + steps) * P:
    raise RuntimeError(f"prompts of {setting.name}: shape {prompt_ids.shape}, need "
                       f"{(1 + steps) * P} rows of {setting.prompt_len} tokens")

  hf = load_hf_config(model_dir, shape)
  tokenizer = WordTokenizer(os.path.join(model_dir, "tokenizer.json"), shape.vocab_size)
  if [tokenizer.encode(t) for t in prompts["text"]] != prompt_ids.tolist():
    raise RuntimeError("the tokenizer does not reproduce the prompt ids of the fixture file")
  patch_rope_theta(hf["rope_theta"])

  # One CPU device; Tunix's Llama shards over ("fsdp", "tp"), both of size 1 here.
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  cfg = tunix_model_config(hf)
  # The reference is a second copy of the same weights (full fine-tuning, no shared backbone).
  actor, reference = (llama_params.create_model_from_safe_tensors(
      model_dir, cfg, mesh=mesh, dtype=jnp.float32) for _ in range(2))

  rollout_config = base_rollout.RolloutConfig(
      max_tokens_to_generate=n_new, max_prompt_length=setting.prompt_len,
      kv_cache_size=setting.prompt_len + n_new,  # the smallest cache that fits
      temperature=setting.temperature, top_p=1.0, top_k=None,
      eos_tokens=[tokenizer.eos_id()],  # out of vocabulary: generation never stops early
      data_type=jnp.float32)
  training_config = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optax.adam(setting.learning_rate),  # constant, no clipping or decay
      max_steps=1 + steps,
      eval_every_n_steps=1 << 30,  # no eval set is passed
      mini_batch_size=P,  # one optimizer update on the whole batch, no accumulation
      checkpoint_root_directory=None,
      metrics_logging_options=None,  # metrics stay in memory
      pbar_description=None)
  cluster = rl_cluster_lib.RLCluster(
      actor=actor, reference=reference, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={Role.ACTOR: mesh, Role.REFERENCE: mesh, Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False,
          training_config=training_config, rollout_config=rollout_config))
  algo_kwargs = dict(
      num_generations=G, num_iterations=1, beta=setting.kl_coef, epsilon=setting.clip_eps,
      # settings.aggregation "sequence": each sequence's token mean, then the mean over sequences.
      loss_agg_mode="sequence-mean-token-mean", loss_algo="grpo",
      # Schulman's k3 estimator exp(ref - logp) - (ref - logp) - 1, as TRL and rlalign use;
      # Tunix's default "kl" is the plain log-ratio logp - ref.
      kl_loss_mode="low_var_kl")
  algo_config = grpo_learner.GRPOConfig(**algo_kwargs)

  def even_token_reward(prompts, completions, **_):
    return [S.even_token_fraction(tokenizer.encode(c)) for c in completions]

  learner = grpo_learner.GRPOLearner(cluster, algo_config, reward_fns=[even_token_reward])

  # A global step (rollout, reference log-probs, reward, advantages, one update, weight sync)
  # runs inside RLLearner._run_global_step and the bookkeeping after it in RLLearner.train; it
  # ends where the next one begins, and the last one where train calls RLCluster.close.
  stamps, first_end_wall, rollouts = [], [], []
  actor_model = cluster.actor_trainer.model

  def stamp():
    jax.block_until_ready(jax.tree.leaves(nnx.state(actor_model)))
    stamps.append(time.perf_counter())
    if len(stamps) == 2:
      first_end_wall.append(time.time())

  def wrap(obj, name, before):
    fn = getattr(obj, name)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      before()
      return fn(*args, **kwargs)
    setattr(obj, name, wrapped)

  wrap(learner, "_run_global_step", stamp)
  wrap(cluster, "close", stamp)
  generate = cluster.generate

  def generate_and_record(*args, **kwargs):
    out = generate(*args, **kwargs)
    rollouts.append((np.asarray(out.left_padded_prompt_tokens),
                     [np.asarray(t) for t in out.tokens]))
    return out
  cluster.generate = generate_and_record

  train_ds = [{"prompts": np.asarray(prompts["text"][i * P:(i + 1) * P])}
              for i in range(len(prompt_ids) // P)]
  learner.train(train_ds)

  durations = np.diff(stamps).tolist()
  if len(durations) != 1 + steps or len(rollouts) != 1 + steps:
    raise RuntimeError(f"expected {1 + steps} steps, got {len(durations)} timed and "
                       f"{len(rollouts)} rollouts")
  lengths = []
  for i, (prompt_tokens, tokens) in enumerate(rollouts):
    if not np.array_equal(prompt_tokens, np.repeat(prompt_ids[i * P:(i + 1) * P], G, 0)):
      raise RuntimeError(f"step {i}: the sampler's prompt tokens are not the file's ids")
    if len(tokens) != P * G or any(((t < 0) | (t >= shape.vocab_size)).any() for t in tokens):
      raise RuntimeError(f"step {i}: {len(tokens)} completions, or ids outside the vocabulary")
    lengths.extend(len(t) for t in tokens)
  length_range = (min(lengths), max(lengths))
  if length_range != (n_new, n_new):
    raise RuntimeError(f"completion lengths {length_range}, expected exactly {n_new}")

  history = cluster._rl_metrics_logger  # pylint: disable=protected-access

  def logged(prefix, name):
    try:
      return [float(v) for v in history.get_metric_history(prefix, name, "train")]
    except ValueError:
      return None
  metrics = {"loss": logged("actor", "loss"), "kl": logged("actor", "kl"),
             "grad_norm": logged("actor", "grad_norm"),
             "reward": logged("rewards", "score/mean"),
             "completion_length": logged("completions", "mean_length")}
  if not metrics["loss"] or not np.isfinite(metrics["loss"]).all():
    raise RuntimeError(f"missing or non-finite loss: {metrics['loss']}")

  # The reference model is never updated, so it still holds the loaded weights.
  check_ids = prompt_ids[0]
  ref, ref_name = reference_logits(model_dir, hf, check_ids)
  got = tunix_logits(cluster.inference_worker.get_model("reference"), check_ids)
  logits_check = {"reference": ref_name, "tokens": len(check_ids),
                  "max_abs_diff": float(np.abs(got - ref).max()),
                  "max_abs_logit": float(np.abs(ref).max())}

  versions = {k: importlib.metadata.version(k) for k in
              ("google-tunix", "jax", "jaxlib", "flax", "optax", "safetensors")}
  result = {
      "framework": "tunix",
      "version": versions["google-tunix"],
      "versions": versions,
      "device": str(jax.devices()[0]),
      "cpu_count": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS"),
      **common.timing_fields(setting, steps, start, first_end_wall[0], durations, lengths, length_range,
                             launched=a.launch_time is not None),
      "metrics": metrics,
      "logits_check": logits_check,
      "settings": dataclasses.asdict(setting),
      "config": {
          "grpo": algo_kwargs,
          "rollout": {"engine": "vanilla", "max_tokens_to_generate": n_new,
                      "max_prompt_length": setting.prompt_len,
                      "kv_cache_size": rollout_config.kv_cache_size,
                      "temperature": setting.temperature, "top_p": 1.0, "top_k": None,
                      "eos_tokens": rollout_config.eos_tokens, "pad_id": tokenizer.pad_id()},
          "training": {"optimizer": f"optax.adam({setting.learning_rate})",
                       "mini_batch_size": P, "train_micro_batch_size": None,
                       "max_steps": 1 + steps, "global_batch_prompts": P},
          "model": {"dtype": "float32", "param_dtype": "float32", "remat": "none",
                    "lora": None, "rope_theta": hf["rope_theta"]},
          "mesh": {"shape": dict(mesh.shape), "axis_types": "Auto"},
      },
      "notes": [
          "step_s spans one RLLearner global step, from the start of one _run_global_step to the "
          "start of the next (the last ends where train calls RLCluster.close), with the "
          "actor's parameters ready at each stamp: rollout, reference log-probs, reward, "
          "advantages, the policy loss/backward/Adam update and Tunix's per-step metric "
          "buffering.",
          "Weights: Tunix's own safetensors loader for llama3 "
          "(create_model_from_safe_tensors) into a Llama3 config of the checkpoint's sizes, "
          "float32; actor and reference are two copies, rollout shares the actor's weights. "
          f"Logits vs {ref_name}: max abs diff {logits_check['max_abs_diff']:.2e}.",
          "Patched: Tunix 0.1.7's Llama attention ignores ModelConfig.rope_theta (apply_rope "
          f"always uses 1e6); apply_rope is given the checkpoint's theta ({hf['rope_theta']:g}).",
          "Tokenizer: the checkpoint's word vocabulary with pad/eos ids outside it, so no "
          "sampled token is masked as padding and sampling never stops early; prompts are the "
          "file's ids exactly (no BOS), checked at every step.",
          "Rollout: Tunix's vanilla sampler (jitted prefill + while_loop decode over a KV cache "
          "of prompt_len + new_tokens), sampling from the full softmax (top_p 1, no top_k), "
          "with Tunix's default seed (PRNGKey(0) on every call).",
          "One generation per update: Tunix skips the old-policy pass and takes the ratio "
          "against detached current log-probs. The loss also computes token entropy and "
          "diagnostics each step, and the trainer the gradient norm, for its logs.",
      ],
  }
  common.write_json(a.out, result)
  print(f"tunix {versions['google-tunix']} {setting.name}: startup {result['startup_s']:.2f}s, "
        f"first step {result['first_step_s']:.3f}s, median step {result['median_step_s']:.3f}s "
        f"over {steps} steps, completion length {result['completion_length_mean']:g}, "
        f"logits max abs diff {logits_check['max_abs_diff']:.1e} -> {a.out}")


if __name__ == "__main__":
  main()
