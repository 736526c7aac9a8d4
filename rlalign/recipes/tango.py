"""RL Tango: a generator and a generative process verifier, both trained by RL, together (Zha
et al. 2025, "RL Tango: Reinforcing Generator and Verifier Together for Language Reasoning").

Each iteration, in one compiled program:

  1. the generator samples ``group_size`` completions per prompt; the label reward (exact
     match) scores them, and so does the verifier, step by step
     (``rewards/step_verdicts.py:generative_step_verifier``: each step's P(yes) with every
     earlier step judged yes). The generator's GRPO update reads the outcome plus those step
     scores as per-token advantages, when its phase lists the step term as a reward; as a
     monitor the term is only logged, and the generator is plain GRPO;
  2. as many of those completions as the verifier phase has prompts are posed to the verifier
     (right and wrong ones in turn, ``balanced``): it writes one verdict per step, then
     stops, ``group_size`` times each, and its GRPO update reads ``step_verdicts``: 1 when
     its verdicts say "all right" exactly when the outcome label does. No step label exists
     anywhere in training; which step it flags is left to it.

Both updates start from the iteration's params, as in ``alternating``. Held out, the
evaluator, which alone reads the gold answers, logs beside the generator's pass@1:

  eval/verifier_{accuracy,balanced_accuracy,false_positive_rate,auroc,...}
                                      on the generator's own samples (``eval_samples`` per
                                      problem), the verifier's worst step P(yes) as its score
  eval/verifier_written_{accuracy,well_formed}
                                      its greedy written verdicts on the same samples: one
                                      per step, then stop, and right about the outcome (as
                                      its reward scores them)
  eval/verifier_step_{accuracy,balanced_accuracy}
                                      each step's verdict (P(yes) > 0.5) against the step's
                                      gold label: the completion's token there equals the gold
                                      answer's (steps are tokens: ``delimiter=""``)
  eval/near_miss_accuracy             the gold answer passed and a one-digit near miss failed,
                                      balanced by design
  eval/near_miss_localised            of the near misses, the share whose lowest step P(yes)
                                      is the changed digit: process-level verification,
                                      never trained on

  configs/tango_addition.py; python -m rlalign.studies.tango runs its arms
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.recipes import base
from rlalign.recipes.verifier_data import balanced_rows, near_miss
from rlalign.rewards import base as reward_base
from rlalign.rewards import judges, process
from rlalign.rewards import step_verdicts as sv
from rlalign.rl import dry_run, evaluation, iteration
from rlalign.rl import state as state_lib
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import StepLayout, jit_step
from rlalign.rl.runtime import Runtime, fused_spec, role_specs

CHECKPOINT = "tango"


@dataclasses.dataclass(frozen=True)
class TangoSettings:
  before: Tuple[str, ...] = ()        # phases run first, in order (a warm start)
  generator_phase: str = "generate"   # an RL phase; its steps are the iterations
  verifier_phase: str = "verify"      # an RL phase of the verifier on the posed completions
  label_reward: str = "exact_match"   # the generator reward whose verdict is the outcome label
  step_reward: str = "steps"          # the generator phase's generative_step_verifier term
  train_verifier: bool = True         # False: the verifier stays as it starts (an ablation)
  balanced: bool = True               # pose right and wrong completions in turn
  eval_samples: int = 4               # completions per held-out problem the evaluator judges

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    gen = base.check_phases(prefix, cfg, self.generator_phase, self.before)
    if self.verifier_phase not in cfg.phase_configs:
      raise ValueError(f"{prefix}.verifier_phase {self.verifier_phase!r} is not in phases "
                       f"({sorted(cfg.phase_configs)})")
    ver = cfg.phase_configs[self.verifier_phase]
    g, v = f"phases.{self.generator_phase}", f"phases.{self.verifier_phase}"
    if ver.kind != "rl":
      raise ValueError(f"{prefix}.verifier_phase {self.verifier_phase!r} must train on "
                       f"rollouts; its objective {ver.objective.name!r} does not")
    for where, rl in ((g, gen.rl()), (v, ver.rl())):
      if rl.estimator.greedy_baseline or rl.dynamic_sampling or rl.lsc_terms:
        raise ValueError(f"{where}: the tango recipe supports neither greedy baselines, "
                         "dynamic sampling nor lsc")
    if self.label_reward not in [t.key for t in gen.rewards]:
      raise ValueError(f"{prefix}.label_reward {self.label_reward!r} is not one of "
                       f"{g}.rewards")
    step = step_term(gen, self.step_reward)
    if step is None:
      raise ValueError(f"{prefix}.step_reward {self.step_reward!r} must be a "
                       f"generative_step_verifier in {g}.rewards or {g}.monitors: the "
                       "verifier's task is its template")
    if step.settings.delimiter:
      raise ValueError(f"{g}.rewards.{self.step_reward}.delimiter must be '' (every token a "
                       "step): the evaluator's gold step labels compare tokens")
    verdicts = [t for t in ver.rewards if t.name == "step_verdicts"]
    if len(ver.rewards) != 1 or not verdicts:
      raise ValueError(f"{v}.rewards must be one step_verdicts term: the verifier is "
                       "rewarded by the outcome label alone")
    words = lambda s: (s.yes, s.no)
    if words(verdicts[0].settings) != words(step.settings):
      raise ValueError(f"{v}.rewards.{verdicts[0].key} verdicts {words(verdicts[0].settings)} "
                       f"differ from {g}'s {self.step_reward} {words(step.settings)}")
    if ver.rl().prompts_per_step > gen.batch_size:
      raise ValueError(f"{v} poses {ver.rl().prompts_per_step} completions per step; "
                       f"{g} samples only {gen.batch_size}")
    if gen.role("policy") == ver.role("policy"):
      raise ValueError(f"{g} and {v} train the same role {ver.role('policy')!r}: RL Tango's "
                       "generator and verifier are two models (SPARK is one)")
    if step.settings.role != ver.role("policy"):
      raise ValueError(f"{g}.rewards.{self.step_reward}.role {step.settings.role!r} is not "
                       f"the role {v} trains ({ver.role('policy')!r})")
    if self.eval_samples < 1:
      raise ValueError(f"{prefix}.eval_samples must be >= 1, got {self.eval_samples}")


def step_term(phase, key: str):
  """The phase's generative_step_verifier term ``key``, a reward or a monitor, or None."""
  for term in tuple(phase.rewards) + tuple(phase.monitors):
    if term.key == key and term.name == "generative_step_verifier":
      return term
  return None


def pose(rollouts: Mapping[str, jax.Array], right: jax.Array,
         settings: sv.StepVerifierSettings, stop_id: int) -> Dict[str, jax.Array]:
  """Every completion of ``rollouts`` as a verifier prompt (the step term's template), with
  the outcome label ``right`` once per step, then ``stop_id``, as its answer."""
  tokens, mask = judges.judge_input(rollouts, settings.template)
  answer, answer_mask = sv.outcome_targets(sv.steps_of(rollouts, settings), right, settings,
                                           stop_id)
  return {"prompt_tokens": tokens, "prompt_mask": mask, "answer_tokens": answer,
          "answer_mask": answer_mask}


def verifier_tasks(rollouts: Mapping[str, jax.Array], right: jax.Array, rng: jax.Array,
                   n: int, settings: sv.StepVerifierSettings, stop_id: int, balanced: bool
                   ) -> Tuple[Dict[str, jax.Array], jax.Array]:
  """``n`` of the generator's completions posed (``pose``), right and wrong ones in turn
  when ``balanced``, else at random; and their [n] labels."""
  if balanced:
    rows = balanced_rows(right, rng, n)
  else:
    rows = jax.random.permutation(rng, right.shape[0])[:n]
  picked = {k: v[rows] for k, v in rollouts.items()}
  return pose(picked, right[rows], settings, stop_id), right[rows]


def tango_step(state, batch, rng, frozen, *, generator: iteration.IterationSpec,
               verifier: iteration.IterationSpec, settings: TangoSettings,
               step: sv.StepVerifierSettings, stop_id: int):
  """One iteration: the generator's rollouts and update, then the verifier's on them."""
  rng = jax.random.fold_in(rng, state["step"])
  # ``iteration.rl_step``'s keys for the generator, so that with the step term a monitor its
  # half is GRPO's iteration bit for bit; the verifier's keys are apart from them.
  sample_rng, learn_rng = jax.random.split(rng)
  own_rng = jax.random.split(rng, 3)[2]
  score_rng = jax.random.split(jax.random.fold_in(own_rng, 1))[0]
  task_rng, respond_rng, verify_rng = jax.random.split(jax.random.fold_in(own_rng, 2), 3)
  trained = state_lib.params_of(state)

  def only(names):
    return {"step": state["step"], "roles": {n: state["roles"][n] for n in names}}

  rollouts = iteration.rollout(iteration.policy_params(trained, frozen, generator), batch,
                               sample_rng, generator)
  scores = iteration.score(rollouts, trained, frozen, generator, score_rng)
  right = scores[settings.label_reward] > 0.5
  gen_state, metrics = iteration.learn(only(generator.binding.trained_roles), rollouts, scores,
                                       learn_rng, frozen, generator)
  roles = dict(gen_state["roles"])
  if settings.train_verifier:
    tasks, labels = verifier_tasks(rollouts, right, task_rng, verifier.rl.prompts_per_step,
                                   step, stop_id, settings.balanced)
    responses = iteration.rollout(iteration.policy_params(trained, frozen, verifier), tasks,
                                  respond_rng, verifier)
    verdict_scores = iteration.score(responses, trained, frozen, verifier)
    ver_state, ver_metrics = iteration.learn(only(verifier.binding.trained_roles), responses,
                                             verdict_scores, verify_rng, frozen, verifier)
    roles.update(ver_state["roles"])
    formed, all_yes, label = sv.read_verdicts(responses, step)
    f32 = lambda x: x.astype(jnp.float32)
    passed = formed & all_yes
    rate = lambda hit, of: jnp.sum(hit & of) / jnp.maximum(jnp.sum(of), 1)
    metrics.update({f"verifier/{k}": v for k, v in ver_metrics.items() if k != "tokens"})
    metrics.update({"verifier/well_formed": jnp.mean(f32(formed)),
                    "verifier/true_positive_rate": rate(passed, label),
                    "verifier/false_positive_rate": rate(passed, ~label),
                    "verifier/label_right": jnp.mean(f32(labels))})
    metrics["tokens"] = metrics["tokens"] + ver_metrics["tokens"]
  state = {"step": state["step"] + 1, "roles": {**state["roles"], **roles}}
  return state, metrics


def make_step(layout: StepLayout, **static) -> Any:
  return jit_step(functools.partial(tango_step, **static), layout)


def specs(cfg: ExperimentConfig, gen_roles, ver_roles, pad_id: int
          ) -> Tuple[iteration.IterationSpec, iteration.IterationSpec]:
  s: TangoSettings = cfg.recipe.settings
  why = "the tango recipe scores both models"
  return (fused_spec(cfg, s.generator_phase, gen_roles, pad_id, why),
          fused_spec(cfg, s.verifier_phase, ver_roles, pad_id, why))


def gold_steps(completion_tokens: jax.Array, steps: jax.Array, answer_tokens: jax.Array
               ) -> jax.Array:
  """[B, N] each token step's gold label: the gold answer has the same token there."""
  N, A = completion_tokens.shape[1], answer_tokens.shape[1]
  gold = jnp.pad(answer_tokens, ((0, 0), (0, max(N - A, 0))), constant_values=-1)[:, :N]
  return steps & (completion_tokens == gold)


def tango_evaluator(runtime: Runtime, generator: iteration.IterationSpec,
                    step: sv.StepVerifierSettings, settings: TangoSettings, digits,
                    stop_id: int):
  """``for_roles(roles) -> evaluate(state, frozen)``: the held-out metrics of the module
  docstring, on the test split and each extra one (``eval/<split>/...``)."""
  label = dataclasses.replace(next(t for t in generator.rewards
                                   if t.key == settings.label_reward), rows="all")
  model, ver_model = generator.model, runtime.model(step.role)
  N = settings.eval_samples
  greedy = dataclasses.replace(generator, sampling=dataclasses.replace(
      generator.sampling, temperature=0.0))
  stop_ids = step.template.stop_ids

  def judge(ver_params, rollouts):
    p_steps, steps = sv.step_probabilities(ver_params, ver_model, rollouts, step)
    worst = process.aggregate_steps(p_steps, steps, "min")
    return p_steps, steps, worst

  def per_row(params, batch, rng):
    gen_params, ver_params = params[generator.policy], params[step.role]
    answers = {k: batch[k] for k in ("prompt_tokens", "prompt_mask", "answer_tokens",
                                     "answer_mask")}
    rollouts = iteration.rollout(gen_params, answers, jax.random.fold_in(rng, 0), generator,
                                 group_size=N)
    right = reward_base.score_in_graph((label,), rollouts, {})[label.key] > 0.5
    B = right.shape[0] // N
    p_steps, steps, worst = judge(ver_params, rollouts)
    step_gold = gold_steps(rollouts["completion_tokens"], steps, rollouts["answer_tokens"])
    written = iteration.rollout(ver_params, pose(rollouts, right, step, stop_id),
                                jax.random.fold_in(rng, 2), greedy, greedy=True,
                                model=ver_model)
    formed, all_yes, _ = sv.read_verdicts(written, step)
    out = {"right": right.reshape(B, N), "worst": worst.reshape(B, N),
           "written_right": (formed & (all_yes == right)).reshape(B, N),
           "written_formed": formed.reshape(B, N),
           "step_p": p_steps.reshape(B, N, -1), "step_real": steps.reshape(B, N, -1),
           "step_gold": step_gold.reshape(B, N, -1)}
    if digits:
      real = judges.without_stop(batch["answer_tokens"], batch["answer_mask"], stop_ids)
      miss, where = near_miss(batch["answer_tokens"], real, digits, jax.random.fold_in(rng, 1))
      as_rollouts = lambda tokens: {"prompt_tokens": batch["prompt_tokens"],
                                    "prompt_mask": batch["prompt_mask"],
                                    "completion_tokens": tokens,
                                    "completion_mask": batch["answer_mask"]}
      _, _, gold_worst = judge(ver_params, as_rollouts(batch["answer_tokens"]))
      miss_p, miss_steps, miss_worst = judge(ver_params, as_rollouts(miss))
      lowest = jnp.argmin(jnp.where(miss_steps, miss_p, jnp.inf), axis=1)
      out["near_miss"] = jnp.stack([gold_worst > 0.5, miss_worst <= 0.5], axis=1)
      out["near_miss_localised"] = lowest == where
    return out

  return runtime.per_row_evaluator(per_row, summary, (generator.policy, step.role))


def summary(rows: Mapping[str, np.ndarray]) -> Dict[str, float]:
  """The evaluator's per-problem arrays as the module's metrics."""
  right = rows["right"].reshape(-1)
  out = {f"eval/verifier_{k}": v for k, v in evaluation.verdict_summary(
      rows["worst"].reshape(-1) - 0.5, right).items()}
  out["eval/verifier_written_accuracy"] = float(rows["written_right"].mean())
  out["eval/verifier_written_well_formed"] = float(rows["written_formed"].mean())
  real = rows["step_real"].astype(bool)
  said = rows["step_p"][real] > 0.5
  gold = rows["step_gold"][real].astype(bool)
  out["eval/verifier_step_accuracy"] = float(np.mean(said == gold)) if gold.size else 0.0
  rate = lambda hit, of: float(np.mean(hit[of])) if of.any() else float("nan")
  out["eval/verifier_step_balanced_accuracy"] = 0.5 * (rate(said, gold) + rate(~said, ~gold))
  if "near_miss" in rows:
    out["eval/near_miss_accuracy"] = float(rows["near_miss"].mean())
    out["eval/near_miss_localised"] = float(rows["near_miss_localised"].mean())
  return out


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  settings: TangoSettings = cfg.recipe.settings
  phases = cfg.phase_configs
  schedule = [(name, phases[name].steps) for name in settings.before]
  runtime = Runtime(cfg, workdir, schedule + [(CHECKPOINT, phases[settings.generator_phase]
                                               .steps)])
  # The runtime's config has the rewards' text in token ids (the step term's template).
  # A completion is quoted without whichever of the sampling's stop tokens ended it.
  stops = tuple(runtime.cfg.sampling.stop_tokens or (runtime.tokenizer.eos_id,))
  term = step_term(runtime.cfg.phase_configs[settings.generator_phase], settings.step_reward)
  step = dataclasses.replace(term.settings, template=dataclasses.replace(
      term.settings.template, stop_ids=stops))
  loop_cfg = with_step_settings(runtime.cfg, settings, step)
  gen_cfg = loop_cfg.phase_configs[settings.generator_phase]
  ver_cfg = loop_cfg.phase_configs[settings.verifier_phase]
  runtime.evaluate_initial(gen_cfg.role("policy"))
  for name in settings.before:
    runtime.run_phase(name)
  gen_roles, ver_roles = runtime.role_specs(gen_cfg), runtime.role_specs(ver_cfg)
  generator, verifier = specs(loop_cfg, gen_roles, ver_roles, runtime.tokenizer.pad_id)
  roles = {**gen_roles, **ver_roles}
  digits = [runtime.tokenizer.encode(str(d)) for d in range(10)]
  digits = tuple(int(d[0]) for d in digits) if all(len(d) == 1 for d in digits) else ()
  stop_id = stops[0]  # the verifier's answer ends where its sampling stops
  evaluate = tango_evaluator(runtime, generator, step, settings, digits, stop_id)
  built = runtime.build_phase(
      CHECKPOINT, gen_cfg, roles=roles,
      make_step=lambda layout: make_step(layout, generator=generator, verifier=verifier,
                                         settings=settings, step=step, stop_id=stop_id),
      also_evaluate=evaluate(roles), also_evaluate_at_start=True)
  runtime.run(built)
  what = "trained" if settings.train_verifier else "frozen"
  return runtime.finish(f"RL Tango: {gen_cfg.role('policy')} and the {what} step verifier "
                        f"{ver_cfg.role('policy')} on {cfg.data.task}")


def dry_run_program(cfg: ExperimentConfig) -> dry_run.RecipeProgram:
  """The loop's one program for ``--dry_run``: both roles' sampling and updates, on abstract
  inputs (the template as pad ids of its length in characters: values do not change shapes)."""
  settings: TangoSettings = cfg.recipe.settings
  gen_cfg = cfg.phase_configs[settings.generator_phase]
  ver_cfg = cfg.phase_configs[settings.verifier_phase]
  pad, stop = dry_run.PAD_ID, (cfg.sampling.stop_tokens or (dry_run.PAD_ID + 2,))[0]
  term = step_term(gen_cfg, settings.step_reward)
  step = stand_in(term.settings, pad, stop)
  cfg = with_step_settings(cfg, settings, step)
  gen_cfg = cfg.phase_configs[settings.generator_phase]
  ver_cfg = cfg.phase_configs[settings.verifier_phase]
  gen_roles, ver_roles = role_specs(cfg, gen_cfg), role_specs(cfg, ver_cfg)
  generator, verifier = specs(cfg, gen_roles, ver_roles, pad)
  prompt, new = cfg.data.max_prompt_len, cfg.sampling.max_new_tokens
  return dry_run.RecipeProgram(
      name=f"{CHECKPOINT}_step", roles={**gen_roles, **ver_roles},
      make_step=lambda layout: make_step(layout, generator=generator, verifier=verifier,
                                         settings=settings, step=step, stop_id=stop),
      rows=gen_cfg.rows_per_step, rollouts=gen_cfg.batch_size, policy=generator.policy,
      cache_slots=prompt + new + len(term.settings.template.prefix)
      + len(term.settings.template.middle) + len(term.settings.template.suffix) + new)


def stand_in(settings: sv.StepVerifierSettings, pad: int, stop: int) -> sv.StepVerifierSettings:
  t = settings.template
  n = lambda text: (pad,) * len(text)
  template = dataclasses.replace(t, prefix_ids=n(t.prefix), middle_ids=n(t.middle),
                                 suffix_ids=n(t.suffix), stop_ids=(stop,))
  return dataclasses.replace(settings, template=template, yes_id=pad, no_id=pad + 1,
                             delimiter_id=process.EVERY_TOKEN)


def with_step_settings(cfg: ExperimentConfig, settings: TangoSettings,
                       step: sv.StepVerifierSettings) -> ExperimentConfig:
  """``cfg`` with the step term's settings ``step``, and the verifier's verdict ids its."""
  phases = dict(cfg.phases)
  gen, ver = phases[settings.generator_phase], phases[settings.verifier_phase]
  swap = lambda terms: tuple(dataclasses.replace(t, settings=step)
                             if t.key == settings.step_reward else t for t in terms)
  phases[settings.generator_phase] = dataclasses.replace(gen, rewards=swap(gen.rewards),
                                                         monitors=swap(gen.monitors))
  phases[settings.verifier_phase] = dataclasses.replace(ver, rewards=tuple(
      dataclasses.replace(t, settings=dataclasses.replace(t.settings, yes_id=step.yes_id,
                                                          no_id=step.no_id))
      for t in ver.rewards))
  return dataclasses.replace(cfg, phases=tuple(phases.items()))


RECIPE = base.register(base.Recipe("tango", TangoSettings, run, dry_run_program))
