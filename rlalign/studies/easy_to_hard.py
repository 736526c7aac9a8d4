"""Easy-to-hard transfer without labels: every arm of ``configs/easy_to_hard_addition.py``.

  python -m rlalign.studies.easy_to_hard --out=/tmp/e2h_study [--arms=cotrain,majority,...]
      [--smoke] [--seed=0]

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>``. A killed study resumes:
a finished arm is read back with the wall time it took, an unfinished one resumes from its
checkpoints. The arms share the warm start and the data stream and differ only in the reward
on hard prompts (and ``cotrain_balanced`` in its verifier's loss). Writes
``<out>/results.json``, ``<out>/results.md`` (the tables below) and
``<out>/easy_to_hard.png`` (per arm over iterations: hard gold pass@1, easy pass@1, and the
verifier's AUROC and false-positive rate on hard samples). Hard greedy accuracy by the gold
answer's length is recomputed from each arm's final checkpoint.

Gold figures come from the held-out split ``test_hard``, which only the evaluator reads.
Measured on 2 CPU cores (19 min for the five arms):

  arm               hard greedy  hard sampled  easy greedy  verifier AUROC / FPR (hard)
  warm start        0.045        0.078         0.162
  easy_only         0.121        0.117         1.000        0.644 / 0.763
  majority          0.166        0.162         0.473        0.730 / 0.522
  self_confidence   0.107        0.105         0.344        0.832 / 0.199
  cotrain           0.494        0.484         0.994        0.708 / 1.000
  cotrain_balanced  0.488        0.486         0.957        0.637 / 0.939

cotrain solves 0.944 of the hard problems with 4-digit answers and none of those with 5 (a
final carry: longer than any labelled answer). Over seeds 0-3 (``--seed``, easy_only and
cotrain only), cotrain wins in three and loses in one, where its verifier was hacked; README.md,
"Self-improvement without labels", has every figure and reads them.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Sequence

from rlalign import metrics as metrics_lib
from rlalign import workdir as workdir_lib
from rlalign.configs import easy_to_hard_addition as config_module
from rlalign.studies import arms as arms_lib

ARMS = ("easy_only", "majority", "self_confidence", "cotrain", "cotrain_balanced")
COLUMNS = (  # (heading, metric)
    ("hard pass@1 greedy", "eval/test_hard/pass@1_greedy"),
    ("hard pass@1 sampled", "eval/test_hard/pass@1_sampled"),
    ("easy pass@1 greedy", "eval/pass@1_greedy"),
    ("verifier hard bal. acc.", "eval/test_hard/verifier_balanced_accuracy"),
    ("verifier hard AUROC", "eval/test_hard/verifier_auroc"),
    ("verifier hard FPR", "eval/test_hard/verifier_false_positive_rate"),
)
CURVES = (("hard pass@1 greedy (gold)", "eval/test_hard/pass@1_greedy"),
          ("easy pass@1 greedy", "eval/pass@1_greedy"),
          ("verifier AUROC, hard samples", "eval/test_hard/verifier_auroc"),
          ("verifier false-positive rate, hard samples",
           "eval/test_hard/verifier_false_positive_rate"))


def run_arm(out: str, arm: str, smoke: bool, seed: int = 0) -> float:
  return arms_lib.run_arm(out, "easy_to_hard_addition", arm, smoke, seed)


def warm_start_steps(smoke: bool) -> int:
  return config_module.get_config("cotrain" + (",smoke" if smoke else "")).phases.warm_start.steps


def arm_results(out: str, arm: str, offset: int) -> Dict[str, Any]:
  """The arm's evaluations: at the warm start's end, at the end, and every one in between."""
  records = metrics_lib.read_jsonl(os.path.join(out, arm, "metrics.jsonl"))
  evals = [r for r in records if "eval/test_hard/pass@1_greedy" in r]
  start = [r for r in evals if r["step"] <= offset]
  have = lambda r, m: m in r and math.isfinite(r[m])  # NaN: AUROC with one class only
  pick = lambda r: {m: r[m] for _, m in COLUMNS if have(r, m)}
  return {"warm_start": pick(start[-1]) if start else {}, "final": pick(evals[-1]),
          "curves": {m: [(r["step"] - offset, r[m]) for r in evals
                         if have(r, m) and r["step"] >= offset] for _, m in CURVES}}


def by_answer_length(run: str, phase: str) -> Dict[str, float]:
  """Greedy gold accuracy on test_hard of the generator as ``phase`` left it, by the gold
  answer's length in digits: a hard sum with a final carry is one digit longer than any
  answer the labelled problems have."""
  import jax
  import numpy as np
  from rlalign.data import pipeline, tokenizer as tok_lib
  from rlalign.rl import runtime as runtime_lib
  from rlalign.sampling import sampler

  cfg, _ = workdir_lib.load_experiment(run=run)
  tok = tok_lib.tokenizer_for(cfg.data)
  cfg = runtime_lib.with_stop_token(cfg, tok.eos_id)
  plan = workdir_lib.plan_for(cfg, "generator", one_device=True)
  _, params = workdir_lib.role_params(run, cfg, "generator", plan, phase=phase)
  greedy = jax.tree_util.Partial(sampler.sample, model_cfg=cfg.role_model("generator"),
                                 cfg=dataclasses.replace(cfg.sampling, temperature=0.0),
                                 pad_id=tok.pad_id)
  decode = jax.jit(lambda p, t, m: greedy(p, t, m, jax.random.key(0)).tokens)
  right: Dict[int, List[bool]] = {}
  for batch in pipeline.eval_batches(cfg.data, tok, "test_hard", 256):
    out = np.asarray(decode(params, batch["prompt_tokens"], batch["prompt_mask"]))
    for row, answer, mask, valid in zip(out, batch["answer_tokens"], batch["answer_mask"],
                                        batch["valid"]):
      if valid:
        gold = tok.decode(answer[mask])
        right.setdefault(len(gold), []).append(tok.decode(row, strict=False) == gold)
  return {f"{n} digits": float(np.mean(v)) for n, v in sorted(right.items())} | {
      f"{n} digits, share": len(v) / sum(map(len, right.values()))
      for n, v in sorted(right.items())}


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float]) -> str:
  head = "| arm | " + " | ".join(h for h, _ in COLUMNS) + " | wall |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  fmt = lambda row: " | ".join(f"{row[m]:.3f}" if m in row else "-" for _, m in COLUMNS)
  first = next(iter(results.values()))
  lines.append(f"| warm start | {fmt(first['warm_start'])} | - |")
  for arm, res in results.items():
    lines.append(f"| {arm} | {fmt(res['final'])} | {walls[arm] / 60:.1f} min |")
  return "\n".join(lines)


def length_table(breakdown: Dict[str, Dict[str, float]]) -> str:
  """Hard greedy pass@1 by the gold answer's length, per arm."""
  lengths = [k for k in next(iter(breakdown.values())) if not k.endswith("share")]
  first = next(iter(breakdown.values()))
  head = "| hard greedy pass@1 by answer length | " + " | ".join(
      f"{k} ({first[k + ', share']:.0%} of test_hard)" for k in lengths) + " |"
  lines = [head, "|" + "---|" * (len(lengths) + 1)]
  for arm, row in breakdown.items():
    lines.append(f"| {arm} | " + " | ".join(f"{row[k]:.3f}" for k in lengths) + " |")
  return "\n".join(lines)


def plot(results: Dict[str, Dict[str, Any]], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 7), layout="constrained")
  FigureCanvasAgg(fig)
  for i, (title, metric) in enumerate(CURVES):
    ax = fig.add_subplot(2, 2, i + 1)
    for arm, res in results.items():
      points = res["curves"][metric]
      if points:
        ax.plot(*zip(*points), marker=".", label=arm)
    ax.set_title(title)
    ax.set_xlabel("iteration after the warm start")
    ax.grid(alpha=0.3)
    if ax.lines:  # an AUROC over one class only is undefined, and a smoke run may have none
      ax.legend(fontsize=8)
  fig.suptitle("Easy-to-hard transfer on addition (labels for 3 digits, gold judge on 4)")
  metrics_lib.save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  args, arms = arms_lib.parse("python -m rlalign.studies.easy_to_hard", __doc__, ARMS, argv)
  walls = {arm: run_arm(args.out, arm, args.smoke, args.seed) for arm in arms}
  offset = warm_start_steps(args.smoke)
  results = {arm: arm_results(args.out, arm, offset) for arm in arms}
  breakdown = {"warm start": by_answer_length(os.path.join(args.out, arms[0]), "warm_start"),
               **{arm: by_answer_length(os.path.join(args.out, arm), "alternating")
                  for arm in arms}}
  for arm in arms:
    results[arm]["hard_greedy_by_answer_length"] = breakdown[arm]
  text = table(results, walls) + "\n\n" + length_table(breakdown)
  arms_lib.write_results(args.out, results, walls, text, lambda path: plot(results, path), "easy_to_hard.png")
  return results


if __name__ == "__main__":
  main()
