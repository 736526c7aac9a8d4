"""One RL iteration, built from small pure parts.

  rollout(params, batch, rng)            sample G completions per prompt, in-graph
  score(rollouts, trained, frozen)       every in-graph reward, per source (learned rewards
                                         read their roles' params)
  learn(state, rollouts, scores, rng)    advantages, reference log-probs, the objective's
                                         prepare, then epochs x minibatches of gradients

:func:`make_rl_step` composes them into ``step(state, batch, rng) -> (state, metrics)``. When
every reward is in-graph the composition is one jitted program with the state donated; with a
host reward the step splits into jitted ``rollout`` and ``learn`` around the Python call.
Algorithms differ in the objective, the advantage estimator and the rewards, never here.
The state holds every role the objective trains (a policy, and a critic for PPO), so one
iteration can update several models.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from rlalign.diagnostics import diversity, pass_at_k
from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base as obj_base
from rlalign.rewards import base as reward_base
from rlalign.rewards import host_pool
from rlalign.rewards import transforms as reward_transforms
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update
# StepLayout and SamplerLayout are re-exported: callers build step layouts from here.
from rlalign.rl.layout import SamplerLayout, StepLayout, jit_with_rules  # noqa: F401
from rlalign.sampling import sampler

Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RLConfig:
  batch_size: int = 256  # rollouts per iteration: prompts_per_step * group_size
  group_size: int = 8
  epochs: int = 1
  minibatches: int = 1
  advantage: str = "group_norm"
  rewards: Tuple[reward_base.RewardTerm, ...] = (reward_base.RewardTerm("exact_match"),)
  # Completion widths the update may run at: it runs at the smallest that holds the batch's
  # longest completion, chosen in-graph (lax.switch), so short rollouts train on short
  # arrays in the same single program. () always trains at sampling.max_new_tokens.
  response_buckets: Tuple[int, ...] = ()
  # Recompute pi_old with the learner's params before the update, instead of trusting the
  # sampler's log-probs (which differ in bfloat16). Costs one forward pass per iteration.
  rescore_old_logprobs: bool = False
  # DAPO's dynamic sampling (Yu et al. 2025), in-graph: sample ``oversample`` times the
  # prompts a step trains on, then keep the groups whose rewards differ (static shapes: the
  # batch is filled up with uninformative groups when too few differ, and that is counted).
  dynamic_sampling: bool = False
  oversample: int = 2
  # The reward terms whose weighted sum decides whether a group is informative (DAPO: the
  # accuracy, not shaping terms such as overlong); () uses every term.
  informative_rewards: Tuple[str, ...] = ()
  # Rewards scored on the same rollouts and logged as monitor/<source>, never trained on: a
  # gold judge beside a learned proxy shows reward hacking as it happens.
  monitors: Tuple[reward_base.RewardTerm, ...] = ()
  # How host rewards (Python on decoded text) run: worker processes, a per-call timeout and
  # the fallback a failed row gets, so no reward can hang or end the run.
  host_rewards: host_pool.HostRewardSettings = host_pool.HostRewardSettings()
  # "" : the policy samples its own rollouts. A slot ("reference"): that slot's role samples
  # them instead, the same role all phase long, as iterative DPO's rounds train on data of
  # the model as the round began (Xu et al. 2023; Yuan et al. 2024). Objectives that read
  # the sampler's log-probs as the policy's (ratios) refuse it (``Objective.any_sampler``).
  sample_from: str = ""

  @property
  def prompts_per_step(self) -> int:
    """Prompts whose groups the update trains on."""
    return self.batch_size // self.group_size

  @property
  def sampled_prompts_per_step(self) -> int:
    """Prompts a step reads and samples: more than it trains on with dynamic sampling."""
    return self.prompts_per_step * (self.oversample if self.dynamic_sampling else 1)

  @property
  def estimator(self) -> adv_lib.Estimator:
    return adv_lib.get(self.advantage)

  @property
  def reward_roles(self) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(r for term in self.rewards + self.monitors for r in term.roles))

  @property
  def lsc_terms(self) -> Tuple[reward_base.RewardTerm, ...]:
    """Reward terms whose lsc transform needs the reference's rewards each step."""
    return tuple(t for t in self.rewards if reward_transforms.lsc_settings(t.transforms))

  def validate(self, prefix: str = "rl") -> None:
    for name in ("batch_size", "group_size", "epochs", "minibatches"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {getattr(self, name)}")
    if self.advantage not in adv_lib.ESTIMATORS:
      raise ValueError(f"{prefix}.advantage: unknown estimator {self.advantage!r}; expected one "
                       f"of {sorted(adv_lib.ESTIMATORS)}")
    needed = self.estimator.min_group_size
    if self.dynamic_sampling:
      needed = max(needed, 2)  # a group's variance needs two samples
      if self.oversample < 1:
        raise ValueError(f"{prefix}.oversample must be >= 1, got {self.oversample}")
      if self.estimator.min_group_size < 2:
        raise ValueError(f"{prefix}.dynamic_sampling keeps groups by their reward variance: it "
                         f"needs a group-relative advantage, not {self.advantage!r}")
      unknown = set(self.informative_rewards) - {t.key for t in self.rewards}
      if unknown:
        raise ValueError(f"{prefix}.informative_rewards names {sorted(unknown)}, which are not "
                         f"among {prefix}.rewards")
    if self.group_size < needed:
      raise ValueError(f"{prefix}.group_size must be >= {needed} for advantage "
                       f"{self.advantage!r}{' with dynamic sampling' if self.dynamic_sampling else ''}"
                       f", got {self.group_size}")
    if self.batch_size % self.group_size:
      raise ValueError(f"{prefix}.batch_size ({self.batch_size}) must be a multiple of "
                       f"{prefix}.group_size ({self.group_size}): each prompt is sampled "
                       f"group_size times")
    if self.batch_size % self.minibatches:
      raise ValueError(f"{prefix}.minibatches ({self.minibatches}) must divide "
                       f"{prefix}.batch_size ({self.batch_size})")
    widths = self.response_buckets
    if any(b <= 0 for b in widths) or list(widths) != sorted(set(widths)):
      raise ValueError(f"{prefix}.response_buckets must be strictly increasing positive "
                       f"lengths, got {widths}")
    if not self.rewards:
      raise ValueError(f"{prefix}.rewards must name at least one reward")
    reward_base.check_terms(self.rewards, f"{prefix}.rewards", self.group_size)
    reward_base.check_terms(self.monitors, f"{prefix}.monitors")
    self.host_rewards.validate(f"{prefix}.host_rewards")
    for term in self.monitors:
      if term.transforms:
        raise ValueError(f"{prefix}.monitors.{term.key}: a monitor is logged as scored; it "
                         "takes no transforms")
    if self.estimator.greedy_baseline:
      for term in self.rewards:
        if any(s.transform.groupwise for s in term.transforms):
          raise ValueError(f"{prefix}.rewards.{term.key}: advantage {self.advantage!r} scores "
                           "one greedy completion per prompt, which a groupwise transform "
                           "cannot normalise")


@dataclasses.dataclass(frozen=True)
class IterationSpec:
  """Everything static about the iteration, bound once with functools.partial.

  ``binding`` holds the objective and every role the step sees; the sampling role is the one
  bound to the objective's ``policy`` slot, and a role bound to ``reference`` (when the run has
  one) gives ``ref_logprobs``.
  """
  sampling: sampler.SamplingConfig
  rl: RLConfig
  binding: update.Binding
  pad_id: int = 0

  @property
  def policy(self) -> str:
    return self.binding.role("policy")

  @property
  def reference(self) -> Optional[str]:
    name = self.binding.role("reference")
    return name if name in self.binding.roles else None

  @property
  def sampler(self) -> str:
    """The role that samples the rollouts: the policy's, or ``rl.sample_from``'s."""
    return self.binding.role(self.rl.sample_from) if self.rl.sample_from else self.policy

  @property
  def model(self) -> tfm.ModelConfig:
    return self.binding.roles[self.policy].model

  @property
  def rewards(self) -> Tuple[reward_base.RewardTerm, ...]:
    return self.rl.rewards

  @property
  def optimizers(self) -> Dict[str, optax.GradientTransformation]:
    return roles_lib.optimizers(self.binding.roles)

  @property
  def fused(self) -> bool:
    return all(t.reward.in_graph and not t.finishes_on_host
               for t in self.rewards + self.rl.monitors)

  def check(self) -> None:
    """Roles the objective and the rewards need exist, before anything is traced."""
    self.binding.check()
    objective = self.binding.objective
    if objective.batch != "rollouts":
      raise ValueError(f"objective {objective.name!r} trains on {objective.batch}, not on "
                       "rollouts: use it in a phase of that kind")
    if objective.needs_reference(self.binding.hparams) and self.reference is None:
      raise ValueError(f"objective {objective.name!r} with these settings needs a reference "
                       f"role; roles: {sorted(self.binding.roles)}")
    if self.rl.sample_from:
      if not objective.any_sampler:
        raise ValueError(f"rl.sample_from={self.rl.sample_from!r}: objective "
                         f"{objective.name!r} reads the sampler's log-probs as the policy's, "
                         "so only the policy may sample its rollouts")
      if self.sampler not in self.binding.roles:
        raise ValueError(f"rl.sample_from={self.rl.sample_from!r} is bound to role "
                         f"{self.sampler!r}, which this step does not have; roles: "
                         f"{sorted(self.binding.roles)}")
    if objective.pairs_layout:
      pairs = self.rl.prompts_per_step
      if self.rl.group_size < 2 or pairs % self.binding.minibatches:
        raise ValueError(f"objective {objective.name!r} trains on one pair per prompt: it needs "
                         f"group_size >= 2 (got {self.rl.group_size}) and minibatches "
                         f"({self.binding.minibatches}) dividing the {pairs} prompts per step")
    for term in self.rewards + self.rl.monitors:
      for role in term.roles:
        if role not in self.binding.roles:
          raise ValueError(f"reward {term.key!r} reads role {role!r}, which this run does not "
                           f"have; roles: {sorted(self.binding.roles)}")
        heads = getattr(term.settings, "heads_needed", ("scores",))
        update.check_heads(role, self.binding.roles[role].model, heads, f"reward {term.key!r}")
      if hasattr(term.settings, "check_roles"):
        term.settings.check_roles({role: self.binding.roles[role].model for role in term.roles},
                                  f"rewards.{term.key}")
    stepwise = [t.key for t in self.rewards if t.reward.per_token]
    if stepwise and not objective.token_advantages:
      raise ValueError(f"reward {stepwise[0]!r} scores steps, which train through per-token "
                       f"advantages; objective {objective.name!r} does not read them (grpo, "
                       "rloo do)")
    hosted = [t.key for t in self.rl.lsc_terms if t.finishes_on_host or not t.reward.in_graph]
    if hosted:
      raise ValueError(f"reward {hosted[0]!r}: the lsc transform scores the reference policy's "
                       "samples inside the program, and this reward is read on the host")
    if self.rl.lsc_terms and self.reference is None:
      raise ValueError(f"reward {self.rl.lsc_terms[0].key!r}: the lsc transform compares with "
                       "the reference policy's samples, and this run has no reference role; "
                       f"roles: {sorted(self.binding.roles)}")


def single_policy_spec(model: tfm.ModelConfig, sampling: sampler.SamplingConfig, rl: RLConfig,
                       objective: obj_base.Objective, hparams: Any,
                       optimizer: optax.GradientTransformation, *, pad_id: int = 0,
                       adapter: Optional[lora_lib.LoRAConfig] = None,
                       reference: bool = True) -> IterationSpec:
  """The spec of today's common run: one trained policy and, optionally, a frozen reference
  of the same shape (given to the step as ``frozen["reference"]``)."""
  specs = {"policy": roles_lib.RoleSpec(model, optimizer, adapter)}
  if reference:
    specs["reference"] = roles_lib.RoleSpec(model)
  binding = update.Binding(objective, hparams, specs, {}, rl.epochs, rl.minibatches)
  return IterationSpec(sampling, rl, binding, pad_id)


def policy_params(trained: Mapping[str, Any], frozen: Mapping[str, Any], spec: IterationSpec):
  """The policy's weights: its trained params, or base + merged adapters."""
  return roles_lib.effective_params(spec.policy, trained, frozen, spec.binding.roles)


def sampler_params(trained: Mapping[str, Any], frozen: Mapping[str, Any], spec: IterationSpec):
  """The weights the rollouts are sampled with: the policy's, or ``rl.sample_from``'s."""
  return roles_lib.effective_params(spec.sampler, trained, frozen, spec.binding.roles)


def rollout(params, batch: Batch, rng: jax.Array, spec: IterationSpec, *,
            greedy: bool = False, group_size: int = 0,
            model: Optional[tfm.ModelConfig] = None) -> Dict[str, jax.Array]:
  """Samples ``group_size`` completions of every prompt; each group is contiguous. ``greedy``
  samples one greedy completion per prompt instead (ReMax's baseline). ``group_size`` and
  ``model`` default to the run's (another role samples with its own model)."""
  G = 1 if greedy else (group_size or spec.rl.group_size)
  sampling = dataclasses.replace(spec.sampling, temperature=0.0) if greedy else spec.sampling
  repeat = lambda x: jnp.repeat(x, G, axis=0)
  prompt_tokens, prompt_mask = repeat(batch["prompt_tokens"]), repeat(batch["prompt_mask"])
  out = sampler.sample(params, prompt_tokens, prompt_mask, rng, model or spec.model, sampling,
                       spec.pad_id)
  stop = jnp.asarray(spec.sampling.stop_tokens or (-1,), jnp.int32)
  return {
      "prompt_tokens": prompt_tokens,
      "prompt_mask": prompt_mask,
      "completion_tokens": out.tokens,
      "completion_mask": out.mask,
      "completion_stopped": jnp.any(jnp.isin(out.tokens, stop) & out.mask, axis=1),
      "logprobs": out.logprobs,
      "answer_tokens": repeat(batch["answer_tokens"]),
      "answer_mask": repeat(batch["answer_mask"]),
  }


def greedy_baseline(params, batch: Batch, rng: jax.Array, trained, frozen,
                    spec: IterationSpec, reference: Optional[Mapping[str, jax.Array]] = None
                    ) -> jax.Array:
  """[prompts * G]: the reward of each prompt's greedy completion, repeated over its group."""
  G = spec.rl.group_size
  greedy = rollout(params, batch, rng, spec, greedy=True)
  per_prompt = {k: v[::G] for k, v in (reference or {}).items()}
  rewards = reward_base.combine(spec.rewards, score(greedy, trained, frozen, spec, rng),
                                reference=per_prompt)
  return jnp.repeat(rewards, G, axis=0)


def reference_rewards(batch: Batch, rng: jax.Array, trained, frozen,
                      spec: IterationSpec) -> Dict[str, jax.Array]:
  """[prompts * G] per lsc source: r_ref(x), the quantile of the source's reward over
  ``samples`` completions of each prompt sampled from the reference policy, repeated over the
  prompt's group. One rollout of the reference serves every lsc source."""
  terms = spec.rl.lsc_terms
  if not terms:
    return {}
  settings = {t.key: reward_transforms.lsc_settings(t.transforms) for t in terms}
  m = max(s.samples for s in settings.values())
  ref = spec.reference
  params = roles_lib.effective_params(ref, trained, frozen, spec.binding.roles)
  sampled = rollout(params, batch, rng, spec, group_size=m,
                    model=spec.binding.roles[ref].model)
  views = role_views(tuple(dict.fromkeys(r for t in terms for r in t.roles)), trained, frozen,
                     spec.binding.roles)
  scores = reward_base.score_in_graph(terms, {**sampled, "rng": rng}, views)
  out = {}
  for key, s in settings.items():
    per_prompt = scores[key].reshape(-1, m)[:, :s.samples]
    r_ref = reward_transforms.reference_quantile(per_prompt, s)
    out[key] = jax.lax.stop_gradient(jnp.repeat(r_ref, spec.rl.group_size, axis=0))
  return out


def select_informative_groups(rollouts: Batch, scores: Mapping[str, jax.Array],
                              spec: IterationSpec):
  """DAPO's dynamic sampling with static shapes: of the ``oversample * prompts_per_step``
  sampled groups, keep ``prompts_per_step``, those whose ``rl.informative_rewards`` differ
  first (in sampling order). When fewer differ, the rest of the batch is uninformative groups,
  marked in ``rollouts["informative"]`` so that they carry no loss; ``dynamic_sampling/
  unfilled`` counts those steps."""
  rl = spec.rl
  G, keep = rl.group_size, rl.prompts_per_step
  terms = tuple(t for t in rl.rewards
                if not rl.informative_rewards or t.key in rl.informative_rewards)
  context = dict(group_size=G, reference=rollouts.get("reference_rewards"))
  decisive = reward_base.combine(terms, scores, **context).reshape(-1, G)
  informative = jnp.any(decisive != decisive[:, :1], axis=1)
  groups = jnp.argsort(~informative, stable=True)[:keep]
  rows = (groups[:, None] * G + jnp.arange(G)).reshape(-1)
  take = lambda tree: jax.tree.map(lambda x: x[rows], dict(tree))
  n = jnp.sum(informative).astype(jnp.float32)
  total = reward_base.combine(rl.rewards, scores, **context)
  metrics = {
      "dynamic_sampling/informative_groups": n,
      "dynamic_sampling/kept_informative_fraction": jnp.minimum(n, keep) / keep,
      "dynamic_sampling/unfilled": (n < keep).astype(jnp.float32),
      "dynamic_sampling/sampled_reward": total.mean(),
      "dynamic_sampling/sampled_tokens": jnp.sum(rollouts["completion_mask"]).astype(
          jnp.float32),
  }
  kept = take(rollouts)
  kept["informative"] = jnp.repeat(informative[groups], G)
  return kept, take(scores), metrics


def role_views(names: Sequence[str], trained: Mapping[str, Any], frozen: Mapping[str, Any],
               roles: roles_lib.RoleSpecs) -> Dict[str, reward_base.RoleModel]:
  return {name: reward_base.RoleModel(roles[name].model,
                                      roles_lib.effective_params(name, trained, frozen, roles))
          for name in names}


MONITOR = "monitor/"  # the prefix of a monitor's scores, beside the rewards' own


def score(rollouts: Batch, trained: Mapping[str, Any], frozen: Mapping[str, Any],
          spec: IterationSpec, rng: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
  """Every in-graph reward and monitor, per source (monitors under ``monitor/<source>``);
  learned ones read their roles' params, and ``rng`` is the key of those that sample."""
  views = role_views(spec.rl.reward_roles, trained, frozen, spec.binding.roles)
  if rng is not None:
    rollouts = {**rollouts, "rng": rng}
  scores = reward_base.score_in_graph(spec.rewards, rollouts, views)
  monitors = reward_base.score_in_graph(spec.rl.monitors, rollouts, views)
  return {**scores, **{MONITOR + k: v for k, v in monitors.items()}}


COMPLETION_KEYS = ("completion_tokens", "completion_mask", "logprobs")


def response_widths(spec: IterationSpec) -> Tuple[int, ...]:
  """The completion widths ``learn`` compiles for: the buckets below max_new_tokens, then it."""
  n = spec.sampling.max_new_tokens
  return tuple(b for b in spec.rl.response_buckets if b < n) + (n,)


def learn(state: state_lib.TrainState, rollouts: Batch, scores: Mapping[str, jax.Array],
          rng: jax.Array, frozen: Mapping[str, Any], spec: IterationSpec
          ) -> Tuple[state_lib.TrainState, Metrics]:
  """Advantages, reference log-probs, ``prepare`` and ``epochs x minibatches`` updates.

  With ``rl.response_buckets``, the completions are cut to the smallest bucket that holds the
  longest one before the reference and the policy score them: every column cut is padding
  after every row's stop, which causal attention never lets an earlier token see, so the
  update is the same at a fraction of the cost.
  """
  selected = {}
  if spec.rl.dynamic_sampling:
    rollouts, scores, selected = select_informative_groups(rollouts, scores, spec)
  state, metrics = _learn_at_widths(state, rollouts, scores, rng, frozen, spec)
  if selected:  # throughput counts every generated token, kept or not
    metrics["tokens"] = selected["dynamic_sampling/sampled_tokens"]
  return state, {**metrics, **selected}


def _learn_at_widths(state, rollouts, scores, rng, frozen, spec: IterationSpec):
  widths = response_widths(spec)
  if len(widths) == 1:
    return _learn(state, rollouts, scores, rng, frozen, spec)
  longest = jnp.max(jnp.sum(rollouts["completion_mask"], axis=1))
  index = jnp.searchsorted(jnp.asarray(widths), longest, side="left")

  def at_width(width):
    def branch(state, rollouts, scores, rng, frozen):
      cut = {k: (v[:, :width] if k in COMPLETION_KEYS else v) for k, v in rollouts.items()}
      # Per-token scores (step rewards) are [B, N] like the completions.
      scores = jax.tree.map(lambda v: v[:, :width] if v.ndim == 2 else v, dict(scores))
      return _learn(state, cut, scores, rng, frozen, spec)
    return branch

  state, metrics = jax.lax.switch(index, [at_width(w) for w in widths], state, rollouts,
                                  scores, rng, frozen)
  return state, {**metrics, "response_bucket": jnp.asarray(widths)[index].astype(jnp.float32)}


def _learn(state, rollouts, scores, rng, frozen, spec: IterationSpec):
  rl = spec.rl
  total = reward_base.combine(rl.rewards, scores, group_size=rl.group_size,
                              reference=rollouts.get("reference_rewards"))
  mask = rollouts["completion_mask"]
  data = {
      "prompt_tokens": rollouts["prompt_tokens"],
      "prompt_mask": rollouts["prompt_mask"],
      "completion_tokens": rollouts["completion_tokens"],
      # Filler groups of dynamic sampling carry no loss (nor KL, nor a token count).
      "mask": mask & rollouts["informative"][:, None] if "informative" in rollouts else mask,
      "sampler_logprobs": rollouts["logprobs"],
      "old_logprobs": rollouts["logprobs"],
      "rewards": total,
  }
  estimator = rl.estimator
  if estimator.greedy_baseline:
    baseline = rollouts["baseline_rewards"][::rl.group_size]
    data["advantages"] = estimator.fn(total, rl.group_size, baseline)
  else:
    data["advantages"] = estimator.fn(total, rl.group_size)
  stepwise = reward_base.combine_steps(rl.rewards, scores)
  if stepwise is not None:  # a process reward: its steps add per-token advantages
    step_rewards, steps = stepwise
    data["advantages"] = obj_base.per_token(data["advantages"]) + adv_lib.process_advantages(
        step_rewards, steps & data["mask"], data["mask"], rl.group_size)
  score_role = update.scorer(state_lib.params_of(state), frozen, spec.binding, data)
  if rl.rescore_old_logprobs:
    data["old_logprobs"] = score_role("policy", ("logprobs",)).logprobs
  # The reference is scored whenever the run has one, so KL is logged even when the
  # objective does not penalise it.
  if spec.reference is not None:
    data["ref_logprobs"] = score_role("reference", ("logprobs",)).logprobs
  else:
    data["ref_logprobs"] = data["old_logprobs"]
  data, prepared = update.prepare(spec.binding, data, score_role, rl.group_size)

  state, metrics = update.updates(state, data, rng, frozen, spec.binding)
  state = {**state, "step": state["step"] + 1}
  metrics.update(prepared)
  if estimator.greedy_baseline:
    metrics["baseline_reward"] = rollouts["baseline_rewards"].mean()

  lengths = mask.sum(axis=1).astype(jnp.float32)
  metrics.update({
      "reward": total.mean(),
      "response_length": lengths.mean(),
      "tokens": lengths.sum(),
      **({"zero_variance_groups": adv_lib.zero_variance_fraction(total, rl.group_size)}
         if rl.group_size > 1 else {}),
      "completed": rollouts["completion_stopped"].astype(jnp.float32).mean(),
  })
  # KL(pi_old || reference) of whole sequences, estimated on the samples: the x-axis of
  # proxy-vs-gold curves (Gao et al. 2023 plot against its square root).
  drift = (data["old_logprobs"] - data["ref_logprobs"]) * data["mask"]
  metrics["kl_sequence"] = drift.sum(axis=1).mean()
  # Monitors' scores sit under ``monitor/<source>``; a per-token one is reduced like a reward.
  logged = rl.rewards + tuple(dataclasses.replace(t, source=MONITOR + t.key)
                              for t in rl.monitors)
  for name, value in reward_base.sequence_scores(logged, scores).items():
    metrics[name if name.startswith(MONITOR) else f"reward/{name}"] = value.mean()
  for name, value in rollouts.get("reference_rewards", {}).items():
    metrics[f"reward/{name}/reference"] = value.mean()
  metrics.update(sample_diagnostics(rollouts, scores, rl.group_size))
  if "exact_match" in scores:
    metrics["accuracy"] = scores["exact_match"].mean()
  return state, metrics


def sample_diagnostics(rollouts: Batch, scores: Mapping[str, jax.Array], group_size: int
                       ) -> Metrics:
  """What the mean reward hides: distinct-1/2 and self-BLEU of each prompt's group
  (diversity collapses under reward hacking) and, where exact match is scored (as a reward or
  a monitor), the unbiased pass@k for k = 1, 2, 4, ... up to the group size."""
  tokens, mask = rollouts["completion_tokens"], rollouts["completion_mask"]
  prompts = tokens.shape[0] // group_size
  out = {f"diversity/distinct_{n}": diversity.distinct_n(tokens, mask, n, groups=prompts)
         for n in (1, 2)}
  if group_size > 1:
    out["diversity/self_bleu"] = diversity.self_bleu_in_graph(tokens, mask, prompts)
  correct = scores.get("exact_match", scores.get(MONITOR + "exact_match"))
  if correct is not None and group_size > 1:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k < group_size] + [group_size]
    out.update(pass_at_k.pass_at_ks(correct.reshape(prompts, group_size) > 0.5, ks))
  return out


def rl_step(state, batch, rng, frozen, spec: IterationSpec):
  """The fused iteration: sample, score, advantages and updates in one program."""
  state, metrics, _ = rl_step_and_rollouts(state, batch, rng, frozen, spec)
  return state, metrics


def rl_step_and_rollouts(state, batch, rng, frozen, spec: IterationSpec):
  """:func:`rl_step`, also returning the rollouts it learned on (a recipe that builds more
  work on them, in the same program, after the step)."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, learn_rng = jax.random.split(rng)
  greedy_rng = jax.random.split(rng, 3)[2]  # a key of its own, unlike any the sampler folds
  trained = state_lib.params_of(state)
  params = policy_params(trained, frozen, spec)
  rollouts = rollout(sampler_params(trained, frozen, spec), batch, sample_rng, spec)
  score_rng, reference_rng = jax.random.split(jax.random.fold_in(greedy_rng, 1))
  if spec.rl.lsc_terms:
    rollouts["reference_rewards"] = reference_rewards(batch, reference_rng, trained, frozen,
                                                      spec)
  if spec.rl.estimator.greedy_baseline:
    rollouts["baseline_rewards"] = greedy_baseline(params, batch, greedy_rng, trained, frozen,
                                                   spec, rollouts.get("reference_rewards"))
  scores = score(rollouts, trained, frozen, spec, score_rng)
  return (*learn(state, rollouts, scores, learn_rng, frozen, spec), rollouts)


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole array on this host, gathering the other hosts' rows when needed."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_rl_step(spec: IterationSpec, decode: Optional[Callable[[np.ndarray], str]] = None,
                 layout: Optional[StepLayout] = None) -> Callable:
  """Returns ``step(state, batch, rng, frozen) -> (state, metrics)``.

  ``decode`` turns one row of token ids into text; it is needed only for host rewards.
  With a ``layout``, every program is jitted with explicit in/out shardings over its mesh.
  The step is one program unless a reward runs on the host or the sampler has a layout of
  its own; then sampling and learning are two programs, and the policy's weights are
  resharded into the sampler's layout before each rollout (timed as ``reshard_s``).
  """
  spec.check()
  plan = layout.plan if layout else None
  separate = layout is not None and layout.sampler is not None
  if spec.fused and not separate:
    kw = {}
    if layout:
      kw = dict(in_shardings=(layout.state, layout.batch, plan.replicated, layout.frozen),
                out_shardings=(layout.state, plan.replicated))
    return jit_with_rules(functools.partial(rl_step, spec=spec), plan, donate_argnums=(0,), **kw)
  if not spec.fused and decode is None:
    raise ValueError("host rewards need a tokenizer to decode completions")
  if spec.rl.estimator.greedy_baseline:
    raise ValueError(f"advantage {spec.rl.advantage!r} samples a greedy baseline inside the "
                     "fused iteration: it needs in-graph rewards and the sampler in the "
                     "learner's layout (sampler_layout.separate=False)")

  sampler_plan = layout.sampler.plan if separate else plan
  sample_kw = {}
  if separate and spec.rl.sample_from:
    raise ValueError("rl.sample_from with a separate sampler layout is not supported: only "
                     "the policy's weights are resharded into the sampler's layout")
  if separate:
    if spec.binding.roles[spec.policy].adapter is not None:
      raise ValueError("LoRA adapters with a separate sampler layout are not supported: the "
                       "sampler would need the base weights in its layout too")
    sample_kw = dict(in_shardings=({spec.policy: layout.sampler.params}, layout.sampler.batch,
                                   sampler_plan.replicated, {}))
  sample_jit = jit_with_rules(
      lambda trained, batch, rng, frozen: rollout(sampler_params(trained, frozen, spec), batch,
                                                  rng, spec),
      sampler_plan, **sample_kw)
  score_jit = jit_with_rules(
      lambda rollouts, trained, frozen, rng: score(rollouts, trained, frozen, spec, rng), plan)
  learn_kw = dict(out_shardings=(layout.state, plan.replicated)) if layout else {}
  learn_jit = jit_with_rules(functools.partial(learn, spec=spec), plan, donate_argnums=(0,),
                             **learn_kw)

  reference_jit = jit_with_rules(functools.partial(reference_rewards, spec=spec), plan)
  pool = None
  if not spec.fused:
    pool = host_pool.HostRewardPool(spec.rl.host_rewards)
    pool.start()  # the workers import while the first step compiles
  # Monitors score under their own prefix, in the same call as the rewards.
  host_terms = spec.rewards + tuple(dataclasses.replace(t, source=MONITOR + t.key)
                                    for t in spec.rl.monitors)

  def step(state, batch, rng, frozen):
    step_rng = jax.random.fold_in(rng, state["step"])
    sample_rng, learn_rng = jax.random.split(step_rng)
    # The same keys as the fused step's, so both layouts score alike.
    score_rng, reference_rng = jax.random.split(
        jax.random.fold_in(jax.random.split(step_rng, 3)[2], 1))
    learner_batch = batch
    trained, extra = state_lib.params_of(state), {}
    sampled = trained
    if separate:
      start = time.perf_counter()
      sampled = {spec.policy: jax.block_until_ready(
          jax.device_put(trained[spec.policy], layout.sampler.params))}
      extra["reshard_s"] = time.perf_counter() - start
      batch = jax.device_put(batch, layout.sampler.batch)
      sample_rng = jax.device_put(sample_rng, sampler_plan.replicated)
    rollouts = sample_jit(sampled, batch, sample_rng, {} if separate else frozen)
    if separate:  # rollouts move to the learner's layout
      rollouts = jax.device_put(rollouts, plan.batch(rollouts))
    if spec.rl.lsc_terms:
      rollouts["reference_rewards"] = reference_jit(learner_batch, reference_rng, trained,
                                                    frozen)
    scores = dict(score_jit(rollouts, trained, frozen, score_rng))
    if not spec.fused:
      host = {k: _to_host(rollouts[k])
              for k in ("prompt_tokens", "completion_tokens", "answer_tokens")}
      texts = {k: [decode(row) for row in v] for k, v in host.items()}
      host_scores, host_metrics = pool.score(host_terms, texts["prompt_tokens"],
                                             texts["completion_tokens"], texts["answer_tokens"])
      # In-graph judgements that the host reads (a verifier's "Score: 12" in text).
      finished = {t.key: jax.tree.map(_to_host, scores.pop(t.key))
                  for t in host_terms if t.finishes_on_host}
      host_scores.update(reward_base.finish_on_host(host_terms, finished, decode))
      extra.update(host_metrics)
      if plan is not None:
        scores.update(plan.put_global_batch(host_scores))
      else:
        scores.update({k: jnp.asarray(v) for k, v in host_scores.items()})
    state, metrics = learn_jit(state, rollouts, scores, learn_rng, frozen)
    return state, {**metrics, **extra}

  return step
