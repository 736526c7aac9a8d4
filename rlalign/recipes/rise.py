"""RISE, recursive introspection (Qu et al. 2024): a policy taught to correct itself over turns.

Each iteration, in one compiled program over one KV cache (``sampling.sampler.Conversation``):

  turn 1     the policy answers each prompt (``group_size`` samples of it)
  feedback   the answers the judge finds wrong get ``feedback`` ("The answer is incorrect.
             Please try again."); the right ones stop there
  turn k     from each wrong history, ``best_of`` continuations by the same policy, sampled
             from the shared cache; the best by reward is kept as the turn's answer (the
             improved later turn of RISE's self-distillation)

Every turn taken is a training example, (history so far, answer), scored by the phase's
rewards; the phase's objective learns on all of them at once: reward-weighted regression
(``rwr``, tau 0.4, as RISE), whose weights are a softmax over the examples. A turn a row did
not take carries no tokens and no weight.

Held out, the policy runs the same dialogue greedily, and the recipe logs per turn k:

  eval/turn<k>_accuracy            right by turn k, feedback only after a wrong answer (an
                                   oracle says when to stop, RISE's "with oracle")
  eval/turn<k>_accuracy_no_oracle  turn k's answer right, every row told it was wrong
  eval/turn<k>_fixed               of the rows wrong at turn k-1, the share turn k fixes
  eval/turn<k>_broken              of the rows right at turn k-1, the share turn k breaks
                                   (no oracle: every row told it was wrong)
  eval/turn<k>_majority            the most frequent of the first k answers right, no oracle
                                   (RISE's inference without one; a tie: the earliest)

before the loop (the untrained model's turns) and at every evaluation; ``rise_turns.png`` in
the workdir plots accuracy over turns before and after. ``eval_turns`` may exceed ``turns``
(a model trained on two turns, asked for three), and ``turns=1`` is the single-turn baseline:
RWR on first answers alone, evaluated over the same turns.

  configs/rise_addition.py
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import metrics as metrics_lib
from rlalign.data import turns as turns_lib
from rlalign.recipes import base
from rlalign.rewards import base as reward_base
from rlalign.rl import dry_run, iteration, offline
from rlalign.rl import state as state_lib
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import StepLayout, jit_step
from rlalign.rl.runtime import Runtime, fused_spec, role_specs
from rlalign.sampling import sampler

CHECKPOINT = "rise"
FEEDBACK = "The answer is incorrect. Please try again.\n"


@dataclasses.dataclass(frozen=True)
class RISESettings:
  before: Tuple[str, ...] = ()   # phases run first, in order (a warm start)
  phase: str = "rise"            # the RL phase: its steps, batch, rewards and objective (rwr)
  turns: int = 2                 # turns a training rollout may take
  best_of: int = 4               # continuations sampled per wrong history; the best is kept
  feedback: str = FEEDBACK       # said after a wrong answer (a user turn with a chat template)
  judge: str = "exact_match"     # the reward whose verdict (> 0.5) is "right": who stops
  eval_turns: int = 0            # turns of the held-out dialogue; 0 is ``turns``
  # The question again after the feedback (its BOS dropped): what a model that never
  # followed an instruction needs to answer a second time at all; a chat model does not.
  restate_prompt: bool = False
  # An SFT phase (on the data's demonstrations) that the recipe runs in the dialogue's form
  # before the loop: the policy's own first answer, the feedback where it was wrong, then the
  # demonstration as the answer after it (and as the first answer, so that stays). A model
  # that never saw a second turn does not answer in one (RISE starts from chat models);
  # "" skips it.
  format_phase: str = ""

  @property
  def turns_evaluated(self) -> int:
    return self.eval_turns or self.turns

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    phases = cfg.phase_configs
    phase = base.check_phases(prefix, cfg, self.phase, self.before)
    rl = phase.rl()
    where = f"phases.{self.phase}"
    if rl.estimator.min_group_size > 1 or rl.estimator.greedy_baseline:
      raise ValueError(f"{where}.advantage {rl.advantage!r} compares samples of one prompt; "
                       "RISE's examples are turns of different histories, each trained by its "
                       "own reward (objective rwr; advantage 'none')")
    for name in ("dynamic_sampling", "response_buckets", "monitors"):
      if getattr(rl, name):
        raise ValueError(f"{where}.{name} is not supported by the rise recipe")
    if rl.lsc_terms or any(t.reward.per_token for t in rl.rewards):
      raise ValueError(f"{where}.rewards: the rise recipe scores each turn by sequence "
                       "rewards without a reference's samples (no lsc, no step rewards)")
    judge = [t for t in rl.rewards if t.key == self.judge]
    if not judge:
      raise ValueError(f"{prefix}.judge {self.judge!r} is not one of {where}.rewards")
    if judge[0].roles:
      raise ValueError(f"{prefix}.judge {self.judge!r} reads roles {list(judge[0].roles)}: "
                       "the judge of right and wrong is a verifiable reward (exact_match)")
    for name in ("turns", "best_of"):
      if getattr(self, name) < 1:
        raise ValueError(f"{prefix}.{name} must be >= 1, got {getattr(self, name)}")
    if self.eval_turns < 0:
      raise ValueError(f"{prefix}.eval_turns must be >= 0 (0 is turns), got {self.eval_turns}")
    if not self.feedback:
      raise ValueError(f"{prefix}.feedback must be the text said after a wrong answer")
    if self.format_phase:
      if self.format_phase not in phases:
        raise ValueError(f"{prefix}.format_phase {self.format_phase!r} is not in phases "
                         f"({sorted(phases)})")
      fmt = phases[self.format_phase]
      if fmt.objective.objective.batch != "demonstrations":
        raise ValueError(f"{prefix}.format_phase {self.format_phase!r} must train on "
                         f"demonstrations (objective sft), not {fmt.objective.objective.batch}")
      if self.format_phase in self.before:
        raise ValueError(f"{prefix}.format_phase {self.format_phase!r} runs after "
                         f"{prefix}.before, in the dialogue's form; do not list it there too")


def _rollouts(prompt_tokens, prompt_mask, samples: sampler.Samples, answers, stop):
  return {"prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask,
          "completion_tokens": samples.tokens, "completion_mask": samples.mask,
          "completion_stopped": jnp.any(jnp.isin(samples.tokens, stop) & samples.mask, axis=1),
          "logprobs": samples.logprobs, **answers}


def slots_needed(prompt_len: int, new_tokens: int, feedback: int, turns: int,
                 restate: bool = False) -> int:
  return prompt_len + turns * new_tokens + (turns - 1) * (feedback + restate * prompt_len)


def dialogue(policy, prompt_tokens, prompt_mask, answers, rng, spec: iteration.IterationSpec,
             settings: RISESettings, feedback: Sequence[int], *, turns: int, best_of: int,
             judge_scores, oracle: bool = True, sampling=None, bos_id=None
             ) -> List[Tuple[Dict[str, jax.Array], Dict[str, Any], jax.Array]]:
  """One multi-turn rollout of every row: per turn, (rollouts with the history before the
  turn as prompt, their scores, the rows that took the turn). Later turns keep the best of
  ``best_of`` continuations by ``judge_scores(rollouts) -> (scores, total)``; with ``oracle``
  only rows judged wrong continue, else every row does. ``settings.restate_prompt`` says
  each row's prompt again after the feedback, without ``bos_id``."""
  sampling = sampling or spec.sampling
  N, B = sampling.max_new_tokens, prompt_tokens.shape[0]
  stop = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
  slots = slots_needed(prompt_tokens.shape[1], N, len(feedback), turns,
                       settings.restate_prompt)
  restated = prompt_mask.astype(bool)
  if bos_id is not None:
    restated = restated & (prompt_tokens != bos_id)
  conv = sampler.start(policy, prompt_tokens, prompt_mask, spec.model, slots, spec.pad_id)
  history = (prompt_tokens, prompt_mask.astype(bool))
  conv, samples = sampler.reply(conv, jax.random.fold_in(rng, 0), spec.model, sampling,
                                spec.pad_id)
  rollouts = _rollouts(*history, samples, answers, stop)
  scores, _ = judge_scores(rollouts)
  active = jnp.ones((B,), bool)
  out = [(rollouts, scores, active)]
  for k in range(1, turns):
    right = scores[settings.judge] > 0.5
    active = active & ~right if oracle else active
    conv = sampler.say(conv, feedback, spec.model, active)
    if settings.restate_prompt:
      conv = sampler.say(conv, prompt_tokens, spec.model, active, mask=restated)
    history = conv.history()
    tiled = sampler.repeat(conv, best_of) if best_of > 1 else conv
    repeat = lambda x: jnp.repeat(x, best_of, axis=0)
    tiled, samples = sampler.reply(tiled, jax.random.fold_in(rng, k), spec.model, sampling,
                                   spec.pad_id, active=repeat(active))
    candidates = _rollouts(repeat(history[0]), repeat(history[1]), samples,
                           {key: repeat(v) for key, v in answers.items()}, stop)
    scores, total = judge_scores(candidates)
    if best_of > 1:
      best = best_rows(total, best_of)
      pick = lambda tree: jax.tree.map(lambda x: jnp.take(x, best, axis=0), tree)
      candidates, scores, conv = pick(candidates), pick(scores), sampler.take(tiled, best)
    else:
      conv = tiled
    out.append((candidates, scores, active))
  return out


def best_rows(total: jax.Array, n: int) -> jax.Array:
  """[B]: for each run of ``n`` consecutive candidates of ``total`` [B * n], the index of the
  first with the highest reward."""
  B = total.shape[0] // n
  return jnp.arange(B) * n + jnp.argmax(total.reshape(B, n), axis=1)


def _left_pad(x: jax.Array, width: int, value) -> jax.Array:
  return jnp.pad(x, ((0, 0), (width - x.shape[1], 0)), constant_values=value)


def training_batch(turns, pad_id: int):
  """The turns' rollouts and scores stacked into one batch of examples, prompts left-padded
  to the longest history; a turn's rows that did not take it keep no completion token."""
  width = max(r["prompt_tokens"].shape[1] for r, _, _ in turns)
  rollouts, scores = [], []
  for r, s, active in turns:
    r = {**r, "prompt_tokens": _left_pad(r["prompt_tokens"], width, pad_id),
         "prompt_mask": _left_pad(r["prompt_mask"].astype(bool), width, False),
         "completion_mask": r["completion_mask"] & active[:, None],
         "completion_stopped": r["completion_stopped"] & active}
    rollouts.append(r)
    scores.append(s)
  cat = lambda *xs: jnp.concatenate(xs, axis=0)
  return jax.tree.map(cat, *rollouts), jax.tree.map(cat, *scores)


def rise_step(state, batch, rng, frozen, *, spec: iteration.IterationSpec,
              settings: RISESettings, feedback: Tuple[int, ...], bos_id=None):
  """One iteration: the multi-turn rollout, then the objective on every turn taken."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, score_rng, learn_rng = jax.random.split(rng, 3)
  trained = state_lib.params_of(state)
  policy = iteration.policy_params(trained, frozen, spec)
  G, turns = spec.rl.group_size, settings.turns
  repeat = lambda x: jnp.repeat(x, G, axis=0)
  answers = {k: repeat(batch[k]) for k in ("answer_tokens", "answer_mask")}

  def judge_scores(rollouts):
    scores = iteration.score(rollouts, trained, frozen, spec, score_rng)
    return scores, reward_base.combine(spec.rewards, scores)

  taken = dialogue(policy, repeat(batch["prompt_tokens"]), repeat(batch["prompt_mask"]),
                   answers, sample_rng, spec, settings, feedback, turns=turns,
                   best_of=settings.best_of, judge_scores=judge_scores, bos_id=bos_id)
  rollouts, scores = training_batch(taken, spec.pad_id)
  # The update sees every turn's examples as one batch of B * turns rollouts.
  learner = dataclasses.replace(spec, rl=dataclasses.replace(
      spec.rl, batch_size=spec.rl.batch_size * turns))
  state, metrics = iteration.learn(state, rollouts, scores, learn_rng, frozen, learner)
  metrics = {k: v for k, v in metrics.items() if k not in ("accuracy", "reward")}
  for k, (r, s, active) in enumerate(taken, start=1):
    took = active.astype(jnp.float32)
    n = jnp.maximum(took.sum(), 1.0)
    total = reward_base.combine(spec.rewards, s)
    metrics[f"turn{k}/took"] = took.mean()
    metrics[f"turn{k}/reward"] = jnp.sum(total * took) / n
    metrics[f"turn{k}/accuracy"] = jnp.sum((s[settings.judge] > 0.5) * took) / n
  right = jnp.zeros_like(taken[0][2])
  for r, s, active in taken:
    right = right | (active & (s[settings.judge] > 0.5))
  metrics["accuracy"] = jnp.mean(right.astype(jnp.float32))  # right by the last turn taken
  metrics["reward"] = metrics["turn1/reward"]
  return state, metrics


def format_step(state, batch, rng, frozen, *, spec: iteration.IterationSpec,
                learner: offline.OfflineSpec, settings: RISESettings,
                feedback: Tuple[int, ...], bos_id=None):
  """One step of the dialogue warm start: the policy's first answer to each prompt, the
  feedback (and question) after the wrong ones, and the objective on the demonstration both
  as the first answer and as the answer after a wrong one."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, learn_rng = jax.random.split(rng)
  trained = state_lib.params_of(state)
  policy = iteration.policy_params(trained, frozen, spec)
  answers = {k: batch[k] for k in ("answer_tokens", "answer_mask")}

  def judge_scores(rollouts):
    scores = iteration.score(rollouts, trained, frozen, spec)
    return scores, reward_base.combine(spec.rewards, scores)

  first, second = dialogue(policy, batch["prompt_tokens"], batch["prompt_mask"], answers,
                           sample_rng, spec, settings, feedback, turns=2, best_of=1,
                           judge_scores=judge_scores, bos_id=bos_id)
  width = second[0]["prompt_tokens"].shape[1]
  pad = lambda x, v: _left_pad(x, width, v)
  cat = lambda a, b: jnp.concatenate([a, b], axis=0)
  demo, demo_mask = batch["demo_tokens"], batch["demo_mask"].astype(bool)
  examples = {
      "prompt_tokens": cat(pad(batch["prompt_tokens"], spec.pad_id),
                           second[0]["prompt_tokens"]),
      "prompt_mask": cat(pad(batch["prompt_mask"].astype(bool), False),
                         second[0]["prompt_mask"]),
      "completion_tokens": cat(demo, demo),
      "mask": cat(demo_mask, demo_mask & second[2][:, None]),
  }
  state, metrics = offline.learn(state, examples, learn_rng, frozen, learner)
  right = first[1][settings.judge] > 0.5
  return {**state, "step": state["step"] + 1}, {
      **metrics, "turn1/accuracy": jnp.mean(right.astype(jnp.float32)),
      "turn2/took": jnp.mean(second[2].astype(jnp.float32))}


def make_step(layout: StepLayout, step_fn=None, **static) -> Any:
  return jit_step(functools.partial(step_fn or rise_step, **static), layout)


def spec_for(cfg: ExperimentConfig, roles, pad_id: int) -> iteration.IterationSpec:
  return fused_spec(cfg, cfg.recipe.settings.phase, roles, pad_id,
                    "the rise recipe judges each turn")


def majority_right(answers: jax.Array, right: jax.Array) -> jax.Array:
  """[B, turns]: whether the most frequent of the first k answers ([B, turns, N] tokens, -1
  past each answer) is right (``right`` [B, turns]); a tie goes to the earliest answer.
  RISE's inference without an oracle."""
  same = jnp.all(answers[:, :, None, :] == answers[:, None, :, :], axis=-1)  # [B, T, T]
  T = answers.shape[1]
  out = []
  for k in range(1, T + 1):
    votes = jnp.sum(same[:, :k, :k], axis=2)                                    # [B, k]
    pick = jnp.argmax(votes, axis=1)
    out.append(jnp.take_along_axis(right[:, :k], pick[:, None], axis=1)[:, 0])
  return jnp.stack(out, axis=1)


def turn_summary(right: np.ndarray, right_no_oracle: np.ndarray,
                 majority: np.ndarray | None = None) -> Dict[str, float]:
  """``right`` [rows, turns]: each turn's answer right under the oracle (a row that was right
  stays right: it stopped); ``right_no_oracle`` the same with feedback after every answer;
  ``majority`` whether the majority of the answers so far is right, without the oracle."""
  out = {}
  for k in range(right.shape[1]):
    out[f"eval/turn{k + 1}_accuracy"] = float(right[:, :k + 1].any(axis=1).mean())
    out[f"eval/turn{k + 1}_accuracy_no_oracle"] = float(right_no_oracle[:, k].mean())
    if majority is not None:
      out[f"eval/turn{k + 1}_majority"] = float(majority[:, k].mean())
    if k:
      before, now = right[:, :k].any(axis=1), right[:, k]
      out[f"eval/turn{k + 1}_fixed"] = float(now[~before].mean()) if (~before).any() else 0.0
      prev, cur = right_no_oracle[:, k - 1], right_no_oracle[:, k]
      out[f"eval/turn{k + 1}_broken"] = float((~cur[prev]).mean()) if prev.any() else 0.0
  return out


def turn_evaluator(runtime: Runtime, spec: iteration.IterationSpec, settings: RISESettings,
                   feedback: Tuple[int, ...], bos_id=None):
  """``for_roles(roles) -> evaluate(state, frozen)``: the held-out dialogue, greedy, with and
  without the oracle, on the test split and each extra one (``eval/<split>/turn...``), of
  the policy as a phase over ``roles`` holds it (one compiled program serves every phase).
  Its judge is the judge reward with every row scored, as the runtime's evaluation scores
  answers."""
  judge = next(t for t in spec.rewards if t.key == settings.judge)
  judge = dataclasses.replace(judge, rows="all")
  greedy = dataclasses.replace(spec.sampling, temperature=0.0)
  turns = settings.turns_evaluated

  def per_row(params, batch, rng):
    def judge_scores(rollouts):
      s = reward_base.score_in_graph((judge,), rollouts, {})
      return s, s[judge.key]
    answers = {k: batch[k] for k in ("answer_tokens", "answer_mask")}
    out = {}
    for name, oracle in (("oracle", True), ("no_oracle", False)):
      taken = dialogue(params, batch["prompt_tokens"], batch["prompt_mask"], answers, rng,
                       spec, settings, feedback, turns=turns, best_of=1,
                       judge_scores=judge_scores, oracle=oracle, sampling=greedy,
                       bos_id=bos_id)
      out[name] = jnp.stack([(s[judge.key] > 0.5) & active for _, s, active in taken], axis=1)
    answers_so_far = jnp.stack([jnp.where(r["completion_mask"], r["completion_tokens"], -1)
                                for r, _, _ in taken], axis=1)
    out["majority"] = majority_right(answers_so_far, out["no_oracle"])
    return out

  summarize = lambda rows: turn_summary(rows["oracle"], rows["no_oracle"], rows["majority"])
  return runtime.per_row_evaluator(per_row, summarize, spec.policy)


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  settings: RISESettings = cfg.recipe.settings
  phase_cfg = cfg.phase_configs[settings.phase]
  schedule = [(name, cfg.phase_configs[name].steps) for name in settings.before]
  if settings.format_phase:
    schedule.append((settings.format_phase, cfg.phase_configs[settings.format_phase].steps))
  runtime = Runtime(cfg, workdir, schedule + [(CHECKPOINT, phase_cfg.steps)])
  phase_cfg = runtime.cfg.phase_configs[settings.phase]
  feedback = turns_lib.said_after_answer(
      runtime.tokenizer, cfg.data, settings.feedback,
      cfg.sampling.stop_tokens or (runtime.tokenizer.eos_id,), "recipe.feedback")
  if not feedback:
    raise ValueError(f"recipe.feedback {settings.feedback!r} is no tokens in this tokenizer")
  runtime.evaluate_initial(phase_cfg.role("policy"))
  for name in settings.before:
    runtime.run_phase(name)
  roles = runtime.role_specs(phase_cfg)
  spec = spec_for(runtime.cfg, roles, runtime.tokenizer.pad_id)
  bos_id = runtime.tokenizer.bos_id
  evaluate_turns = turn_evaluator(runtime, spec, settings, feedback, bos_id)
  if settings.format_phase:
    runtime.run(runtime.build_offline_phase(
        settings.format_phase,
        lambda layout, learner: make_step(layout, format_step, spec=spec, learner=learner,
                                          settings=settings, feedback=feedback, bos_id=bos_id),
        also_evaluate_for=evaluate_turns, also_evaluate_at_start=True))
  built = runtime.build_phase(
      CHECKPOINT, phase_cfg, roles=roles,
      make_step=lambda layout: make_step(layout, spec=spec, settings=settings,
                                         feedback=feedback, bos_id=bos_id),
      also_evaluate=evaluate_turns(roles), also_evaluate_at_start=True)
  runtime.run(built)
  summary = runtime.finish(f"RISE: {phase_cfg.role('policy')} ({phase_cfg.objective.name}) "
                           f"over {settings.turns} turns on {cfg.data.task}")
  if jax.process_index() == 0:
    plot_turns(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "rise_turns.png"),
               settings.turns_evaluated)
  return summary


def turn_curves(records: Sequence[Mapping[str, Any]], turns: int, prefix: str = "eval/"
                ) -> Dict[str, List[Tuple[int, List[float]]]]:
  """Per evaluation step, accuracy over turns: {"oracle": [(step, [acc@1, ...])], ...}."""
  out: Dict[str, List[Tuple[int, List[float]]]] = {"oracle": [], "no_oracle": []}
  for r in records:
    for mode, suffix in (("oracle", ""), ("no_oracle", "_no_oracle")):
      keys = [f"{prefix}turn{k}_accuracy{suffix}" for k in range(1, turns + 1)]
      if all(k in r for k in keys):
        out[mode].append((int(r["step"]), [float(r[k]) for k in keys]))
  return out


def plot_turns(metrics_path: str, png_path: str, turns: int) -> None:
  """Held-out accuracy over turns, before the loop and after it, with and without the oracle."""
  curves = turn_curves(metrics_lib.read_jsonl(metrics_path), turns)
  if not curves["oracle"]:
    return
  # A Figure on an Agg canvas, as metrics.plot_curves: no pyplot, so a caller's backend and
  # open figures are left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(10, 4), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  x = np.arange(1, turns + 1)
  for ax, mode, title in ((axes[0], "oracle", "feedback only after a wrong answer (oracle)"),
                          (axes[1], "no_oracle", "feedback after every answer")):
    points = curves[mode]
    for (step, acc), label, style in ((points[0], "before (step {})", "o--"),
                                      (points[-1], "after (step {})", "o-")):
      ax.plot(x, acc, style, label=label.format(step))
    ax.set_xticks(x)
    ax.set_xlabel("turn")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
  metrics_lib.save_png(fig, png_path, dpi=100)


def dry_run_program(cfg: ExperimentConfig) -> dry_run.RecipeProgram:
  """The loop's one program for ``--dry_run``: every turn's sampling (best-of-N included) and
  the update on all turns' examples, on abstract inputs, with the feedback as pad ids of its
  real length (its values do not change shapes)."""
  settings: RISESettings = cfg.recipe.settings
  phase = cfg.phase_configs[settings.phase]
  roles = role_specs(cfg, phase)
  spec = spec_for(cfg, roles, dry_run.PAD_ID)
  feedback = (dry_run.PAD_ID,) * max(1, len(settings.feedback))
  return dry_run.RecipeProgram(
      name=f"{CHECKPOINT}_step", roles=roles,
      make_step=lambda layout: make_step(layout, spec=spec, settings=settings,
                                         feedback=feedback),
      rows=phase.rows_per_step, rollouts=phase.batch_size * settings.best_of,
      policy=spec.policy, extra_state={},
      cache_slots=slots_needed(cfg.data.max_prompt_len, cfg.sampling.max_new_tokens,
                               len(feedback), settings.turns, settings.restate_prompt))


RECIPE = base.register(base.Recipe("rise", RISESettings, run, dry_run_program))
