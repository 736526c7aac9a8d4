"""Two models, each updated every iteration, in one compiled program and one checkpoint.

Each iteration the generator samples a group of completions per prompt and takes an RL step on
them (``generator_phase``, an objective on rollouts); the verifier then trains on the same
completions, labelled by one of the generator's rewards (``verifier_phase``, an objective on
scored examples, such as ``pointwise``). Both roles, the data position, the RNG and the recipe's
own state (a running accuracy of the verifier on completions it has not seen) are saved in one
checkpoint, ``<workdir>/checkpoints/alternating``.

This is the skeleton the generator-verifier co-training recipes fill in: they change where the
labels come from and how the verifier's scores feed back into the generator's reward. With
``labels="monte_carlo"`` the verifier is a process reward model trained on Math-Shepherd's step
labels of the generator's own samples, and the generator can take that PRM as a reward.

  configs/cotrain_addition.py, configs/prm_addition.py
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from rlalign.recipes import base
from rlalign.rewards import base as reward_base
from rlalign.rewards import learned, process
from rlalign.rl import evaluation
from rlalign.rl import dry_run, iteration, offline, update
from rlalign.rl import state as state_lib
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import StepLayout, jit_step
from rlalign.rl.runtime import Runtime, role_specs

CHECKPOINT = "alternating"


@dataclasses.dataclass(frozen=True)
class AlternatingSettings:
  before: Tuple[str, ...] = ()        # phases run first, in order (a warm start)
  generator_phase: str = "generate"   # an RL phase; its steps are the iterations
  verifier_phase: str = "verify"      # an objective on scored examples (labels)
  label_reward: str = "exact_match"   # the generator reward whose verdicts are the labels
  ema: float = 0.9                    # of the verifier's accuracy, kept as recipe state
  # "reward": one label per completion, ``label_reward``'s verdict (an outcome verifier).
  # "monte_carlo": Math-Shepherd's step labels for a process reward model (objective prm):
  # from each step's prefix, ``mc_samples`` continuations by the generator before its update,
  # judged by exact match; hard (any right) or ``mc_soft`` (the fraction right).
  labels: str = "reward"
  mc_samples: int = 4
  mc_soft: bool = False
  step_delimiter: str = ""            # the text ending a step; "" makes every token a step
  # The rollouts the verifier trains on: "all", or "labelled", those of prompts with a
  # reference answer, when the others have none (easy-to-hard transfer: their verdicts from
  # ``label_reward`` would be a wrong "no", not a label).
  verifier_rows: str = "all"

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    phases = cfg.phase_configs
    for key in ("generator_phase", "verifier_phase"):
      if getattr(self, key) not in phases:
        raise ValueError(f"{prefix}.{key} {getattr(self, key)!r} is not in phases "
                         f"({sorted(phases)})")
    unknown = [p for p in self.before if p not in phases]
    if unknown:
      raise ValueError(f"{prefix}.before names {unknown}, which are not in phases")
    gen, ver = phases[self.generator_phase], phases[self.verifier_phase]
    if gen.kind != "rl":
      raise ValueError(f"{prefix}.generator_phase {self.generator_phase!r} must train on "
                       f"rollouts; its objective {gen.objective.name!r} does not")
    if ver.objective.objective.batch != "scored":
      raise ValueError(f"{prefix}.verifier_phase {self.verifier_phase!r} must train on scored "
                       f"examples; its objective {ver.objective.name!r} trains on "
                       f"{ver.objective.objective.batch}")
    if ver.batch_size != gen.batch_size:
      raise ValueError(f"phases.{self.verifier_phase}.batch_size ({ver.batch_size}) must equal "
                       f"phases.{self.generator_phase}.batch_size ({gen.batch_size}): the "
                       "verifier trains on each iteration's rollouts")
    if self.label_reward not in [t.key for t in gen.rewards]:
      raise ValueError(f"{prefix}.label_reward {self.label_reward!r} is not one of "
                       f"phases.{self.generator_phase}.rewards")
    if self.labels not in ("reward", "monte_carlo"):
      raise ValueError(f"{prefix}.labels must be 'reward' or 'monte_carlo', got "
                       f"{self.labels!r}")
    per_step = any("step_scores" in f for f in ver.objective.objective.trains.values())
    if (self.labels == "monte_carlo") != per_step:
      raise ValueError(f"{prefix}.labels={self.labels!r} but the verifier phase's objective "
                       f"{ver.objective.name!r} trains on "
                       f"{'step' if per_step else 'completion'} labels; monte_carlo labels "
                       "train a process reward model (objective prm)")
    if self.verifier_rows not in ("all", "labelled"):
      raise ValueError(f"{prefix}.verifier_rows must be 'all' or 'labelled', got "
                       f"{self.verifier_rows!r}")
    if self.verifier_rows == "labelled" and self.labels != "reward":
      raise ValueError(f"{prefix}.verifier_rows='labelled' needs labels='reward'")
    if self.mc_samples < 1:
      raise ValueError(f"{prefix}.mc_samples must be >= 1, got {self.mc_samples}")
    if not 0.0 <= self.ema < 1.0:
      raise ValueError(f"{prefix}.ema must be in [0, 1), got {self.ema}")


def alternating_step(state, batch, rng, frozen, *, generator: iteration.IterationSpec,
                     verifier: offline.OfflineSpec, settings: AlternatingSettings,
                     delimiter: int = process.EVERY_TOKEN):
  """One iteration: sample, the generator's RL update, then the verifier's on the samples."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, generator_rng, verifier_rng = jax.random.split(rng, 3)
  trained = state_lib.params_of(state)
  policy = iteration.policy_params(trained, frozen, generator)
  rollouts = iteration.rollout(policy, batch, sample_rng, generator)
  scores = iteration.score(rollouts, trained, frozen, generator)
  if settings.labels == "monte_carlo":
    labels = process.monte_carlo_step_labels(
        policy, generator.model, rollouts, jax.random.fold_in(verifier_rng, 1),
        delimiter=delimiter, samples=settings.mc_samples, sampling=generator.sampling,
        soft=settings.mc_soft, pad_id=generator.pad_id)
  else:
    labels = scores[settings.label_reward]

  def only(names):
    return {"step": state["step"], "roles": {n: state["roles"][n] for n in names}}

  gen_state, gen_metrics = iteration.learn(only(generator.binding.trained_roles), rollouts,
                                           scores, generator_rng, frozen, generator)
  examples = {"prompt_tokens": rollouts["prompt_tokens"],
              "prompt_mask": rollouts["prompt_mask"],
              "completion_tokens": rollouts["completion_tokens"],
              "mask": rollouts["completion_mask"],
              ("step_labels" if settings.labels == "monte_carlo" else "labels"): labels}
  if settings.verifier_rows == "labelled":
    examples["label_mask"] = reward_base.labelled_rows(rollouts)
  ver_state, ver_metrics = offline.learn(only(verifier.binding.trained_roles), examples,
                                         verifier_rng, frozen, verifier)
  # Metrics come from the first update's forward pass: the verifier has not seen these yet.
  accuracy = ver_metrics["step_accuracy" if settings.labels == "monte_carlo" else "accuracy"]
  ema = settings.ema * state["recipe"]["verifier_accuracy"] + (1 - settings.ema) * accuracy
  state = {"step": state["step"] + 1,
           "roles": {**state["roles"], **gen_state["roles"], **ver_state["roles"]},
           "recipe": {"verifier_accuracy": ema}}
  metrics = {**gen_metrics, "verifier_accuracy_ema": ema,
             **{f"verifier/{k}": v for k, v in ver_metrics.items() if k != "tokens"}}
  if "label_mask" in examples:  # the share of the iteration's rollouts the verifier learns on
    metrics["verifier/labelled_fraction"] = jnp.mean(examples["label_mask"].astype(jnp.float32))
  return state, metrics


def make_step(layout: StepLayout, **static) -> Any:
  return jit_step(functools.partial(alternating_step, **static), layout)


def specs(cfg: ExperimentConfig, gen_roles, ver_roles, pad_id: int
          ) -> Tuple[iteration.IterationSpec, offline.OfflineSpec]:
  """The generator's iteration and the verifier's update, checked, for ``cfg`` (the runtime's,
  whose sampling stops at the tokenizer's EOS and whose rewards' text is in token ids)."""
  settings: AlternatingSettings = cfg.recipe.settings
  gen_cfg = cfg.phase_configs[settings.generator_phase]
  ver_cfg = cfg.phase_configs[settings.verifier_phase]
  bind = lambda phase, roles: update.Binding(phase.objective.objective, phase.objective.hparams,
                                             roles, phase.slot_map, phase.epochs,
                                             phase.minibatches)
  generator = iteration.IterationSpec(cfg.sampling, gen_cfg.rl(), bind(gen_cfg, gen_roles),
                                      pad_id)
  if not generator.fused:
    raise ValueError(f"phases.{settings.generator_phase}.rewards: the alternating recipe runs "
                     "in one program, so every reward must be in-graph")
  generator.check()
  reference = ver_cfg.role("reference")
  verifier = offline.OfflineSpec(bind(ver_cfg, ver_roles),
                                 reference if reference in ver_roles else None)
  verifier.check()
  return generator, verifier


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  settings: AlternatingSettings = cfg.recipe.settings
  phases = cfg.phase_configs
  gen_cfg, ver_cfg = phases[settings.generator_phase], phases[settings.verifier_phase]
  schedule = [(name, phases[name].steps) for name in settings.before]
  runtime = Runtime(cfg, workdir, schedule + [(CHECKPOINT, gen_cfg.steps)])
  # The runtime's config has the rewards' text in token ids (a PRM's delimiter, a template).
  gen_cfg = runtime.cfg.phase_configs[settings.generator_phase]
  runtime.evaluate_initial(gen_cfg.role("policy"))
  for name in settings.before:
    runtime.run_phase(name)

  gen_roles = runtime.role_specs(gen_cfg)
  ver_roles = runtime.role_specs(ver_cfg)
  generator, verifier = specs(runtime.cfg, gen_roles, ver_roles, runtime.tokenizer.pad_id)
  delimiter = process.resolve_delimiter(runtime.tokenizer, settings.step_delimiter,
                                        "recipe.step_delimiter")
  roles = {**gen_roles, **ver_roles}
  built = runtime.build_phase(
      CHECKPOINT, gen_cfg, roles=roles,
      make_step=lambda layout: make_step(layout, generator=generator, verifier=verifier,
                                         settings=settings, delimiter=delimiter),
      extra_state=lambda: {"recipe": {"verifier_accuracy": jnp.float32(0.5)}},
      also_evaluate=(verdict_evaluator(runtime, roles, generator, ver_cfg.role("model"),
                                       settings) if settings.labels == "reward" else None))
  runtime.run(built)
  return runtime.finish(f"alternating {gen_cfg.role('policy')} ({gen_cfg.objective.name}) and "
                        f"{ver_cfg.role('model')} ({ver_cfg.objective.name}) on {cfg.data.task}")


def dry_run_program(cfg: ExperimentConfig) -> dry_run.RecipeProgram:
  """The loop's one program, for ``--dry_run``: both roles' updates and the sampling, on
  abstract inputs (a step delimiter only changes values, not shapes)."""
  settings: AlternatingSettings = cfg.recipe.settings
  gen_cfg = cfg.phase_configs[settings.generator_phase]
  ver_cfg = cfg.phase_configs[settings.verifier_phase]
  gen_roles, ver_roles = role_specs(cfg, gen_cfg), role_specs(cfg, ver_cfg)
  generator, verifier = specs(cfg, gen_roles, ver_roles, dry_run.PAD_ID)
  return dry_run.RecipeProgram(
      name=f"{CHECKPOINT}_step", roles={**gen_roles, **ver_roles},
      make_step=lambda layout: make_step(layout, generator=generator, verifier=verifier,
                                         settings=settings),
      rows=gen_cfg.rows_per_step, rollouts=gen_cfg.batch_size, policy=generator.policy,
      extra_state={"recipe": {"verifier_accuracy": jax.ShapeDtypeStruct((), jnp.float32)}})


def verdict_evaluator(runtime: Runtime, roles, generator: iteration.IterationSpec,
                      verifier: str, settings: AlternatingSettings):
  """``evaluate(state, frozen)``: the verifier's verdicts on the generator's sampled
  completions of each held-out split, against ``label_reward`` as the gold judge there, as
  ``eval/verifier_<metric>`` (test) and ``eval/<split>/verifier_<metric>``. On a split whose
  labels training never saw, this is the only measure of the verifier, and its false-positive
  rate is where reward hacking shows."""
  gold = next(t for t in generator.rewards if t.key == settings.label_reward)
  judges = (("gold", dataclasses.replace(gold, rows="all", source="")),
            ("verdict", reward_base.RewardTerm(
                "reward_model", settings=learned.RewardModelSettings(role=verifier))))
  evaluate = evaluation.make_evaluator(
      generator.model, runtime.cfg.sampling, judges, pad_id=runtime.tokenizer.pad_id,
      plan=runtime.plan, judge_models={verifier: runtime.model(verifier)}, modes=("sampled",))
  policy = generator.policy
  splits = {"": runtime.eval_data, **{f"{k}/": v for k, v in runtime.extra_eval_data.items()}}

  def verdicts(state, frozen):
    params = runtime.policy_weights(state, roles, frozen, policy)
    judge = {verifier: runtime.policy_weights(state, roles, frozen, verifier)}
    out = {}
    for prefix, batches in splits.items():
      rows = {}
      evaluate(params, batches, runtime.eval_rng, judge, rows)
      for k, v in evaluation.verdict_summary(rows["verdict"], rows["gold"]).items():
        out[f"eval/{prefix}verifier_{k}"] = v
    return out
  return verdicts


RECIPE = base.register(base.Recipe("alternating", AlternatingSettings, run, dry_run_program))
