"""One checkpoint on one dataset split, under the judges the command names.

  python -m rlalign.eval --run=/tmp/run --judges=exact_match,answer_digits,exact_match_text \\
      --samples=8 --out=/tmp/run/eval
  python -m rlalign.eval --run=/tmp/run --phase=warm_start --step=200 --out=/tmp/eval_ws
  python -m rlalign.eval --run=/tmp/run --hf_dir=/tmp/run/hf --out=/tmp/eval_hf
  python -m rlalign.eval --config=configs/grpo_hf.py:/ckpt,/d/train.jsonl,/d/test.jsonl \\
      --hf_dir=/ckpt --judges=math_answer --out=/tmp/eval_base

Where things come from. The experiment config is the run's stored ``<run>/config.json``, or
a config file (``--config=path.py[:arg]``); it gives the data (dataset, tokenizer, prompt
format), the sampling settings, the mesh and the role's model. The weights are the role's in a
phase checkpoint of the run (``<run>/checkpoints/<phase>``, the latest step or ``--step``;
a LoRA-trained role is merged onto its base) or, with ``--hf_dir``, a Hugging Face checkpoint
directory, whose config.json fixes the architecture (the config's role gives the numerics).
A judge that reads a role (a reward model) gets that role from the same phase checkpoint.

What it measures, on the first ``--max_prompts`` prompts of ``--split``: one greedy
completion and ``--samples`` (G) sampled ones per prompt. In-graph judges score inside the
compiled sampling program; host judges score the decoded text in worker processes
(:class:`~rlalign.rewards.host_pool.HostRewardPool`: a hang or crash costs its rows their
``fallback`` score, counted under ``host_failures``). Per judge: the mean over the greedy
completions and over all sampled ones, and, for a judge whose every score is 0 or 1, the
unbiased pass@k (Chen et al. 2021) for k = 1, 2, 4, ... up to G, counting a sample correct
when its score is > 0.5 (so pass@1 is the sampled mean). Per prompt's G samples: distinct-1
and distinct-2 (distinct n-grams over n-grams, in-graph) and self-BLEU (host; G >= 2);
over completions: mean length in tokens (its stop token included) and the fraction that
stopped within ``max_new_tokens``.

Writes ``<out>/eval.json`` (the figures, where they came from, per-prompt scores and a few
example completions) and ``<out>/eval.png`` (judges' greedy and sampled means; pass@k
curves), both atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import config as config_lib
from rlalign import metrics as metrics_lib
from rlalign import workdir
from rlalign.data import pipeline, tokenizer as tok_lib
from rlalign.diagnostics import diversity, pass_at_k as pass_at_k_lib
from rlalign.models import transformer as tfm
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rewards import base as reward_base
from rlalign.rewards import host_pool
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl import runtime as runtime_lib
from rlalign.rl.layout import jit_with_rules
from rlalign.sampling import sampler

PASS_THRESHOLD = 0.5  # a sample counts as correct for pass@k when its score is above this
NUM_EXAMPLES = 4  # prompts whose completions are written out as text
DISTINCT_NS = (1, 2)


class EvalError(workdir.RunInputError):
  """Bad input, named: a missing file or key, an unknown judge or role. One line."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What to evaluate and how (the command's flags)."""
  run: str = ""          # a run's workdir: its config.json, and its checkpoints
  config: str = ""       # a config file, path.py[:arg], instead of the run's config.json
  hf_dir: str = ""       # a Hugging Face checkpoint directory instead of the run's weights
  phase: str = "rl"
  role: str = "policy"
  step: Optional[int] = None  # None: the phase's latest checkpoint
  judges: str = "exact_match"  # comma-separated reward names, or a JSON {key: settings}
  samples: int = 8
  temperature: Optional[float] = None  # None: the config's sampling.temperature
  max_new_tokens: int = 0  # 0: the config's sampling.max_new_tokens
  max_prompts: int = 0  # 0: the whole split
  split: str = "test"
  seed: int = 0
  batch_size: int = 0  # prompts per program call; 0: the config's train.eval_batch_size
  host_workers: int = 2
  host_timeout_s: float = 30.0

  def validate(self) -> None:
    if not self.run and not self.config:
      raise EvalError("give --run=WORKDIR (its config.json and checkpoints) or "
                      "--config=FILE.py[:arg] with --hf_dir")
    if not self.run and not self.hf_dir:
      raise EvalError("--config gives no weights: add --hf_dir=DIR, or --run=WORKDIR for "
                      "the run's checkpoints")
    if self.samples < 1:
      raise EvalError(f"--samples must be >= 1, got {self.samples}")
    if self.temperature is not None and self.temperature < 0:
      raise EvalError(f"--temperature must be >= 0, got {self.temperature}")
    if self.host_workers < 0:
      raise EvalError(f"--host_workers must be >= 0 (0 scores host judges inline), got "
                      f"{self.host_workers}")
    if not (math.isfinite(self.host_timeout_s) and self.host_timeout_s > 0):
      raise EvalError(f"--host_timeout_s must be a finite number > 0, got "
                      f"{self.host_timeout_s}")
    for name in ("max_new_tokens", "max_prompts", "batch_size"):
      if getattr(self, name) < 0:
        raise EvalError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if self.step is not None and self.step < 0:
      raise EvalError(f"--step must be >= 0, got {self.step}")
    if self.hf_dir and not self.run and self.step is not None:
      raise EvalError("--step picks a checkpoint of --run; with --hf_dir alone there is none")


# ---- the experiment config ----------------------------------------------------------------


def load_experiment(settings: EvalSettings, out_dir: str) -> Tuple[ExperimentConfig, str]:
  """The typed experiment config and where it came from."""
  return workdir.load_experiment(run=settings.run, config=settings.config,
                                 data_dir_base=out_dir)


def parse_judges(spec: str) -> Tuple[reward_base.RewardTerm, ...]:
  """``"exact_match,math_answer"`` or a JSON ``{"key": weight | "name" | {settings}}``, as
  a run's ``rewards`` section reads."""
  spec = spec.strip()
  if spec.startswith("{"):
    try:
      value = json.loads(spec)
    except ValueError as e:
      raise EvalError(f"--judges: not a JSON mapping ({e})") from None
  else:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    value = {n: 1.0 for n in names}
  if not value:
    raise EvalError("--judges names no judge")
  try:
    # The config's own parser: typed settings, and errors that name the key at fault.
    terms = config_lib.rewards_from(value, "judges")
    reward_base.check_terms(terms, "judges")
  except (ValueError, KeyError) as e:
    raise EvalError(f"--{e.args[0] if e.args else e}") from None
  return terms


# ---- the prompts --------------------------------------------------------------------------


def load_prompts(cfg: ExperimentConfig, tokenizer, split: str, max_prompts: int
                 ) -> List[Dict[str, np.ndarray]]:
  """The split's first ``max_prompts`` records (0: all), encoded, in order."""
  try:
    source = pipeline.load_split(cfg.data, split)
  except (ValueError, FileNotFoundError) as e:
    raise EvalError(str(e)) from None
  count = len(source) if not max_prompts else min(max_prompts, len(source))
  if count == 0:
    raise EvalError(f"--split: the {split} split is empty")
  rows = []
  get_many = getattr(source, "__getitems__", None)
  bar = metrics_lib.progress(count, desc=f"encode {split}")
  chunk = 1024
  for start in range(0, count, chunk):
    indices = list(range(start, min(start + chunk, count)))
    records = get_many(indices) if get_many else [source[i] for i in indices]
    for index, record in zip(indices, records):
      try:
        rows.append(pipeline.encode_example(record, tokenizer, cfg.data))
      except ValueError as e:
        raise EvalError(f"{split} split, record {index}: {e}") from None
    bar.update(len(indices))
  bar.close()
  return rows


def batches_of(rows: Sequence[Dict[str, np.ndarray]], size: int):
  """Fixed-size batches; the last is filled with its final row, ``valid`` marks real rows."""
  for start in range(0, len(rows), size):
    chunk = list(rows[start:start + size])
    real = len(chunk)
    chunk += [chunk[-1]] * (size - real)
    batch = {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}
    yield batch, real


# ---- the compiled programs ----------------------------------------------------------------


def _program(model: tfm.ModelConfig, sampling: sampler.SamplingConfig,
             terms: Sequence[reward_base.RewardTerm],
             judge_models: Mapping[str, tfm.ModelConfig], pad_id: int, group: int):
  """``run(params, batch, rng, judge_params)``: completions of the batch's rows, their
  in-graph judges' scores and, per ``group`` consecutive rows (one prompt's samples), the
  distinct-n ratios."""

  def run(params, batch, rng, judge_params):
    out = sampler.sample(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model,
                         sampling, pad_id)
    stop = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
    stopped = jnp.any(jnp.isin(out.tokens, stop) & out.mask, axis=1)
    rollouts = {**batch, "completion_tokens": out.tokens, "completion_mask": out.mask,
                "completion_stopped": stopped}
    views = {name: reward_base.RoleModel(judge_models[name], p)
             for name, p in judge_params.items()}
    result = {"tokens": out.tokens, "mask": out.mask, "lengths": out.lengths,
              "stopped": stopped,
              "scores": reward_base.score_in_graph(terms, rollouts, views)}
    if group > 1:
      width = out.tokens.shape[1]
      tokens = out.tokens.reshape(-1, group, width)
      mask = out.mask.reshape(-1, group, width)
      for n in DISTINCT_NS:
        result[f"distinct_{n}"] = jax.vmap(
            lambda t, m, n=n: diversity.distinct_n(t, m, n))(tokens, mask)
    return result

  return run


def _ks(samples: int) -> List[int]:
  ks = [k for k in (2 ** i for i in range(samples.bit_length())) if k <= samples]
  return ks if ks[-1] == samples else ks + [samples]


def _finite(x: float) -> Optional[float]:
  return float(x) if math.isfinite(x) else None


def _decode(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> List[str]:
  return [tokenizer.decode(row[m], strict=False) for row, m in zip(tokens, mask.astype(bool))]


# ---- the evaluation -----------------------------------------------------------------------


def evaluate(settings: EvalSettings, out_dir: str) -> Dict[str, Any]:
  """Evaluates, writes ``eval.json`` and ``eval.png`` under ``out_dir``, returns the report.
  Raises :class:`EvalError` (or another ValueError naming its input) for bad input."""
  settings.validate()
  cfg, config_source = load_experiment(settings, out_dir)
  terms = parse_judges(settings.judges)
  if not settings.hf_dir and settings.role not in cfg.role_configs:
    raise EvalError(f"--role: unknown role {settings.role!r}; {config_source} declares "
                    f"{sorted(cfg.role_configs)}")
  for term in terms:
    for r in term.roles:
      if r not in cfg.role_configs:
        raise EvalError(f"--judges: judge {term.key!r} reads role {r!r}, which "
                        f"{config_source} does not declare ({sorted(cfg.role_configs)})")
  judge_roles = tuple(dict.fromkeys(r for t in terms for r in t.roles))
  if judge_roles and not settings.run:
    raise EvalError(f"--judges: {list(judge_roles)} read roles, which come from the run's "
                    "checkpoint: add --run")
  tokenizer = tok_lib.tokenizer_for(cfg.data)
  terms = reward_base.resolve_terms(terms, tokenizer)
  host_terms = tuple(t for t in terms if not t.reward.in_graph)
  # Host judges' workers import while the weights load and the programs compile.
  pool = None
  if host_terms:
    pool = host_pool.HostRewardPool(host_pool.HostRewardSettings(
        workers=settings.host_workers, timeout_s=settings.host_timeout_s))
    pool.start()
  try:
    return _evaluate(settings, out_dir, cfg, config_source, tokenizer, terms, judge_roles, pool)
  finally:
    if pool is not None:
      pool.close()


@dataclasses.dataclass
class Weights:
  """The evaluated model, the judges' roles, and where they came from."""
  model: tfm.ModelConfig
  params: Any
  judge_models: Dict[str, tfm.ModelConfig]
  judge_params: Dict[str, Any]
  source: Dict[str, Any]


def load_weights(settings: EvalSettings, cfg: ExperimentConfig, config_source: str,
                 judge_roles: Sequence[str], plan: ShardingPlan) -> Weights:
  role = settings.role
  source: Dict[str, Any] = {"config": os.path.abspath(config_source), "role": role}
  if settings.run:
    source["run"] = os.path.abspath(settings.run)
  checkpoint = None
  if settings.run and (not settings.hf_dir or judge_roles):
    checkpoint = workdir.PhaseCheckpoint.open(settings.run, settings.phase, settings.step)
  if settings.hf_dir:
    model, params = workdir.hf_params(cfg, role, settings.hf_dir)
    source["hf_dir"] = os.path.abspath(settings.hf_dir)
  else:
    model = cfg.role_model(role)
    if "lm" not in model.heads:
      raise EvalError(f"--role: role {role!r} has no LM head (model.heads={model.heads}); "
                      "only a role that generates can be evaluated")
    params = checkpoint.role_params(cfg, role, plan)
    source.update(phase=settings.phase, step=checkpoint.step,
                  checkpoint=checkpoint.step_dir)
  judge_params = {r: checkpoint.role_params(cfg, r, workdir.plan_for(cfg, r))
                  for r in judge_roles}
  if judge_roles:
    source["judge_roles_from"] = checkpoint.step_dir
  return Weights(model, params, {r: cfg.role_model(r) for r in judge_roles}, judge_params,
                 source)


class Scores:
  """Per-prompt results, gathered batch by batch (real rows only)."""

  def __init__(self, keys: Sequence[str], group: int):
    self.keys, self.group = list(keys), group
    self.greedy: Dict[str, List[np.ndarray]] = {k: [] for k in keys}
    self.sampled: Dict[str, List[np.ndarray]] = {k: [] for k in keys}  # [prompts, G] each
    self.lengths: Dict[str, List[np.ndarray]] = {"greedy": [], "sampled": []}
    self.stopped: Dict[str, List[np.ndarray]] = {"greedy": [], "sampled": []}
    self.distinct: Dict[int, List[np.ndarray]] = {n: [] for n in DISTINCT_NS}
    self.has_ngram: Dict[int, List[np.ndarray]] = {n: [] for n in DISTINCT_NS}
    self.self_bleu: List[float] = []
    self.failures: Dict[str, Dict[str, float]] = {}
    self.examples: List[Dict[str, Any]] = []

  def add(self, g_out, s_out, g_scores, s_scores, real: int, texts) -> None:
    group, rows = self.group, real * self.group
    for key in self.keys:
      self.greedy[key].append(g_scores[key])
      self.sampled[key].append(s_scores[key].reshape(real, group))
    for mode, out, n in (("greedy", g_out, real), ("sampled", s_out, rows)):
      self.lengths[mode].append(np.asarray(out["lengths"][:n], np.float64))
      self.stopped[mode].append(np.asarray(out["stopped"][:n], np.float64))
    if group > 1:
      lengths = np.asarray(s_out["lengths"][:rows]).reshape(real, group)
      for n in DISTINCT_NS:
        self.distinct[n].append(np.asarray(s_out[f"distinct_{n}"][:real], np.float64))
        self.has_ngram[n].append(np.any(lengths >= n, axis=1))
      tokens, mask = s_out["tokens"][:rows], s_out["mask"][:rows].astype(bool)
      for p in range(real):
        seqs = [t[m].tolist() for t, m in zip(tokens[p * group:(p + 1) * group],
                                              mask[p * group:(p + 1) * group])]
        self.self_bleu.append(diversity.self_bleu(seqs))
    for p in range(min(real, NUM_EXAMPLES - len(self.examples))):
      prompts, answers, g_text, s_text = texts
      self.examples.append({"prompt": prompts[p], "answer": answers[p], "greedy": g_text[p],
                            "samples": s_text[p * group:(p + 1) * group],
                            "greedy_scores": {k: float(g_scores[k][p]) for k in self.keys}})

  def add_failures(self, counts: Mapping[str, float]) -> None:
    """HostRewardPool's ``host_reward/<key>/<kind>`` counts, summed over calls."""
    for name, value in counts.items():
      parts = name.split("/")
      if len(parts) == 3 and value:
        entry = self.failures.setdefault(parts[1], {})
        entry[parts[2]] = entry.get(parts[2], 0.0) + value

  def summary(self, terms: Sequence[reward_base.RewardTerm]) -> Dict[str, Any]:
    greedy = {k: np.concatenate(v) for k, v in self.greedy.items()}
    sampled = {k: np.concatenate(v) for k, v in self.sampled.items()}
    judges = {}
    for term in terms:
      g, s = greedy[term.key], sampled[term.key]
      both = np.concatenate([g, s.ravel()])
      binary = bool(np.all((both == 0.0) | (both == 1.0)))
      entry = {"name": term.name, "kind": "in_graph" if term.reward.in_graph else "host",
               "greedy": _finite(g.mean()), "sampled": _finite(s.mean()), "binary": binary,
               "pass_at_k": None}
      if binary:
        correct = jnp.asarray(s > PASS_THRESHOLD)
        entry["pass_at_k"] = {name: float(v) for name, v in
                              pass_at_k_lib.pass_at_ks(correct, _ks(self.group)).items()}
      judges[term.key] = entry
    mean = lambda parts: float(np.concatenate(parts).mean())
    completions = {"greedy_length": mean(self.lengths["greedy"]),
                   "sampled_length": mean(self.lengths["sampled"]),
                   "greedy_stopped": mean(self.stopped["greedy"]),
                   "sampled_stopped": mean(self.stopped["sampled"])}
    for n in DISTINCT_NS:
      completions[f"distinct_{n}"] = None
      if self.group > 1:
        # A prompt whose samples hold no n-gram at all has no ratio and is left out.
        values, keep = np.concatenate(self.distinct[n]), np.concatenate(self.has_ngram[n])
        completions[f"distinct_{n}"] = float(values[keep].mean()) if keep.any() else 0.0
    completions["self_bleu"] = float(np.mean(self.self_bleu)) if self.group > 1 else None
    return {"judges": judges, "completions": completions, "host_failures": self.failures,
            "per_prompt": {"greedy": {k: [_finite(x) for x in v] for k, v in greedy.items()},
                           "sampled": {k: [[_finite(x) for x in row] for row in v]
                                       for k, v in sampled.items()}},
            "examples": self.examples}


def _evaluate(settings: EvalSettings, out_dir: str, cfg: ExperimentConfig, config_source: str,
              tokenizer, terms: Sequence[reward_base.RewardTerm], judge_roles: Sequence[str],
              pool: Optional[host_pool.HostRewardPool]) -> Dict[str, Any]:
  group = settings.samples
  cfg = runtime_lib.with_stop_token(cfg, tokenizer.eos_id)
  sampling = dataclasses.replace(
      cfg.sampling,
      max_new_tokens=settings.max_new_tokens or cfg.sampling.max_new_tokens,
      temperature=(cfg.sampling.temperature if settings.temperature is None
                   else settings.temperature))
  plan = workdir.plan_for(cfg, settings.role)
  weights = load_weights(settings, cfg, config_source, judge_roles, plan)
  if weights.model.vocab_size < tokenizer.vocab_size:
    raise EvalError(f"the model's vocab_size ({weights.model.vocab_size}) is smaller than the "
                    f"tokenizer's vocabulary ({tokenizer.vocab_size}) of {config_source}")
  rows = load_prompts(cfg, tokenizer, settings.split, settings.max_prompts)
  size = min(settings.batch_size or cfg.train.eval_batch_size, len(rows))
  size = -(-size // plan.batch_ways) * plan.batch_ways  # batches split over the mesh

  graph_terms = tuple(t for t in terms if t.reward.in_graph)
  host_terms = tuple(t for t in terms if not t.reward.in_graph)
  compile_ = lambda settings_, group_: jit_with_rules(
      _program(weights.model, settings_, graph_terms, weights.judge_models, tokenizer.pad_id,
               group_), plan, out_shardings=plan.replicated)
  greedy_fn = compile_(dataclasses.replace(sampling, temperature=0.0), 1)
  sampled_fn = compile_(sampling, group)
  rng = jax.random.key(settings.seed)
  scores = Scores([t.key for t in terms], group)
  bar = metrics_lib.progress(len(rows), desc="eval")
  for index, (batch, real) in enumerate(batches_of(rows, size)):
    repeated = {k: np.repeat(v, group, axis=0) for k, v in batch.items()}
    g_out = jax.device_get(greedy_fn(weights.params, plan.put_global_batch(batch),
                                     jax.random.fold_in(rng, 2 * index), weights.judge_params))
    s_out = jax.device_get(sampled_fn(weights.params, plan.put_global_batch(repeated),
                                      jax.random.fold_in(rng, 2 * index + 1),
                                      weights.judge_params))
    n = real * group
    decode = lambda ids: tokenizer.decode(ids, strict=False)
    for out in (g_out, s_out):  # judgements the host reads, as floats beside the rest
      out["scores"].update(reward_base.finish_on_host(graph_terms, out["scores"], decode))
    g_scores = {k: np.asarray(v, np.float64)[:real] for k, v in g_out["scores"].items()}
    s_scores = {k: np.asarray(v, np.float64)[:n] for k, v in s_out["scores"].items()}
    texts = None
    if host_terms or len(scores.examples) < NUM_EXAMPLES:
      texts = (_decode(tokenizer, batch["prompt_tokens"][:real], batch["prompt_mask"][:real]),
               _decode(tokenizer, batch["answer_tokens"][:real], batch["answer_mask"][:real]),
               _decode(tokenizer, g_out["tokens"][:real], g_out["mask"][:real]),
               _decode(tokenizer, s_out["tokens"][:n], s_out["mask"][:n]))
    if host_terms:
      prompts, answers, g_text, s_text = texts
      host_scores, counts = pool.score(
          host_terms, prompts + [p for p in prompts for _ in range(group)], g_text + s_text,
          answers + [a for a in answers for _ in range(group)])
      for key, value in host_scores.items():
        g_scores[key] = np.asarray(value[:real], np.float64)
        s_scores[key] = np.asarray(value[real:], np.float64)
      scores.add_failures(counts)
    scores.add(g_out, s_out, g_scores, s_scores, real, texts)
    bar.update(real)
  bar.close()

  report = {
      "source": weights.source,
      "settings": {"split": settings.split, "prompts": len(rows), "samples": group,
                   "temperature": sampling.temperature, "top_k": sampling.top_k,
                   "top_p": sampling.top_p, "max_new_tokens": sampling.max_new_tokens,
                   "stop_tokens": list(sampling.stop_tokens), "seed": settings.seed,
                   "batch_size": size, "pass_at_k_threshold": PASS_THRESHOLD},
      **scores.summary(graph_terms + host_terms),
  }
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    data = json.dumps(report, indent=1).encode()
    metrics_lib.atomic_write(os.path.join(out_dir, "eval.json"), lambda f: f.write(data))
    plot(report, os.path.join(out_dir, "eval.png"))
  return report


def plot(report: Mapping[str, Any], out_png: str) -> None:
  """The judges' greedy and sampled means (bars), and pass@k of the 0/1 judges (curves)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  judges = report["judges"]
  names = list(judges)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  x = np.arange(len(names))
  value = lambda k, mode: judges[k][mode] if judges[k][mode] is not None else np.nan
  axes[0].bar(x - 0.2, [value(k, "greedy") for k in names], 0.4, label="greedy")
  axes[0].bar(x + 0.2, [value(k, "sampled") for k in names], 0.4,
              label=f"sampled (T={report['settings']['temperature']:g})")
  axes[0].set_xticks(x, names, rotation=20, ha="right")
  axes[0].set(title=f"judges: mean score over {report['settings']['prompts']} prompts")
  axes[0].legend()
  curves = {k: j["pass_at_k"] for k, j in judges.items() if j["pass_at_k"]}
  for i, (key, table) in enumerate(curves.items()):
    ks = [int(name.split("@")[1]) for name in table]
    axes[1].plot(ks, list(table.values()), "o-", color=f"C{i}", label=key)
  if curves:
    ks = [int(name.split("@")[1]) for name in next(iter(curves.values()))]
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(ks, [str(k) for k in ks])
    axes[1].legend()
  else:
    axes[1].text(0.5, 0.5, "no 0/1-valued judge", ha="center", va="center",
                 transform=axes[1].transAxes)
  axes[1].set(title=f"pass@k of {report['settings']['samples']} samples (correct: score > "
                    f"{PASS_THRESHOLD:g})", xlabel="k", ylim=(0, 1.02))
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  metrics_lib.save_png(fig, out_png, dpi=110)
  plt.close(fig)


def summary_lines(report: Mapping[str, Any]) -> List[str]:
  """A short table of the report, for the terminal."""
  lines = [f"{'judge':<20} {'greedy':>8} {'sampled':>8}  pass@k"]
  for key, j in report["judges"].items():
    fmt = lambda v: "   n/a" if v is None else f"{v:8.3f}"
    table = " ".join(f"{k}={v:.3f}" for k, v in (j["pass_at_k"] or {}).items())
    lines.append(f"{key:<20} {fmt(j['greedy'])} {fmt(j['sampled'])}  {table}")
  c = report["completions"]
  extra = " ".join(f"{k}={v:.3f}" for k, v in c.items() if v is not None)
  lines.append(f"completions: {extra}")
  for key, counts in report["host_failures"].items():
    lines.append(f"host judge {key}: fell back on " + ", ".join(
        f"{int(v)} {k}" for k, v in counts.items()))
  return lines


def main(argv: Optional[List[str]] = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m rlalign.eval",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", default="", help="a run's workdir")
  parser.add_argument("--config", default="", help="config file path.py[:arg] instead of the "
                      "run's config.json")
  parser.add_argument("--hf_dir", default="", help="HF checkpoint directory instead of the "
                      "run's weights")
  parser.add_argument("--phase", default="rl")
  parser.add_argument("--role", default="policy")
  parser.add_argument("--step", type=int, default=None, help="default: the latest")
  parser.add_argument("--judges", default="exact_match",
                      help="comma-separated reward names, or a JSON {key: settings}")
  parser.add_argument("--samples", type=int, default=8, help="sampled completions per prompt")
  parser.add_argument("--temperature", type=float, default=None,
                      help="default: the config's sampling.temperature")
  parser.add_argument("--max_new_tokens", type=int, default=0,
                      help="default: the config's sampling.max_new_tokens")
  parser.add_argument("--max_prompts", type=int, default=0, help="default: the whole split")
  parser.add_argument("--split", default="test")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=0,
                      help="prompts per program call; default: train.eval_batch_size")
  parser.add_argument("--host_workers", type=int, default=2)
  parser.add_argument("--host_timeout_s", type=float, default=30.0)
  parser.add_argument("--out", required=True, help="directory for eval.json and eval.png")
  args = parser.parse_args(argv)
  settings = EvalSettings(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(EvalSettings)})
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and TFDS log every file at INFO
  try:
    report = evaluate(settings, args.out)
  except (ValueError, FileNotFoundError) as e:
    # EvalError, and the library's own errors about its input (a mesh that does not fit the
    # devices, a bad record): the user's to fix, in one line.
    print("error: " + "; ".join(str(e).splitlines()), file=sys.stderr)
    return 2
  print("\n".join(summary_lines(report)))
  print(f"wrote {os.path.join(args.out, 'eval.json')} and eval.png")
  return 0
