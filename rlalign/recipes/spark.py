"""SPARK: one model, its own verifier, from its own rollouts (Liu et al. 2025, "SPARK:
Synergistic Policy And Reward Co-Evolving Framework").

Each iteration, in one compiled program: the policy samples ``group_size`` answers per prompt
and the verifiable reward (``judge``, exact match) scores them, as in GRPO. The groups are
then recycled into verifier tasks whose labels that reward already knows, as many of each
kind as there are prompts:

  pointwise   the question, one of the iteration's answers, ``pointwise`` ("Is the answer
              correct?"); the label is ``yes`` or ``no``. Right and wrong answers are taken
              in turn from the whole batch, so the labels stay balanced while there are
              both (the first design took one answer per group, and its labels were 94-100%
              "yes" once the policy was mostly right: ``verifier_tasks``).
  pairwise    the question, a right and a wrong answer of that prompt in random order with
              ``pair_between`` between them, ``pairwise`` ("Which answer is right, 1 or 2?");
              the label is ``first`` or ``second``. Only groups with both kinds pose one.
  reflection  the question, a wrong answer of the batch, ``reflection`` ("The answer is
              incorrect. The correct answer is"), with ``restate_prompt`` the question again;
              the label is the gold answer. As many as there are wrong answers.

The texts are said after an answer (``data/turns.py``: the user's next turn under a chat
template). The same policy samples ``group_size`` responses to every task, scored by exact
match against its label, and one update of the phase's objective (GRPO) learns on the
answers and the task responses together; a task that could not be posed carries no loss.
With ``tasks=()`` the recipe is plain GRPO, the baseline, evaluated the same way.

Held out, the evaluator, which alone reads the test split's answers (the gold judge), samples
``eval_samples`` answers per problem and logs:

  eval/self_pass@1, pass@N                      the samples right, and any of them right
  eval/self_best_of_N                           the sample the policy itself rates most
                                                likely correct (its P(yes)), right: test-time
                                                scaling without a separate reward model
  eval/self_corrected                           each sample the policy judges wrong replaced
                                                by its greedy answer to the reflection task
  eval/self_reflection_fixes                    of the wrong samples, the share reflection fixes
  eval/self_verify_{accuracy,balanced_accuracy,false_positive_rate,auroc,...}
                                                its pointwise verdicts on its own samples
  eval/near_miss_{pointwise,pairwise}_accuracy  its verdicts on the gold answer and a near
                                                miss (one digit changed), balanced by design:
                                                verification apart from how good its
                                                samples are

  configs/spark_addition.py; python -m rlalign.studies.spark runs both arms
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.data import turns as turns_lib
from rlalign.recipes import base
from rlalign.recipes.verifier_data import balanced_rows, near_miss, pick
from rlalign.rewards import base as reward_base
from rlalign.rewards import judges
from rlalign.rl import dry_run, evaluation, iteration
from rlalign.rl import state as state_lib
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import StepLayout, jit_step
from rlalign.rl.runtime import Runtime, fused_spec, role_specs

CHECKPOINT = "spark"
TASKS = ("pointwise", "pairwise", "reflection")


@dataclasses.dataclass(frozen=True)
class SPARKSettings:
  before: Tuple[str, ...] = ()   # phases run first, in order (a warm start)
  phase: str = "spark"           # the RL phase: its steps, batch, group, rewards, objective
  judge: str = "exact_match"     # the verifiable reward whose verdict (> 0.5) labels the tasks
  tasks: Tuple[str, ...] = TASKS  # () is GRPO alone
  pointwise: str = "\nIs the answer correct? "
  pair_between: str = "\nAnother answer: "
  pairwise: str = "\nWhich answer is right, 1 or 2? "
  reflection: str = "\nThe answer is incorrect. The correct answer is "
  yes: str = "Yes"
  no: str = "No"
  first: str = "1"
  second: str = "2"
  eval_samples: int = 4          # answers per held-out problem the evaluator samples
  # The question again after the reflection text (its BOS dropped), as RISE's restate_prompt:
  # what a model that never followed an instruction needs to answer a second time at all.
  restate_prompt: bool = False

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    phase = base.check_phases(prefix, cfg, self.phase, self.before)
    rl, where = phase.rl(), f"phases.{self.phase}"
    if rl.group_size < 2 and self.tasks:
      raise ValueError(f"{where}.group_size must be >= 2: a pairwise task needs a right and a "
                       f"wrong answer of one prompt, got {rl.group_size}")
    if rl.estimator.greedy_baseline:
      raise ValueError(f"{where}.advantage {rl.advantage!r} needs a greedy baseline of each "
                       "prompt, which the recipe's verifier tasks do not have")
    for name in ("dynamic_sampling", "monitors"):
      if getattr(rl, name):
        raise ValueError(f"{where}.{name} is not supported by the spark recipe")
    if rl.lsc_terms or any(t.reward.per_token for t in rl.rewards):
      raise ValueError(f"{where}.rewards: the spark recipe scores the verifier tasks by "
                       "sequence rewards without a reference's samples (no lsc, no step "
                       "rewards)")
    judge = [t for t in rl.rewards if t.key == self.judge]
    if not judge:
      raise ValueError(f"{prefix}.judge {self.judge!r} is not one of {where}.rewards")
    if judge[0].name != "exact_match":
      raise ValueError(f"{prefix}.judge {self.judge!r} must be exact_match: it labels the "
                       "verifier tasks and scores their responses against those labels")
    bad = [t for t in self.tasks if t not in TASKS]
    if bad or len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"{prefix}.tasks must be distinct names from {TASKS}, got {self.tasks}")
    for name in ("pointwise", "pair_between", "pairwise", "reflection", "yes", "no", "first",
                 "second"):
      if not getattr(self, name):
        raise ValueError(f"{prefix}.{name} must be non-empty text")
    if self.eval_samples < 1:
      raise ValueError(f"{prefix}.eval_samples must be >= 1, got {self.eval_samples}")


@dataclasses.dataclass(frozen=True)
class TaskIds:
  """The settings' texts in the run's token ids (``resolve_ids``): static in the program."""
  pointwise: Tuple[int, ...]
  pair_between: Tuple[int, ...]
  pairwise: Tuple[int, ...]
  reflection: Tuple[int, ...]
  yes: Tuple[int, ...]        # each verdict word's ids and the stop token: a task's answer
  no: Tuple[int, ...]
  first: Tuple[int, ...]
  second: Tuple[int, ...]
  stop: Tuple[int, ...]       # the stop tokens an answer quoted in a task loses
  digits: Tuple[int, ...]     # one token per digit 0-9, for near misses; () if not
  bos: Tuple[int, ...] = ()   # the BOS a restated question drops


def resolve_ids(settings: SPARKSettings, tokenizer: Any, data_cfg: Any, stop: Sequence[int],
                max_new_tokens: int) -> TaskIds:
  """The tasks' texts tokenised once, checked before anything compiles."""
  said = lambda name: turns_lib.said_after_answer(tokenizer, data_cfg, getattr(settings, name),
                                                  stop, f"recipe.{name}")
  texts = {name: said(name) for name in ("pointwise", "pair_between", "pairwise",
                                         "reflection")}
  words = {}
  for name in ("yes", "no", "first", "second"):
    ids = tuple(int(i) for i in tokenizer.encode(getattr(settings, name)))
    if not ids or len(ids) + 1 > max_new_tokens:
      raise ValueError(f"recipe.{name} {getattr(settings, name)!r} is {len(ids)} tokens; with "
                       f"its stop token it must fit sampling.max_new_tokens={max_new_tokens}")
    words[name] = ids + (int(stop[0]),)
  for a, b in (("yes", "no"), ("first", "second")):
    if words[a][0] == words[b][0]:
      raise ValueError(f"recipe.{a} and recipe.{b} start with the same token {words[a][0]}: "
                       "a verdict is read from its first token")
  digits = [tokenizer.encode(str(d)) for d in range(10)]
  digits = tuple(int(d[0]) for d in digits) if all(len(d) == 1 for d in digits) else ()
  bos = getattr(tokenizer, "bos_id", None)
  return TaskIds(**texts, **words, stop=tuple(int(s) for s in stop), digits=digits,
                 bos=() if bos is None else (int(bos),))


def dry_run_ids(settings: SPARKSettings, pad_id: int, stop: int) -> TaskIds:
  """Stand-in ids with the texts' lengths in characters (at least a tokenizer's), for the
  dry run: values do not change shapes."""
  n = lambda name: (pad_id,) * len(getattr(settings, name))
  return TaskIds(n("pointwise"), n("pair_between"), n("pairwise"), n("reflection"),
                 (pad_id, stop), (pad_id + 1, stop), (pad_id, stop), (pad_id + 1, stop),
                 (stop,), ())


def task_slots(prompt_len: int, new_tokens: int, ids: TaskIds, restate: bool = False) -> int:
  """The KV cache a task's sampling needs: its widest prompt (every part at full width, as
  ``judges.left_pack`` joins them), then the new tokens."""
  widest = max(prompt_len + new_tokens + len(ids.pointwise),
               prompt_len + 2 * new_tokens + len(ids.pair_between) + len(ids.pairwise),
               (1 + restate) * prompt_len + new_tokens + len(ids.reflection))
  return widest + new_tokens


def _word(ids: Tuple[int, ...], rows: int, width: int, pad_id: int):
  tokens = jnp.full((rows, width), pad_id, jnp.int32).at[:, :len(ids)].set(
      jnp.asarray(ids, jnp.int32))
  return tokens, jnp.broadcast_to(jnp.arange(width) < len(ids), (rows, width))


def _pad_right(x: jax.Array, width: int, value) -> jax.Array:
  return jnp.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)


def _left_pad(x: jax.Array, width: int, value) -> jax.Array:
  return jnp.pad(x, ((0, 0), (width - x.shape[1], 0)), constant_values=value)


def verifier_tasks(rollouts: Mapping[str, jax.Array], right: jax.Array, rng: jax.Array,
                   ids: TaskIds, tasks: Sequence[str], group_size: int, pad_id: int,
                   restate_prompt: bool = False
                   ) -> Dict[str, Tuple[Dict[str, jax.Array], jax.Array]]:
  """Per task, (a batch of as many tasks as there are prompts: prompt and answer tokens and
  masks, whose answer is the label; [P] whether the task could be posed), from ``rollouts``
  [P * G rows] and ``right`` [P * G], each group contiguous. Pointwise tasks take right and
  wrong answers in turn from the whole batch, so their labels stay balanced while the
  answers have both; reflection takes wrong answers from the whole batch; a pairwise task
  pairs a right and a wrong answer of one prompt."""
  G, R = group_size, right.shape[0]
  P = R // G
  prompts = (rollouts["prompt_tokens"], rollouts["prompt_mask"].astype(bool))
  width = max(rollouts["answer_tokens"].shape[1],
              *(len(getattr(ids, w)) for w in ("yes", "no", "first", "second")))
  keep = judges.without_stop(rollouts["completion_tokens"], rollouts["completion_mask"],
                             ids.stop)
  answer = lambda rows: (rollouts["completion_tokens"][rows], keep[rows])
  question = lambda rows: (prompts[0][rows], prompts[1][rows])
  text = lambda name: judges.constant(getattr(ids, name), P)
  word = lambda name: _word(getattr(ids, name), P, width, pad_id)
  choose = lambda cond, a, b: tuple(jnp.where(cond[:, None], x, y) for x, y in zip(a, b))
  keys = jax.random.split(rng, 5)
  out = {}
  for task in tasks:
    if task == "pointwise":
      rows = balanced_rows(right, keys[0], P)
      parts = [question(rows), answer(rows), text("pointwise")]
      target, active = choose(right[rows], word("yes"), word("no")), jnp.ones((P,), bool)
    elif task == "pairwise":
      grouped = right.reshape(P, G)
      good, _ = pick(keys[2], grouped)
      bad, _ = pick(keys[3], ~grouped)
      good_first = jax.random.bernoulli(keys[4], 0.5, (P,))
      base = jnp.arange(P) * G
      one = base + jnp.where(good_first, good, bad)
      two = base + jnp.where(good_first, bad, good)
      parts = [question(one), answer(one), text("pair_between"), answer(two),
               text("pairwise")]
      active = jnp.any(grouped, axis=1) & jnp.any(~grouped, axis=1)
      target = choose(good_first, word("first"), word("second"))
    else:  # reflection
      wrong_first = jnp.argsort(jnp.where(~right, jax.random.uniform(keys[1], (R,)), 2.0))
      rows, active = wrong_first[:P], jnp.arange(P) < jnp.sum(~right)
      parts = [question(rows), answer(rows), text("reflection")]
      if restate_prompt:  # the question again, without its BOS
        tokens, mask = question(rows)
        parts.append((tokens, mask & ~jnp.isin(tokens, jnp.asarray(ids.bos or (-1,)))))
      target = (_pad_right(rollouts["answer_tokens"][rows], width, pad_id),
                _pad_right(rollouts["answer_mask"][rows].astype(bool), width, False))
    tokens, mask = judges.left_pack(parts)
    out[task] = ({"prompt_tokens": tokens, "prompt_mask": mask,
                  "answer_tokens": target[0], "answer_mask": target[1]}, active)
  return out


def concatenate(batches: Sequence[Tuple[Dict[str, jax.Array], Dict[str, jax.Array]]],
                pad_id: int):
  """(rollouts, scores) pairs stacked into one batch: prompts left-padded and answers
  right-padded to the widest."""
  prompt = max(r["prompt_tokens"].shape[1] for r, _ in batches)
  answer = max(r["answer_tokens"].shape[1] for r, _ in batches)
  widened = []
  for r, _ in batches:
    r = dict(r)
    r["prompt_tokens"] = _left_pad(r["prompt_tokens"], prompt, pad_id)
    r["prompt_mask"] = _left_pad(r["prompt_mask"].astype(bool), prompt, False)
    r["answer_tokens"] = _pad_right(r["answer_tokens"], answer, pad_id)
    r["answer_mask"] = _pad_right(r["answer_mask"].astype(bool), answer, False)
    widened.append(r)
  cat = lambda *xs: jnp.concatenate(xs, axis=0)
  return jax.tree.map(cat, *widened), jax.tree.map(cat, *(s for _, s in batches))


def learner_spec(spec: iteration.IterationSpec, tasks: int) -> iteration.IterationSpec:
  """The update over the answers and ``tasks`` task batches of the same size: minibatches
  as large as the phase's, so the answers' share of each step is what GRPO alone gives."""
  if not tasks:
    return spec
  return dataclasses.replace(
      spec, rl=dataclasses.replace(spec.rl, batch_size=spec.rl.batch_size * (1 + tasks)),
      binding=dataclasses.replace(spec.binding,
                                  minibatches=spec.binding.minibatches * (1 + tasks)))


def spark_step(state, batch, rng, frozen, *, spec: iteration.IterationSpec,
               settings: SPARKSettings, ids: TaskIds):
  """One iteration: answers, the verifier tasks recycled from them, one update on both."""
  rng = jax.random.fold_in(rng, state["step"])
  # The keys of ``iteration.rl_step``, so that with no tasks this is GRPO's iteration, bit for
  # bit, and the answers are the ones GRPO would sample; the tasks' keys are apart from them.
  sample_rng, learn_rng = jax.random.split(rng)
  own_rng = jax.random.split(rng, 3)[2]
  score_rng = jax.random.split(jax.random.fold_in(own_rng, 1))[0]
  task_rng = jax.random.fold_in(own_rng, 2)
  trained = state_lib.params_of(state)
  policy = iteration.policy_params(trained, frozen, spec)
  G = spec.rl.group_size
  rollouts = iteration.rollout(policy, batch, sample_rng, spec)
  scores = iteration.score(rollouts, trained, frozen, spec, score_rng)
  right = scores[settings.judge] > 0.5
  metrics = {}
  batches = [({**rollouts, "informative": jnp.ones_like(right)}, scores)]
  posed = verifier_tasks(rollouts, right, jax.random.fold_in(task_rng, 0), ids,
                         settings.tasks, G, spec.pad_id, settings.restate_prompt)
  for i, task in enumerate(settings.tasks):
    prompts, active = posed[task]
    responses = iteration.rollout(policy, prompts, jax.random.fold_in(task_rng, i + 1), spec)
    task_scores = iteration.score(responses, trained, frozen, spec, score_rng)
    took = jnp.repeat(active, G)
    batches.append(({**responses, "informative": took}, task_scores))
    n = jnp.maximum(jnp.sum(took), 1)
    metrics[f"{task}/posed"] = jnp.mean(active.astype(jnp.float32))
    metrics[f"{task}/accuracy"] = jnp.sum((task_scores[settings.judge] > 0.5) & took) / n
    if task == "pointwise":
      said_yes = prompts["answer_tokens"][:, 0] == ids.yes[0]
      metrics["pointwise/label_yes"] = jnp.mean(said_yes.astype(jnp.float32))
  if settings.tasks:
    rollouts, scores = concatenate(batches, spec.pad_id)
  state, learned = iteration.learn(state, rollouts, scores, learn_rng, frozen,
                                   learner_spec(spec, len(settings.tasks)))
  answers = batches[0][1]
  learned.update(metrics)
  learned["accuracy"] = jnp.mean(right.astype(jnp.float32))   # of the answers alone
  learned["reward"] = reward_base.combine(spec.rewards, answers, group_size=G).mean()
  return state, learned


def make_step(layout: StepLayout, **static) -> Any:
  return jit_step(functools.partial(spark_step, **static), layout)


def spec_for(cfg: ExperimentConfig, roles, pad_id: int) -> iteration.IterationSpec:
  return fused_spec(cfg, cfg.recipe.settings.phase, roles, pad_id,
                    "the spark recipe scores its verifier tasks")


def verdict_probability(params, model, tokens, mask, ids: Tuple[int, ...], other: Tuple[int, ...]
                        ) -> jax.Array:
  """P(the first token of ``ids``) renormalised against ``other``'s, after ``tokens``."""
  logits = judges.verdict_logits(params, model, tokens, mask)
  return jax.nn.sigmoid(logits[:, ids[0]] - logits[:, other[0]])


def self_evaluator(runtime: Runtime, spec: iteration.IterationSpec, settings: SPARKSettings,
                   ids: TaskIds):
  """``for_roles(roles) -> evaluate(state, frozen)``: the held-out metrics of the module
  docstring, on the test split and each extra one (``eval/<split>/...``)."""
  judge = dataclasses.replace(next(t for t in spec.rewards if t.key == settings.judge),
                              rows="all")
  N = settings.eval_samples
  model = spec.model
  greedy = dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling,
                                                                  temperature=0.0))

  def gold(rollouts):
    return reward_base.score_in_graph((judge,), rollouts, {})[judge.key] > 0.5

  def per_row(params, batch, rng):
    answers = {k: batch[k] for k in ("prompt_tokens", "prompt_mask", "answer_tokens",
                                     "answer_mask")}
    rollouts = iteration.rollout(params, answers, jax.random.fold_in(rng, 0), spec,
                                 group_size=N)
    right = gold(rollouts)
    B = right.shape[0] // N
    prompt = (rollouts["prompt_tokens"], rollouts["prompt_mask"])
    said = lambda name: judges.constant(getattr(ids, name), B * N)
    sample = (rollouts["completion_tokens"], judges.without_stop(
        rollouts["completion_tokens"], rollouts["completion_mask"], ids.stop))
    p_yes = verdict_probability(params, model, *judges.left_pack(
        [prompt, sample, said("pointwise")]), ids.yes, ids.no)
    again = [(prompt[0], prompt[1].astype(bool) & ~jnp.isin(
        prompt[0], jnp.asarray(ids.bos or (-1,))))] if settings.restate_prompt else []
    reflect_prompt, reflect_mask = judges.left_pack([prompt, sample, said("reflection")]
                                                    + again)
    reflected = iteration.rollout(params, {"prompt_tokens": reflect_prompt,
                                           "prompt_mask": reflect_mask,
                                           "answer_tokens": rollouts["answer_tokens"],
                                           "answer_mask": rollouts["answer_mask"]},
                                  rng, greedy, greedy=True)
    reflected_right = gold(reflected)
    out = {"right": right.reshape(B, N), "p_yes": p_yes.reshape(B, N),
           "reflected_right": reflected_right.reshape(B, N)}
    if ids.digits:
      one = (batch["prompt_tokens"], batch["prompt_mask"])
      real = judges.without_stop(batch["answer_tokens"], batch["answer_mask"], ids.stop)
      k1, k2 = jax.random.split(jax.random.fold_in(rng, 1))
      miss = (near_miss(batch["answer_tokens"], real, ids.digits, k1)[0], real)
      gold_answer = (batch["answer_tokens"], real)
      said1 = lambda name: judges.constant(getattr(ids, name), B)
      pointwise = lambda a: verdict_probability(params, model, *judges.left_pack(
          [one, a, said1("pointwise")]), ids.yes, ids.no)
      good_first = jax.random.bernoulli(k2, 0.5, (B,))
      either = lambda c, a, b: tuple(jnp.where(c[:, None], x, y) for x, y in zip(a, b))
      p_first = verdict_probability(params, model, *judges.left_pack(
          [one, either(good_first, gold_answer, miss), said1("pair_between"),
           either(good_first, miss, gold_answer), said1("pairwise")]), ids.first, ids.second)
      out["near_miss_pointwise"] = jnp.stack([pointwise(gold_answer) > 0.5,
                                              pointwise(miss) <= 0.5], axis=1)
      out["near_miss_pairwise"] = (p_first > 0.5) == good_first
    return out

  return runtime.per_row_evaluator(per_row, self_summary, spec.policy)


def self_summary(rows: Mapping[str, np.ndarray]) -> Dict[str, float]:
  """The evaluator's per-problem arrays ([problems, samples]) as the module's metrics."""
  right, p_yes, fixed = rows["right"], rows["p_yes"], rows["reflected_right"]
  N = right.shape[1]
  best = np.argmax(p_yes, axis=1)
  corrected = np.where(p_yes > 0.5, right, fixed)
  out = {"eval/self_pass@1": float(right.mean()),
         f"eval/self_pass@{N}": float(right.any(axis=1).mean()),
         f"eval/self_best_of_{N}": float(right[np.arange(len(right)), best].mean()),
         "eval/self_corrected": float(corrected.mean()),
         "eval/self_reflection_fixes": float(fixed[~right].mean()) if (~right).any() else 0.0}
  verdicts = evaluation.verdict_summary(p_yes.reshape(-1) - 0.5, right.reshape(-1))
  out.update({f"eval/self_verify_{k}": v for k, v in verdicts.items()})
  if "near_miss_pointwise" in rows:
    out["eval/near_miss_pointwise_accuracy"] = float(rows["near_miss_pointwise"].mean())
    out["eval/near_miss_pairwise_accuracy"] = float(rows["near_miss_pairwise"].mean())
  return out


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  settings: SPARKSettings = cfg.recipe.settings
  phase_cfg = cfg.phase_configs[settings.phase]
  schedule = [(name, cfg.phase_configs[name].steps) for name in settings.before]
  runtime = Runtime(cfg, workdir, schedule + [(CHECKPOINT, phase_cfg.steps)])
  phase_cfg = runtime.cfg.phase_configs[settings.phase]
  tokenizer = runtime.tokenizer
  stop = tuple(cfg.sampling.stop_tokens or (tokenizer.eos_id,))
  ids = resolve_ids(settings, tokenizer, cfg.data, stop, cfg.sampling.max_new_tokens)
  runtime.evaluate_initial(phase_cfg.role("policy"))
  for name in settings.before:
    runtime.run_phase(name)
  roles = runtime.role_specs(phase_cfg)
  spec = spec_for(runtime.cfg, roles, tokenizer.pad_id)
  evaluate = self_evaluator(runtime, spec, settings, ids)
  built = runtime.build_phase(
      CHECKPOINT, phase_cfg, roles=roles,
      make_step=lambda layout: make_step(layout, spec=spec, settings=settings, ids=ids),
      also_evaluate=evaluate(roles), also_evaluate_at_start=True)
  runtime.run(built)
  what = f"with {', '.join(settings.tasks)} verifier tasks" if settings.tasks else "alone"
  return runtime.finish(f"SPARK: {phase_cfg.role('policy')} ({phase_cfg.objective.name}) "
                        f"{what} on {cfg.data.task}")


def dry_run_program(cfg: ExperimentConfig) -> dry_run.RecipeProgram:
  """The loop's one program for ``--dry_run``: the answers, every task's sampling and the
  update on all of them, on abstract inputs (the texts as pad ids of their length)."""
  settings: SPARKSettings = cfg.recipe.settings
  phase = cfg.phase_configs[settings.phase]
  roles = role_specs(cfg, phase)
  spec = spec_for(cfg, roles, dry_run.PAD_ID)
  stop = (cfg.sampling.stop_tokens or (dry_run.PAD_ID + 2,))[0]
  ids = dry_run_ids(settings, dry_run.PAD_ID, stop)
  return dry_run.RecipeProgram(
      name=f"{CHECKPOINT}_step", roles=roles,
      make_step=lambda layout: make_step(layout, spec=spec, settings=settings, ids=ids),
      rows=phase.rows_per_step, rollouts=phase.batch_size, policy=spec.policy,
      extra_state={},
      cache_slots=(task_slots(cfg.data.max_prompt_len, cfg.sampling.max_new_tokens, ids,
                              settings.restate_prompt) if settings.tasks else 0))


RECIPE = base.register(base.Recipe("spark", SPARKSettings, run, dry_run_program))
