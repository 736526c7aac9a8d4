"""Multiagent finetuning by debate (Subramaniam et al. 2025, "Multiagent Finetuning: Self
Improvement with Diverse Reasoning Chains"): N generation agents and N critic agents, each
its own model, debate; the majority of the last round's answers is the consensus, the only
label there is; and each agent is fine-tuned on its own part of the debate that agrees with
it.

Each step of a round, in one compiled program over every agent:

  round 1    generation agent n answers each prompt (one sample, temperature as sampled)
  round m    critic agent n reads round m-1's answers, its counterpart's first, then the
             prompt (``critic_input``: "231,221,231|740+580="), and answers again: the
             question last, so that the answer follows it as in round 1
  consensus  the most frequent answer of the last round; a tie at the top is none
  data       generation agent n: its round-1 answers equal to the consensus; critic agent
             n: its answers of rounds 2..M equal to the consensus, those that corrected its
             counterpart's disagreeing answer always, those that kept an agreeing one with
             probability ``kept_share`` (the paper's mix of the two); none from a prompt
             whose consensus has fewer than ``min_votes`` votes (three different answers
             agree on nothing)
  update     one SFT update (the round's objective) of each role on its own rows

An agent's role may repeat: ``agents=("policy",) * 3`` and ``critics`` the same is one model
playing every part and learning all of their data (the paper's single-agent finetuning);
``critics=()`` with ``debate_rounds=1`` is a majority vote of one model's samples without a
debate (self-consistency self-training). Roles as LoRA adapters over one base are a config.

The step reads the batch's prompts only (``unlabelled``): no answer, no demonstration. The
gold judge (``gold``, an in-graph reward) is read by the evaluator alone, which logs, with
the agents debating the held-out prompts as in training:

  eval/debate_accuracy          the consensus of the last round right: the system's answer
  eval/round<m>_accuracy        the agents' round-m answers right, on average
  eval/round<m>_majority        the majority of round m's answers right
  eval/agent<n>_accuracy        generation agent n's sampled first answer right
  eval/agent<n>_greedy          its greedy answer right
  eval/critic_fixed             of the round-2 critics whose counterpart was wrong, the share
                                right; eval/critic_broken: of those whose counterpart was
                                right, the share wrong
  eval/answer_diversity         per prompt, (distinct first-round answers - 1) / (N - 1):
                                0 when every agent says the same
  eval/final_diversity          the same over the last round's answers
  eval/agent_kl                 the agents' mean pairwise KL on their first answers, sequence
                                log-prob of agent i's sample under i less under j: 0 for one
                                model playing every agent

``debate.png`` in the workdir plots them over the rounds' steps.

The task of configs/debate_addition.py is reversed-digit addition after a warm start on a
teacher that drops each carry with probability 0.3: its errors are independent draws, so
three agents' answers disagree where a model is unsure, and their majority is right more
often than any one of them, which is what a consensus can teach.

  configs/debate_addition.py; python -m rlalign.studies.debate runs its arms
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import metrics as metrics_lib
from rlalign.data import tokenizer as tokenizer_lib
from rlalign.models import transformer as tfm
from rlalign.recipes import base
from rlalign.rewards import base as reward_base
from rlalign.rewards import judges
from rlalign.rl import dry_run, offline, update
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import StepLayout, jit_step
from rlalign.rl.runtime import Runtime, role_specs
from rlalign.sampling import sampler

AGENTS = ("agent_0", "agent_1", "agent_2")
CRITICS = ("critic_0", "critic_1", "critic_2")


@dataclasses.dataclass(frozen=True)
class DebateSettings:
  before: Tuple[str, ...] = ()        # phases run first, in order (a warm start)
  # An SFT phase (on the data's demonstrations) in the debate's form, before the rounds: the
  # policy's own answers quoted in a critic's prompt, the demonstration as the answer after
  # them (and after the bare prompt). A model that never read another's answer does not
  # answer after one; "" skips it.
  format_phase: str = ""
  rounds: Tuple[str, ...] = ()        # SFT phases, in order: their steps, batch and optimizer
  agents: Tuple[str, ...] = AGENTS    # generation agents' roles (one may repeat)
  critics: Tuple[str, ...] = CRITICS  # one per agent, or () for a vote without a debate
  debate_rounds: int = 2              # M: the generation round and M - 1 critic rounds
  separator: str = ","                # between the answers a critic reads
  before_question: str = "|"          # after them, before the prompt
  kept_share: float = 1.0             # of the critic rows that kept an agreeing answer
  # A consensus needs this many votes: three different answers agree on nothing.
  min_votes: int = 2
  gold: str = "exact_match"           # the gold judge: the evaluator's only

  @property
  def roles(self) -> Tuple[str, ...]:
    """Every role the debate trains, once each, in order."""
    return tuple(dict.fromkeys(self.agents + self.critics))

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    phases = cfg.phase_configs
    if not self.rounds:
      raise ValueError(f"{prefix}.rounds must name the fine-tuning phases, in order")
    named = (("before", self.before), ("rounds", self.rounds),
             ("format_phase", (self.format_phase,) if self.format_phase else ()))
    order = sum((names for _, names in named), ())
    repeated = sorted({p for p in order if order.count(p) > 1})
    if repeated:
      raise ValueError(f"{prefix}: phases {repeated} appear twice in before, format_phase and "
                       "rounds; each runs once, with a checkpoint of its own")
    for key, names in named:
      unknown = [p for p in names if p not in phases]
      if unknown:
        raise ValueError(f"{prefix}.{key} names {unknown}, which are not in phases "
                         f"({sorted(phases)})")
    for name in self.rounds + ((self.format_phase,) if self.format_phase else ()):
      objective = phases[name].objective
      if objective.objective.batch != "demonstrations":
        raise ValueError(f"phases.{name} fine-tunes on the debate's rows: its objective must "
                         f"train on demonstrations (sft), not {objective.name!r}")
    if len(self.agents) < 2:
      raise ValueError(f"{prefix}.agents: a majority needs at least 2 agents, got "
                       f"{list(self.agents)}")
    if self.critics and len(self.critics) != len(self.agents):
      raise ValueError(f"{prefix}.critics: one per agent ({len(self.agents)}), or none; got "
                       f"{list(self.critics)}")
    if self.debate_rounds < 1:
      raise ValueError(f"{prefix}.debate_rounds must be >= 1, got {self.debate_rounds}")
    if bool(self.critics) != (self.debate_rounds > 1):
      raise ValueError(f"{prefix}: critics {list(self.critics)} with debate_rounds="
                       f"{self.debate_rounds}; rounds after the first are the critics', so "
                       "give critics and debate_rounds >= 2, or neither and 1")
    roles = cfg.role_configs
    for role in self.roles:
      if role not in roles:
        raise ValueError(f"{prefix}: agent role {role!r} is not in roles ({sorted(roles)})")
      if not roles[role].trainable:
        raise ValueError(f"{prefix}: agent role {role!r} is frozen (roles.{role}.trainable)")
    if (self.critics or self.format_phase) and (not self.separator
                                                 or not self.before_question):
      raise ValueError(f"{prefix}.separator and .before_question must be non-empty: a critic "
                       "could not tell one answer from the next, or the last from the question")
    if not 1 <= self.min_votes <= len(self.agents):
      raise ValueError(f"{prefix}.min_votes must be in [1, {len(self.agents)}] (the agents), "
                       f"got {self.min_votes}")
    if not 0.0 <= self.kept_share <= 1.0:
      raise ValueError(f"{prefix}.kept_share must be in [0, 1], got {self.kept_share}")
    try:
      gold = reward_base.get(self.gold)
    except KeyError as e:
      raise ValueError(f"{prefix}.gold {self.gold!r}: {e}") from None
    term = reward_base.RewardTerm(self.gold, settings=gold.settings())
    if not gold.in_graph or gold.per_token or term.finishes_on_host or term.roles:
      raise ValueError(f"{prefix}.gold {self.gold!r}: the evaluator reads the gold verdict of "
                       "every answer inside its program, so it must be an in-graph sequence "
                       "reward of the answer alone (exact_match), reading no role")


@dataclasses.dataclass(frozen=True)
class DebateSpec:
  """Everything static about a debate: who plays which part, how they sample, the words."""
  agents: Tuple[str, ...]
  critics: Tuple[str, ...]
  rounds: int
  models: Mapping[str, tfm.ModelConfig]
  sampling: sampler.SamplingConfig
  pad_id: int
  separator_ids: Tuple[int, ...]
  before_question_ids: Tuple[int, ...]
  stop_ids: Tuple[int, ...]
  bos_id: Optional[int] = None  # kept first: a critic's prompt starts where the prompt did

  def players(self, m: int) -> Tuple[str, ...]:
    """The roles answering in debate round ``m`` (0 the generation round)."""
    return self.agents if m == 0 else self.critics


class Round(NamedTuple):
  """One debate round of every agent, stacked: prompts [N, B, P], answers [N, B, L]."""
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array


def unlabelled(batch: Mapping[str, jax.Array]) -> Tuple[jax.Array, jax.Array]:
  """The prompts of a batch: all the debate reads. Its answers and demonstrations are the
  labels this recipe works without."""
  return batch["prompt_tokens"], batch["prompt_mask"].astype(bool)


def answer_keys(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Answers comparable by equality: tokens where sampled (the stop too), -1 after."""
  return jnp.where(mask, tokens, -1)


def same_answers(keys: jax.Array) -> jax.Array:
  """[N, N, B]: whether answers i and j of ``keys`` [N, B, L] are the same."""
  return jnp.all(keys[:, None] == keys[None, :], axis=-1)


def consensus(keys: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The majority of N answers ``keys`` [N, B, L]: (its keys [B, L], the agent [B] that
  first gave it, its votes [B]). A tie goes to the lowest agent among the most voted, and
  counts 0 votes: two answers with as many votes each are no consensus."""
  same = same_answers(keys)
  votes = same.sum(axis=1)
  pick = jnp.argmax(votes, axis=0)
  top = jnp.max(votes, axis=0)
  chosen = jnp.take_along_axis(same, pick[None, None, :], axis=0)[0]  # [N, B]: agree with it
  rival = jnp.max(jnp.where(chosen, 0, votes), axis=0)
  return (jnp.take_along_axis(keys, pick[None, :, None], axis=0)[0], pick,
          jnp.where(top > rival, top, 0))


def agrees(keys: jax.Array, agreed: jax.Array) -> jax.Array:
  """[N, B]: each answer of ``keys`` [N, B, L] is the consensus ``agreed`` [B, L]."""
  return jnp.all(keys == agreed[None], axis=-1)


def distinct_share(keys: jax.Array) -> jax.Array:
  """[B]: (distinct answers among the N of ``keys`` [N, B, L] - 1) / (N - 1)."""
  N = keys.shape[0]
  same = same_answers(keys)
  earlier = jnp.tril(jnp.ones((N, N), bool), k=-1)[:, :, None]     # j < i
  new = ~jnp.any(same & earlier, axis=1)                            # [N, B]
  return (new.sum(axis=0) - 1) / max(N - 1, 1)


def critic_input(prompt_tokens: jax.Array, prompt_mask: jax.Array, previous: Round, n: int,
                 spec: DebateSpec) -> Tuple[jax.Array, jax.Array]:
  """Critic ``n``'s prompt, left-packed: the previous round's answers (each without its
  stop), agent n's first and the rest in turn, the separator between them, the text before
  the question, then the prompt; a prompt's BOS stays first."""
  N, B = previous.tokens.shape[:2]
  parts = []
  if spec.bos_id is not None:
    is_bos = prompt_mask & (prompt_tokens == spec.bos_id)
    parts.append((jnp.full((B, 1), spec.bos_id, jnp.int32), jnp.any(is_bos, axis=1)[:, None]))
    prompt_mask = prompt_mask & ~is_bos
  for k in range(N):
    j = (n + k) % N
    if k:
      parts.append(judges.constant(spec.separator_ids, B))
    parts.append((previous.tokens[j], judges.without_stop(previous.tokens[j], previous.mask[j],
                                                          spec.stop_ids)))
  parts += [judges.constant(spec.before_question_ids, B), (prompt_tokens, prompt_mask)]
  return judges.left_pack(parts)


def _answer(params: Mapping[str, Any], players: Sequence[str], tokens: jax.Array,
            mask: jax.Array, rng: jax.Array, spec: DebateSpec, sampling) -> sampler.Samples:
  """Each player's sample of its own prompt ([N, B, P] rows): one sampler call per role, on
  the rows of every part it plays."""
  N, B = tokens.shape[:2]
  out: List[Any] = [None] * N
  for r, role in enumerate(dict.fromkeys(players)):
    slots = [n for n, p in enumerate(players) if p == role]
    flat = lambda x: x[jnp.asarray(slots)].reshape((len(slots) * B,) + x.shape[2:])
    s = sampler.sample(params[role], flat(tokens), flat(mask), jax.random.fold_in(rng, r),
                       spec.models[role], sampling, spec.pad_id)
    for i, n in enumerate(slots):
      out[n] = jax.tree.map(lambda x: x[i * B:(i + 1) * B], s)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def debate(params: Mapping[str, Any], prompt_tokens: jax.Array, prompt_mask: jax.Array,
           rng: jax.Array, spec: DebateSpec, sampling=None) -> List[Round]:
  """Every debate round of every agent on the prompts [B, P]."""
  sampling = sampling or spec.sampling
  N = len(spec.agents)
  tile = lambda x: jnp.broadcast_to(x[None], (N,) + x.shape)
  prompts = (tile(prompt_tokens), tile(prompt_mask))
  out: List[Round] = []
  for m in range(spec.rounds):
    if m:
      prompts = tuple(jnp.stack(x) for x in zip(*[
          critic_input(prompt_tokens, prompt_mask, out[-1], n, spec) for n in range(N)]))
    s = _answer(params, spec.players(m), *prompts, jax.random.fold_in(rng, m), spec, sampling)
    out.append(Round(prompts[0], prompts[1], s.tokens, s.mask, s.logprobs))
  return out


def training_rows(rounds: Sequence[Round], spec: DebateSpec, rng: jax.Array,
                  kept_share: float, min_votes: int
                  ) -> Tuple[Dict[str, Dict[str, jax.Array]], Dict[str, jax.Array]]:
  """Each role's SFT rows of one debate ({role: sequences}) and their counts: generation
  agent n's first answers that are the consensus, critic n's later answers that are, those
  that kept an agreeing answer of its counterpart's with probability ``kept_share``; only
  where the consensus has ``min_votes`` votes or more. A row left out keeps no token."""
  keys = [answer_keys(r.tokens, r.mask) for r in rounds]
  agreed, _, votes = consensus(keys[-1])
  settled = votes >= min_votes
  agree = [agrees(k, agreed) & settled[None] for k in keys]
  parts: Dict[str, List[Dict[str, jax.Array]]] = {}
  counts = {"rows/generation": jnp.mean(agree[0].astype(jnp.float32))}
  corrected_n = kept_n = jnp.zeros((), jnp.float32)
  for m, r in enumerate(rounds):
    keep = agree[m]
    if m:
      corrected = keep & ~agree[m - 1]
      kept = keep & agree[m - 1]
      kept = kept & jax.random.bernoulli(jax.random.fold_in(rng, m), kept_share, kept.shape)
      keep = corrected | kept
      corrected_n, kept_n = corrected_n + corrected.sum(), kept_n + kept.sum()
    for n, role in enumerate(spec.players(m)):
      parts.setdefault(role, []).append({
          "prompt_tokens": r.prompt_tokens[n], "prompt_mask": r.prompt_mask[n],
          "completion_tokens": r.tokens[n], "mask": r.mask[n] & keep[n][:, None]})
  if len(rounds) > 1:
    posed = float(agree[0].size * (len(rounds) - 1))
    counts["rows/critic_corrected"] = corrected_n / posed
    counts["rows/critic_kept"] = kept_n / posed
  counts["agreement/settled"] = jnp.mean(settled.astype(jnp.float32))
  counts["agreement/first_round"] = counts["rows/generation"]
  counts["agreement/last_round"] = jnp.mean(agree[-1].astype(jnp.float32))
  return {role: offline.stack_sequences(p, spec.pad_id) for role, p in parts.items()}, counts


def debate_step(state, batch, rng, frozen, *, spec: DebateSpec,
                learners: Mapping[str, offline.OfflineSpec], kept_share: float,
                min_votes: int):
  """One step: the debate on the batch's prompts, the consensus, every role's update on its
  own rows (each from the step's params)."""
  rng = jax.random.fold_in(rng, state["step"])
  debate_rng, keep_rng, learn_rng = jax.random.split(rng, 3)
  trained = state_lib.params_of(state)
  roles = next(iter(learners.values())).binding.roles
  params = {r: roles_lib.effective_params(r, trained, frozen, roles) for r in learners}
  rounds = debate(params, *unlabelled(batch), debate_rng, spec)
  rows, metrics = training_rows(rounds, spec, keep_rng, kept_share, min_votes)
  new_roles, tokens = {}, jnp.zeros((), jnp.float32)
  for i, (role, learner) in enumerate(learners.items()):
    own = {"step": state["step"], "roles": {role: state["roles"][role]}}
    learned, m = offline.learn(own, rows[role], jax.random.fold_in(learn_rng, i), frozen,
                               learner)
    # A role with no row this step does not move: no momentum, decay or schedule step.
    any_row = m["tokens"] > 0
    new_roles.update(jax.tree.map(lambda new, old: jnp.where(any_row, new, old),
                                  learned["roles"], own["roles"]))
    m["updated"] = any_row.astype(jnp.float32)
    tokens = tokens + m.pop("tokens")
    metrics.update({f"{role}/{k}": v for k, v in m.items()})
  metrics["tokens"] = tokens
  return {"step": state["step"] + 1, "roles": {**state["roles"], **new_roles}}, metrics


def format_step(state, batch, rng, frozen, *, spec: DebateSpec, learner: offline.OfflineSpec):
  """One step of the debate's form: the policy answers each prompt as every agent, and one
  SFT update learns the demonstration after the bare prompt and after the critic's prompt
  quoting those answers."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, learn_rng = jax.random.split(rng)
  role = learner.binding.role("policy")
  params = {role: roles_lib.effective_params(role, state_lib.params_of(state), frozen,
                                             learner.binding.roles)}
  N = len(spec.agents)
  one = dataclasses.replace(spec, agents=(role,) * N, critics=(role,) * N, rounds=1,
                            models={role: learner.binding.roles[role].model})
  first = debate(params, *unlabelled(batch), sample_rng, one)[0]
  tokens, mask = critic_input(*unlabelled(batch), first, 0, spec)
  demo = offline.to_sequences(batch, "demonstrations")
  rows = offline.stack_sequences([demo, {**demo, "prompt_tokens": tokens, "prompt_mask": mask}],
                                 spec.pad_id)
  state, metrics = offline.learn(state, rows, learn_rng, frozen, learner)
  return {**state, "step": state["step"] + 1}, metrics


def make_step(layout: StepLayout, step_fn=None, **static) -> Any:
  return jit_step(functools.partial(step_fn or debate_step, **static), layout)


def debate_spec(cfg: ExperimentConfig, settings: DebateSettings, models, pad_id: int,
                encode, stop_ids: Tuple[int, ...], bos_id: Optional[int]) -> DebateSpec:
  return DebateSpec(agents=settings.agents, critics=settings.critics,
                    rounds=settings.debate_rounds, models=models, sampling=cfg.sampling,
                    pad_id=pad_id, separator_ids=encode(settings.separator),
                    before_question_ids=encode(settings.before_question), stop_ids=stop_ids,
                    bos_id=bos_id)


def agent_roles(cfg: ExperimentConfig, phase, settings: DebateSettings, specs=role_specs
                ) -> roles_lib.RoleSpecs:
  """Every agent's role as round ``phase`` trains it (its optimizer, its adapter)."""
  out: Dict[str, roles_lib.RoleSpec] = {}
  for role in settings.roles:
    out.update(specs(cfg, dataclasses.replace(phase, slots=(("policy", role),))))
  return {k: v for k, v in out.items() if k in settings.roles}


def learners_for(phase, roles: roles_lib.RoleSpecs, settings: DebateSettings
                 ) -> Dict[str, offline.OfflineSpec]:
  out = {}
  for role in settings.roles:
    learner = offline.OfflineSpec(update.Binding(
        phase.objective.objective, phase.objective.hparams, roles, {"policy": role},
        phase.epochs, phase.minibatches))
    learner.check()
    out[role] = learner
  return out


def sequence_logprob(params, model: tfm.ModelConfig, prompt_tokens: jax.Array,
                     prompt_mask: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """[B]: log p(answer | prompt) of every row under ``params``, in one forward pass."""
  seq, seq_mask = judges.left_pack([(prompt_tokens, prompt_mask), (tokens, mask)])
  logp = tfm.token_logprobs(params, seq, seq_mask, model)
  # The answer is the row's last mask.sum() tokens: left-packed, nothing comes after it.
  T = seq.shape[1]
  last = jnp.arange(T - 1)[None] >= T - 1 - mask.sum(axis=1)[:, None]
  return jnp.sum(jnp.where(last, logp, 0.0), axis=1)


def evaluator(runtime: Runtime, spec: DebateSpec, gold: reward_base.RewardTerm):
  """``for_roles(roles) -> evaluate(state, frozen)``: the held-out metrics of the module
  docstring, on the test split and each extra one (``eval/<split>/...``)."""
  greedy = dataclasses.replace(spec.sampling, temperature=0.0)
  N = len(spec.agents)

  def right_of(batch, tokens, mask):
    rollouts = {"prompt_tokens": batch["prompt_tokens"], "prompt_mask": batch["prompt_mask"],
                "completion_tokens": tokens, "completion_mask": mask,
                "answer_tokens": batch["answer_tokens"], "answer_mask": batch["answer_mask"]}
    return reward_base.score_in_graph((gold,), rollouts, {})[gold.key] > 0.5

  def per_row(params, batch, rng):
    prompts = unlabelled(batch)
    rounds = debate(params, *prompts, rng, spec)
    right = jnp.stack([jnp.stack([right_of(batch, r.tokens[n], r.mask[n]) for n in range(N)],
                                 axis=1) for r in rounds], axis=2)        # [B, N, M]
    majority = []
    for m, r in enumerate(rounds):
      _, pick, _ = consensus(answer_keys(r.tokens, r.mask))
      majority.append(jnp.take_along_axis(right[:, :, m], pick[:, None], axis=1)[:, 0])
    greedy_right = {}  # greedy answers are one per role, however many parts it plays
    for n, role in enumerate(dict.fromkeys(spec.agents)):
      s = sampler.sample(params[role], *prompts, jax.random.fold_in(rng, 1000 + n),
                         spec.models[role], greedy, spec.pad_id)
      greedy_right[role] = right_of(batch, s.tokens, s.mask)
    first, kl = rounds[0], []
    for i in range(N):
      own = jnp.sum(jnp.where(first.mask[i], first.logprobs[i], 0.0), axis=1)
      for j in range(N):
        if i != j:
          role = spec.agents[j]
          kl.append(own - sequence_logprob(params[role], spec.models[role], *prompts,
                                           first.tokens[i], first.mask[i]))
    return {"right": right, "majority": jnp.stack(majority, axis=1),             # [B, M]
            "diversity": jnp.stack([distinct_share(answer_keys(r.tokens, r.mask))
                                    for r in (rounds[0], rounds[-1])], axis=1),
            "greedy": jnp.stack([greedy_right[r] for r in spec.agents], axis=1),  # [B, N]
            "kl": jnp.stack(kl, axis=1)}                                        # [B, N(N-1)]

  def summary(rows):
    return summarize(rows, N)

  return runtime.per_row_evaluator(per_row, summary,
                                   tuple(dict.fromkeys(spec.agents + spec.critics)))


def summarize(rows: Mapping[str, np.ndarray], agents: int) -> Dict[str, float]:
  """The evaluator's per-prompt arrays as the module's metrics."""
  right, majority = rows["right"].astype(bool), rows["majority"].astype(bool)  # [B,N,M], [B,M]
  M = right.shape[2]
  out = {"eval/debate_accuracy": float(majority[:, -1].mean()),
         "eval/answer_diversity": float(rows["diversity"][:, 0].mean()),
         "eval/final_diversity": float(rows["diversity"][:, 1].mean()),
         "eval/agent_kl": float(rows["kl"].mean())}
  for m in range(M):
    out[f"eval/round{m + 1}_accuracy"] = float(right[:, :, m].mean())
    out[f"eval/round{m + 1}_majority"] = float(majority[:, m].mean())
  for n in range(agents):
    out[f"eval/agent{n}_accuracy"] = float(right[:, n, 0].mean())
    out[f"eval/agent{n}_greedy"] = float(rows["greedy"][:, n].mean())
  if M > 1:
    before, after = right[:, :, 0], right[:, :, 1]
    out["eval/critic_fixed"] = float(after[~before].mean()) if (~before).any() else 0.0
    out["eval/critic_broken"] = float((~after[before]).mean()) if before.any() else 0.0
  return out


def gold_term(settings: DebateSettings, tokenizer) -> reward_base.RewardTerm:
  reward = reward_base.get(settings.gold)
  term = reward_base.RewardTerm(settings.gold, settings=reward.settings())
  return dataclasses.replace(term.resolve(tokenizer), rows="all")


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  settings: DebateSettings = cfg.recipe.settings
  phases = cfg.phase_configs
  order = (list(settings.before) + ([settings.format_phase] if settings.format_phase else [])
           + list(settings.rounds))
  runtime = Runtime(cfg, workdir, [(name, phases[name].steps) for name in order])
  tokenizer = runtime.tokenizer
  stops = tuple(runtime.cfg.sampling.stop_tokens or (tokenizer.eos_id,))
  encode = lambda text: tuple(int(i) for i in tokenizer.encode(text)) if text else ()
  models = {role: runtime.model(role) for role in settings.roles}
  spec = debate_spec(runtime.cfg, settings, models, tokenizer.pad_id, encode, stops,
                     tokenizer.bos_id)
  runtime.evaluate_initial(phases[order[0]].role("policy"))
  for name in settings.before:
    runtime.run_phase(name)
  if settings.format_phase:
    runtime.run(runtime.build_offline_phase(
        settings.format_phase,
        lambda layout, learner: make_step(layout, format_step, spec=spec, learner=learner)))
  evaluate = evaluator(runtime, spec, gold_term(settings, tokenizer))
  for i, name in enumerate(settings.rounds):
    round_cfg = runtime.cfg.phase_configs[name]
    roles = agent_roles(runtime.cfg, round_cfg, settings,
                        specs=lambda _, phase: runtime.role_specs(phase))
    learners = learners_for(round_cfg, roles, settings)
    runtime.run(runtime.build_phase(
        name, round_cfg, roles=roles,
        make_step=lambda layout: make_step(layout, spec=spec, learners=learners,
                                           kept_share=settings.kept_share,
                                         min_votes=settings.min_votes),
        also_evaluate=evaluate(roles), also_evaluate_at_start=i == 0))
  parts = (f"{len(settings.agents)} agents in {len(set(settings.agents))} models"
           + (f", {len(settings.critics)} critics in {len(set(settings.critics))}"
              if settings.critics else ", no debate"))
  summary = runtime.finish(f"Multiagent debate finetuning: {parts}, {settings.debate_rounds} "
                           f"debate rounds, on {cfg.data.task}")
  if jax.process_index() == 0:
    plot_debate(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "debate.png"))
  return summary


CURVES = (("accuracy (held out, sampled)", ("eval/debate_accuracy", "eval/round1_majority",
                                            "eval/round1_accuracy", "eval/agent0_greedy")),
          ("diversity across agents", ("eval/answer_diversity", "eval/final_diversity")),
          ("agents' pairwise KL (nats)", ("eval/agent_kl",)))


def curves(records: Sequence[Mapping[str, Any]]) -> Dict[str, List[Tuple[int, float]]]:
  """(step, value) of every metric CURVES plots, in order."""
  out: Dict[str, List[Tuple[int, float]]] = {}
  for r in records:
    for _, keys in CURVES:
      for key in keys:
        if key in r:
          out.setdefault(key, []).append((int(r["step"]), float(r[key])))
  return out


def plot_debate(metrics_path: str, png_path: str) -> None:
  """Held-out accuracy, diversity and the agents' divergence over the rounds' steps."""
  points = curves(metrics_lib.read_jsonl(metrics_path))
  if not points:
    return
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(13, 4), layout="constrained")
  FigureCanvasAgg(fig)
  for ax, (title, keys) in zip(fig.subplots(1, len(CURVES)), CURVES):
    for key in keys:
      if key in points:
        ax.plot(*zip(*points[key]), "o-", label=key[len("eval/"):])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  metrics_lib.save_png(fig, png_path, dpi=100)


def dry_run_program(cfg: ExperimentConfig) -> dry_run.RecipeProgram:
  """The rounds' one program for ``--dry_run``: every agent's and critic's sampling and every
  role's update, on abstract inputs, with the separator and question as pad ids of their
  real length (values do not change shapes)."""
  settings: DebateSettings = cfg.recipe.settings
  phase = cfg.phase_configs[settings.rounds[0]]
  roles = agent_roles(cfg, phase, settings)
  tokenizer = tokenizer_lib.tokenizer_for(cfg.data)
  pad = dry_run.PAD_ID
  encode = lambda text: (pad,) * len(tokenizer.encode(text)) if text else ()
  stops = tuple(cfg.sampling.stop_tokens or (pad + 2,))
  spec = debate_spec(cfg, settings, {r: roles[r].model for r in roles}, pad, encode, stops,
                     None if tokenizer.bos_id is None else pad + 1)
  learners = learners_for(phase, roles, settings)
  N, prompt, new = len(settings.agents), cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  critic_prompt = (prompt + N * new + (N - 1) * len(spec.separator_ids)
                   + len(spec.before_question_ids) + (spec.bos_id is not None))
  # The KV cache reported is the largest sampling call's: one per role and debate round, of
  # the rows of every part the role plays, at that round's prompt width, in its own model.
  def cache_size(call):
    role, rows, slots = call
    m = roles[role].model
    return rows * slots * m.n_layers * m.n_kv_heads * m.head_dim * jnp.dtype(m.dtype).itemsize
  B = phase.rows_per_step
  calls = [(r, B * settings.agents.count(r), prompt + new) for r in dict.fromkeys(settings.agents)]
  calls += [(r, B * settings.critics.count(r), critic_prompt + new)
            for r in dict.fromkeys(settings.critics)]
  role, rollouts, slots = max(calls, key=cache_size)
  return dry_run.RecipeProgram(
      name="debate_step", roles=roles,
      make_step=lambda layout: make_step(layout, spec=spec, learners=learners,
                                         kept_share=settings.kept_share,
                                         min_votes=settings.min_votes),
      rows=B, rollouts=rollouts, policy=role, cache_slots=slots)


RECIPE = base.register(base.Recipe("debate", DebateSettings, run, dry_run_program))
