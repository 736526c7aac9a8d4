"""Self-Rewarding language models (Yuan et al. 2024, "Self-Rewarding Language Models"): one
model writes responses, judges them with an additive rubric ("Score: k"), and its best and
worst responses to each prompt by its own judgement train it by DPO, round after round.

  before      the warm start: SFT on the task's demonstrations (the paper's IFT data)
  seed_phase  the judge's seed (EFT): each step the model samples ``group_size`` responses
              to its prompts, ``seed_reward`` labels them (the paper's human-ranked seed;
              here the gold rubric on the train prompts), and one SFT update learns the
              demonstrations again, for every sample the judgement "Score: k" after the
              rubric template (``judge.template``), and the meta-judge's answer between the
              gold judgement and another: the model as its own judge
  rounds      online-DPO phases (``objectives/online_dpo.py``): the policy samples a group
              per prompt, a ``judge_score`` reward scores each by writing its judgement, and
              the best and the worst form the pair. Bind the judge and the reference to a
              role copied from the policy as the round starts and round k is M_k judging
              while M_{k+1} learns: Self-Rewarding (configs/self_rewarding_rubric.py). The
              same recipe runs the ablations: a judge frozen after the seed, and the gold
              judge as the reward (``oracle``), the ceiling.

Meta-Rewarding (Wu et al. 2024, "Meta-Rewarding Language Models"; ``meta_rounds``) adds the
judge's own training to each round step, in the same program: a share of the step's
responses is judged twice by the round's judge (at temperature 1), the same model as
meta-judge reads both judgements after the judge's question and says which is right
(``rewards/judges.py:meta_judge``, both orders averaged), and an online-DPO update prefers the
one it picked. The seed teaches the meta-judge in every arm (the gold judgement against
another score, in a random order), so the arms differ only from round 1 on.

The gold judge (``gold``, a registered in-graph reward) is read by the seed phase, as its
labels, and by the evaluator; the recipe refuses a round that reads it, as a reward or a
monitor, unless ``oracle`` says that is the point.

Held out, the evaluator logs beside the policy's own evaluation:

  eval/gold_full_marks      the share of greedy responses with every point (the mean points
                            are the run's own ``train.eval_judges``: eval/points_greedy)
  eval/gold_<criterion>     per criterion, where the gold judge has them (the rubric task's)
  eval/sampled_full_marks   over ``eval_samples`` responses per prompt, sampled as in training
  eval/judge_exact          the policy judging its own samples: the share of judgements
                            equal to the gold points
  eval/judge_pairwise       of two samples of one prompt with different gold points, the
                            share the judge orders the same way (a tie counts half)
  eval/judge_overscore      the mean of judgement minus gold, in points
  eval/judge_well_formed    the share of judgements with a readable score
  eval/meta_judge_accuracy  the meta-judge's pick between the gold judgement of a sample and
                            another score (both orders averaged): right when it picks gold
  eval/judge_length_bias    the correlation of (judgement - gold) with the response's length:
                            a judge that favours longer answers shows it here
  eval/response_length      the sampled responses' mean length in tokens
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.data import tokenizer as tokenizer_lib
from rlalign.recipes import base
from rlalign.rewards import base as reward_base
from rlalign.rewards import judges
from rlalign.rewards import rubric as rubric_reward
from rlalign.rl import dry_run, iteration, offline
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import StepLayout, jit_step
from rlalign.rl.runtime import Runtime, fused_spec, role_specs

RUBRIC = judges.Template(
    prefix="Review the user's request and the response.\nRequest: ",
    middle="\nResponse: ",
    suffix=("\nAward one point for each: the response is all digits; it has the requested "
            "length; it starts with the requested first digit; it ends with the requested "
            "last digit; it contains the requested digit. Reply \"Score: <points>\".\n"))


@dataclasses.dataclass(frozen=True)
class SelfRewardingSettings:
  before: Tuple[str, ...] = ()         # phases run first, in order (the IFT warm start)
  seed_phase: str = "judge_seed"       # an sft phase: the EFT seed, on the model's samples
  seed_reward: str = "rubric_points"   # the seed phase's reward term that labels them
  rounds: Tuple[str, ...] = ()         # online-DPO phases, in order
  judge: judges.JudgeScoreSettings = judges.JudgeScoreSettings(
      role="policy", template=RUBRIC, max_score=5, max_new_tokens=10)
  gold: str = "rubric_points"          # the gold judge: seed labels and evaluation only
  oracle: bool = False                 # the rounds may train on the gold judge (a ceiling)
  eval_samples: int = 4
  # The meta-judge: asked which of two judgements of one response is right. The seed teaches
  # it (the gold judgement against another score, in a random order) in every arm.
  meta: judges.MetaJudgeSettings = judges.MetaJudgeSettings()
  # Meta-Rewarding: each round step also poses a share ``meta_share`` of its responses to the
  # round's judge twice, the meta-judge (the same role) picks the better judgement, and DPO
  # trains the policy's judging on that pair, beside the responses' pair.
  meta_rounds: bool = False
  meta_share: float = 0.25

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    phases = cfg.phase_configs
    if not self.rounds:
      raise ValueError(f"{prefix}.rounds must name the online-DPO phases, in order")
    for key, names in (("before", self.before), ("rounds", self.rounds),
                       ("seed_phase", (self.seed_phase,))):
      unknown = [p for p in names if p not in phases]
      if unknown:
        raise ValueError(f"{prefix}.{key} names {unknown}, which are not in phases "
                         f"({sorted(phases)})")
    seed = phases[self.seed_phase]
    if seed.objective.objective.batch != "demonstrations":
      raise ValueError(f"{prefix}.seed_phase {self.seed_phase!r} must be an sft phase (it learns "
                       f"demonstrations and judgements); its objective is {seed.objective.name!r}")
    if self.seed_reward not in [t.key for t in seed.rewards]:
      raise ValueError(f"{prefix}.seed_reward {self.seed_reward!r} is not one of "
                       f"phases.{self.seed_phase}.rewards")
    if seed.group_size < 1 or seed.batch_size % seed.group_size:
      raise ValueError(f"phases.{self.seed_phase}.batch_size ({seed.batch_size}) must be a "
                       f"multiple of its group_size ({seed.group_size})")
    self.judge.validate(f"{prefix}.judge")
    for name in self.rounds:
      phase = phases[name]
      if phase.objective.name != "online_dpo":
        raise ValueError(f"phases.{name} is a round: its objective must be online_dpo, not "
                         f"{phase.objective.name!r}")
      reads_gold = [t.key for t in phase.rewards + phase.monitors if t.name == self.gold]
      if reads_gold and not self.oracle:
        raise ValueError(f"phases.{name} reads the gold judge {self.gold!r} ({reads_gold[0]}), "
                         "which only the seed and the evaluator may; set "
                         f"{prefix}.oracle=True for the arm that trains on it")
      for term in phase.rewards:
        if term.name == "judge_score" and (term.settings.template != self.judge.template
                                           or term.settings.marker != self.judge.marker
                                           or term.settings.max_score != self.judge.max_score):
          raise ValueError(f"phases.{name}.rewards.{term.key} asks its judge in other words "
                           f"than {prefix}.judge, which the seed taught: give both the same "
                           "template, marker and max_score")
    self.meta.validate(f"{prefix}.meta")
    if self.meta_rounds:
      for name in self.rounds:
        phase = phases[name]
        if self.oracle or [t.name for t in phase.rewards] != ["judge_score"]:
          raise ValueError(f"{prefix}.meta_rounds trains the judging that scores each round: "
                           f"phases.{name}.rewards must be one judge_score term (and "
                           f"{prefix}.oracle False)")
        if not 0.0 < self.meta_share <= 1.0 or posed(phase, self.meta_share) < 1:
          raise ValueError(f"{prefix}.meta_share ({self.meta_share}) must pose at least one of "
                           f"phases.{name}'s {phase.batch_size} responses, and at most all")
        if phase.dynamic_sampling or phase.rl().lsc_terms or phase.rl().estimator.greedy_baseline:
          raise ValueError(f"phases.{name}: a Meta-Rewarding round supports neither dynamic "
                           "sampling, lsc rewards nor a greedy baseline")
    if self.eval_samples < 2:
      raise ValueError(f"{prefix}.eval_samples must be >= 2 (the pairwise agreement), got "
                       f"{self.eval_samples}")


def posed(phase, share: float) -> int:
  """Responses a Meta-Rewarding round step poses to its judge."""
  return int(phase.batch_size * share)


class Judgements(NamedTuple):
  """"<marker> k" and the stop for every k in 0..max_score, right-padded: [K + 1, W]."""
  tokens: jax.Array
  mask: jax.Array

  def of(self, points: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """The judgement "<marker> points[i]" of every row: (tokens, mask) [B, W]."""
    return jnp.asarray(self.tokens)[points], jnp.asarray(self.mask)[points]


def judgement_ids(judge: judges.JudgeScoreSettings, tokenizer: Any, stop: int) -> Judgements:
  """The seed's target judgements, spelled as the judge's parser reads them."""
  rows = []
  for k in range(judge.max_score + 1):
    if judge.parse == "graph":  # exactly the ids parse_score looks for
      ids = list(judge.marker_ids) + list(judge.space_ids) + [judge.digit_ids[k]]
    else:
      ids = [int(i) for i in tokenizer.encode(f"{judge.marker} {k}")]
    rows.append(ids + [stop])
  width = max(len(r) for r in rows)
  tokens = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    tokens[i, :len(r)], mask[i, :len(r)] = r, True
  return Judgements(tokens, mask)


def other_points(points: jax.Array, rng: jax.Array, max_score: int) -> jax.Array:
  """A score other than each of ``points``, uniformly."""
  shift = jax.random.randint(rng, points.shape, 1, max_score + 1)
  return (points + shift) % (max_score + 1)


def meta_rows(judge_tokens, judge_mask, points, rng, *, targets: Judgements,
              meta: judges.MetaJudgeSettings):
  """The meta-judge's seed rows: each judge input with the gold judgement and another, in a
  random order, answered by the position of the gold one."""
  order_rng, other_rng = jax.random.split(rng)
  wrong = other_points(points, other_rng, targets.tokens.shape[0] - 1)
  gold_first = jax.random.bernoulli(order_rng, 0.5, points.shape)
  gold, other = targets.of(points), targets.of(wrong)
  pick = lambda c, x, y: tuple(jnp.where(c[:, None], u, v) for u, v in zip(x, y))
  tokens, mask = judges.meta_input((judge_tokens, judge_mask), pick(gold_first, gold, other),
                                   pick(gold_first, other, gold), meta)
  verdict = jnp.where(gold_first, meta.first_id, meta.second_id).astype(jnp.int32)
  stop = jnp.full_like(verdict, meta.stop_ids[0])
  return {"prompt_tokens": tokens, "prompt_mask": mask,
          "completion_tokens": jnp.stack([verdict, stop], axis=1),
          "mask": jnp.ones((verdict.shape[0], 2), bool)}


def seed_step(state, batch, rng, frozen, *, sampling: iteration.IterationSpec,
              sft: offline.OfflineSpec, seed_term: reward_base.RewardTerm,
              judge: judges.JudgeScoreSettings, targets: Judgements,
              meta: judges.MetaJudgeSettings):
  """One EFT step: sample, label by the seed reward, SFT on demonstrations and judgements."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, learn_rng = jax.random.split(rng)
  policy = iteration.policy_params(state_lib.params_of(state), frozen, sampling)
  rows, gold = seed_rows(policy, batch, sample_rng, sampling=sampling, seed_term=seed_term,
                         judge=judge, targets=targets, meta=meta)
  state, metrics = offline.learn(state, rows, learn_rng, frozen, sft)
  metrics = {**metrics, "seed_points": jnp.mean(gold)}
  return {**state, "step": state["step"] + 1}, metrics


def seed_rows(policy, batch, rng, *, sampling: iteration.IterationSpec,
              seed_term: reward_base.RewardTerm, judge: judges.JudgeScoreSettings,
              targets: Judgements, meta: judges.MetaJudgeSettings):
  """The seed's SFT rows, the demonstrations, then one judgement per sample, then one
  meta-judgement per sample; and each sample's seed reward [B * G]."""
  sample_rng, meta_rng = jax.random.split(rng)
  rollouts = iteration.rollout(policy, batch, sample_rng, sampling)
  gold = reward_base.score_in_graph((seed_term,), rollouts, {})[seed_term.key]
  points = jnp.clip(jnp.round(gold * judge.max_score), 0, judge.max_score).astype(jnp.int32)
  tokens, mask = judges.judge_input(rollouts, judge.template)
  target_tokens, target_mask = targets.of(points)
  judged = {"prompt_tokens": tokens, "prompt_mask": mask, "completion_tokens": target_tokens,
            "mask": target_mask}
  metas = meta_rows(tokens, mask, points, meta_rng, targets=targets, meta=meta)
  return offline.stack_sequences([offline.to_sequences(batch, "demonstrations"), judged, metas],
                    sampling.pad_id), gold


def make_seed_step(layout: StepLayout, **static) -> Any:
  return jit_step(functools.partial(seed_step, **static), layout)


def meta_round_step(state, batch, rng, frozen, *, actor: iteration.IterationSpec,
                    judging: iteration.IterationSpec, judge: judges.JudgeScoreSettings,
                    posed: int):
  """One Meta-Rewarding round step: the responses' online-DPO update, exactly a plain
  round's (the same keys), then the judge's: ``posed`` of the responses judged twice by the
  round's judge, and the meta-judge's pick of the two is chosen over the other (``judging``:
  online DPO on groups of two judgements, rewarded by ``meta_judge``)."""
  trained = state_lib.params_of(state)
  new, metrics, rollouts = iteration.rl_step_and_rollouts(state, batch, rng, frozen, actor)
  step_rng = jax.random.fold_in(rng, state["step"])
  judge_rng, judge_learn_rng = jax.random.split(jax.random.fold_in(step_rng, 3))
  asked = {k: v[:posed] for k, v in rollouts.items()}
  tokens, mask = judges.judge_input(asked, judge.template)
  written = iteration.rollout(
      roles_lib.effective_params(judge.role, trained, frozen, actor.binding.roles),
      {"prompt_tokens": tokens, "prompt_mask": mask, "answer_tokens": asked["answer_tokens"],
       "answer_mask": asked["answer_mask"]}, judge_rng, judging,
      model=actor.binding.roles[judge.role].model)
  meta_scores = iteration.score(written, trained, frozen, judging)
  judged, judge_metrics = iteration.learn({"step": state["step"], "roles": new["roles"]},
                                          written, meta_scores, judge_learn_rng, frozen, judging)
  metrics.update({f"judge/{k}": v for k, v in judge_metrics.items() if k != "tokens"})
  metrics["tokens"] = metrics["tokens"] + judge_metrics["tokens"]
  return {**new, "roles": judged["roles"]}, metrics


def make_meta_round_step(layout: StepLayout, **static) -> Any:
  return jit_step(functools.partial(meta_round_step, **static), layout)


def judging_spec(actor: iteration.IterationSpec, judge: judges.JudgeScoreSettings,
                 meta: judges.MetaJudgeSettings, posed: int) -> iteration.IterationSpec:
  """The judge's half of a Meta-Rewarding round: judgements sampled two per response (at
  temperature 1, so they can differ), paired by the meta-judge, by the round's objective."""
  sampling = dataclasses.replace(actor.sampling, max_new_tokens=judge.max_new_tokens,
                                 temperature=1.0)
  term = reward_base.RewardTerm("meta_judge", settings=dataclasses.replace(meta,
                                                                           role=judge.role))
  rl = dataclasses.replace(actor.rl, batch_size=2 * posed, group_size=2, minibatches=1,
                           rewards=(term,), monitors=(), sample_from="",
                           response_buckets=())
  return dataclasses.replace(actor, sampling=sampling, rl=rl)


def self_judge(params, model, rollouts, rng, judge: judges.JudgeScoreSettings):
  """The policy's greedy judgement of each row: (points [B] floats, readable [B] bools)."""
  out = judges.write_judgement(params, model, rollouts, rng, judge)
  return judges.parse_score(out.tokens, out.mask, judge)


def evaluator(runtime: Runtime, spec: iteration.IterationSpec, settings: SelfRewardingSettings,
              judge: judges.JudgeScoreSettings, gold: reward_base.RewardTerm,
              meta: judges.MetaJudgeSettings, targets: Judgements):
  """``for_roles(roles) -> evaluate(state, frozen)``: the held-out metrics of the module
  docstring."""
  N, model = settings.eval_samples, spec.model
  by_criterion = isinstance(gold.settings, rubric_reward.RubricSettings)

  def gold_of(rollouts):
    return reward_base.score_in_graph((gold,), rollouts, {})[gold.key] * judge.max_score

  def per_row(params, batch, rng):
    prompts = {k: batch[k] for k in ("prompt_tokens", "prompt_mask", "answer_tokens",
                                     "answer_mask")}
    sampled = iteration.rollout(params, prompts, jax.random.fold_in(rng, 0), spec,
                                group_size=N)
    greedy = iteration.rollout(params, prompts, rng, spec, greedy=True)
    said, readable = self_judge(params, model, sampled, jax.random.fold_in(rng, 1), judge)
    length = judges.without_stop(sampled["completion_tokens"], sampled["completion_mask"],
                                 judge.template.stop_ids).sum(axis=1)
    B = batch["prompt_tokens"].shape[0]
    # The meta-judge: the gold judgement of each sample against another score.
    points = jnp.clip(jnp.round(gold_of(sampled)), 0, judge.max_score).astype(jnp.int32)
    wrong = other_points(points, jax.random.fold_in(rng, 2), judge.max_score)
    asked = judges.judge_input(sampled, judge.template)
    meta_right = judges.first_is_better(params, model, asked, targets.of(points),
                                        targets.of(wrong), meta) > 0.5
    out = {"greedy": gold_of(greedy), "sampled": gold_of(sampled).reshape(B, N),
           "meta_right": meta_right.reshape(B, N),
           "said": said.reshape(B, N), "readable": readable.reshape(B, N),
           "length": length.reshape(B, N).astype(jnp.float32)}
    if by_criterion:
      out["criteria"] = rubric_reward.criteria(greedy, gold.settings)
    return out

  def summary(rows: Mapping[str, np.ndarray]) -> Dict[str, float]:
    return summarize(rows, judge.max_score)

  return runtime.per_row_evaluator(per_row, summary, spec.policy)


def summarize(rows: Mapping[str, np.ndarray], max_score: int) -> Dict[str, float]:
  """The evaluator's per-prompt arrays as the module's metrics."""
  greedy, sampled = np.round(rows["greedy"]), np.round(rows["sampled"])
  said, readable = rows["said"], rows["readable"].astype(bool)
  said = np.where(readable, said, 0.0)  # judge_score's fallback reward is 0
  out = {"eval/gold_full_marks": float(np.mean(greedy == max_score)),
         "eval/sampled_full_marks": float(np.mean(sampled == max_score)),
         "eval/judge_exact": float(np.mean(readable & (said == sampled))),
         "eval/judge_overscore": float(np.mean(said - sampled)),
         "eval/judge_well_formed": float(readable.mean()),
         "eval/meta_judge_accuracy": float(rows["meta_right"].mean()),
         "eval/response_length": float(rows["length"].mean())}
  if "criteria" in rows:
    for name, hit in zip(("digits", "length", "first", "last", "has"), rows["criteria"].T):
      out[f"eval/gold_{name}"] = float(hit.mean())
  i, j = np.triu_indices(sampled.shape[1], k=1)
  differ = sampled[:, i] != sampled[:, j]
  sign = lambda x: np.sign(x[:, i] - x[:, j])
  agree = np.where(sign(said) == sign(sampled), 1.0, np.where(sign(said) == 0, 0.5, 0.0))
  out["eval/judge_pairwise"] = float(agree[differ].mean()) if differ.any() else float("nan")
  error, length = (said - sampled).reshape(-1), rows["length"].reshape(-1)
  spread = error.std() * length.std()
  out["eval/judge_length_bias"] = (float(np.mean((error - error.mean())
                                                 * (length - length.mean())) / spread)
                                   if spread > 0 else 0.0)
  return out


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  settings: SelfRewardingSettings = cfg.recipe.settings
  phases = cfg.phase_configs
  order = list(settings.before) + [settings.seed_phase] + list(settings.rounds)
  runtime = Runtime(cfg, workdir, [(name, phases[name].steps) for name in order])
  tokenizer = runtime.tokenizer
  stops = tuple(runtime.cfg.sampling.stop_tokens or (tokenizer.eos_id,))
  judge = settings.judge.resolve(tokenizer)
  judge = dataclasses.replace(judge, template=dataclasses.replace(judge.template,
                                                                  stop_ids=stops))
  meta = dataclasses.replace(settings.meta.resolve(tokenizer), stop_ids=stops)
  if judge.parse != "graph":
    raise ValueError("recipe.judge: the self-rewarding evaluator reads scores in-graph, which "
                     "needs one-token digits in this tokenizer")
  seed_cfg = runtime.cfg.phase_configs[settings.seed_phase]
  seed_term = next(t for t in seed_cfg.rewards if t.key == settings.seed_reward)
  gold = (dataclasses.replace(seed_term, weight=1.0, transforms=(), rows="all")
          if seed_term.name == settings.gold else
          reward_base.RewardTerm(settings.gold, settings=reward_base.get(settings.gold)
                                 .settings()).resolve(tokenizer))
  runtime.evaluate_initial(seed_cfg.role("policy"))
  for name in settings.before:
    runtime.run_phase(name)
  roles = runtime.role_specs(seed_cfg)
  binding = runtime.binding(seed_cfg, roles)
  sampling = iteration.IterationSpec(runtime.cfg.sampling, seed_cfg.rl(), binding,
                                     tokenizer.pad_id)
  targets = judgement_ids(judge, tokenizer, stops[0])
  evaluate = evaluator(runtime, sampling, settings, judge, gold, meta, targets)
  sft = offline.OfflineSpec(binding)
  sft.check()
  runtime.run(runtime.build_phase(
      settings.seed_phase, seed_cfg, roles=roles,
      make_step=lambda layout: make_seed_step(layout, sampling=sampling, sft=sft,
                                              seed_term=seed_term, judge=judge,
                                              targets=targets, meta=meta),
      also_evaluate=evaluate(roles), also_evaluate_at_start=True))
  for name in settings.rounds:
    round_cfg = runtime.cfg.phase_configs[name]
    round_roles = runtime.role_specs(round_cfg)
    make_step = (meta_round(runtime.cfg, name, round_roles, judge.template, meta,
                            tokenizer.pad_id) if settings.meta_rounds else None)
    runtime.run(runtime.build_phase(name, round_cfg, roles=round_roles, make_step=make_step,
                                    also_evaluate=evaluate(round_roles)))
  judged_by = sorted({r for name in settings.rounds
                      for t in runtime.cfg.phase_configs[name].rewards for r in t.roles})
  return runtime.finish(f"Self-Rewarding: {len(settings.rounds)} rounds of online DPO judged "
                        f"by {', '.join(judged_by) or settings.gold} on {cfg.data.task}")


def meta_round(cfg: ExperimentConfig, name: str, roles, template: judges.Template,
               meta: judges.MetaJudgeSettings, pad_id: int):
  """``make_step(layout)`` of round ``name`` as a Meta-Rewarding step over ``roles``; ``cfg``
  has its rewards in token ids, ``template`` and ``meta`` are resolved with the stops."""
  actor = fused_spec(cfg, name, roles, pad_id, "a Meta-Rewarding round judges its responses")
  term = next(t for t in actor.rewards if t.name == "judge_score")
  judge = dataclasses.replace(term.settings, template=template)
  asked = posed(cfg.phase_configs[name], cfg.recipe.settings.meta_share)
  return functools.partial(make_meta_round_step, actor=actor,
                           judging=judging_spec(actor, judge, meta, asked), judge=judge,
                           posed=asked)


def dry_run_program(cfg: ExperimentConfig):
  """``--dry_run`` of a Meta-Rewarding round: the answers' and the judge's halves in one
  program, on abstract inputs; None for the other arms, whose rounds are the plain RL step
  (which the default dry run compiles)."""
  settings: SelfRewardingSettings = cfg.recipe.settings
  if not settings.meta_rounds:
    return None
  name = settings.rounds[0]
  tokenizer = tokenizer_lib.tokenizer_for(cfg.data)
  stops = tuple(cfg.sampling.stop_tokens or (tokenizer.eos_id,))
  cfg = dataclasses.replace(cfg, phases=tuple(
      (n, dataclasses.replace(p, rewards=reward_base.resolve_terms(p.rewards, tokenizer)))
      for n, p in cfg.phases))
  phase = cfg.phase_configs[name]
  roles = role_specs(cfg, phase)
  template = dataclasses.replace(settings.judge.resolve(tokenizer).template, stop_ids=stops)
  meta = dataclasses.replace(settings.meta.resolve(tokenizer), stop_ids=stops)
  return dry_run.RecipeProgram(
      name=f"{name}_meta_step", roles=roles,
      make_step=meta_round(cfg, name, roles, template, meta, dry_run.PAD_ID),
      rows=phase.rows_per_step, rollouts=phase.batch_size, policy=phase.role("policy"))


RECIPE = base.register(base.Recipe("self_rewarding", SelfRewardingSettings, run,
                                   dry_run_program))
