"""Uncertainty decomposition of sampled answers: an SFT ensemble, ID against OOD.

  python -m rlalign.studies.uncertainty --out=/tmp/uncertainty [--members=4 --steps=600
      --samples=8 --prompts=256 --shift=carries --seed=0]

K policies (tiny transformers with the LM head) are trained by SFT from different seeds on ID
addition prompts with their reversed-digit sums (``agreement_on_the_line``'s data and
``pretrain``). Then, in one jitted program, every member samples G answers at temperature 1
for every ID and OOD test prompt (``sampler.sample``, vmapped over members), the answers
become class ids (``answer_class_ids``), and ``decompose`` splits each prompt's predictive
entropy into aleatoric (mean entropy of each member's own answers) and epistemic (the
members' disagreement, their mutual information with the answer). ``uncertainty_penalty``
turns the epistemic part into a per-sample reward term.

The same is done across prompt paraphrases: a + b and b + a, both sampled G times by each
member, the two phrasings standing as the "members" of ``decompose`` (per member and prompt,
then averaged).

The default shift is ``carries`` (ID: at most one carry, OOD: two or three; see
``agreement_on_the_line``), not the classifier study's ``subpopulation``: epistemic
uncertainty is about inputs unlike the training data, and a rare part of the training
distribution is not that. ``--shift=subpopulation`` runs the other.

Measured with the defaults (K = 4 members of d_model 32, 600 SFT steps each, G = 8, 256
prompts per domain; 2 CPU cores shared with other jobs at load ~8): 1.2-1.7 min wall, of
which 49-73 s training and 12-21 s measuring (one compile included). Entropies in nats, means
over prompts:

  domain  decomposition   total  aleatoric  epistemic   sample acc  penalty/sample
  ID      ensemble        0.114      0.069      0.045        0.970         -0.0448
  ID      paraphrase      0.085      0.066      0.019
  OOD     ensemble        0.846      0.375      0.471        0.350         -0.4714
  OOD     paraphrase      0.554      0.382      0.171
  AUROC for prompts answered mostly wrong (ID and OOD pooled): total 0.926, aleatoric 0.916,
  epistemic 0.909; within OOD: total 0.853, aleatoric 0.863, epistemic 0.796

Epistemic uncertainty rises tenfold OOD, as expected, and becomes the larger part (0.47 of
0.85 nats). Its typical form is each member confidently sampling its own sum: for the prompt
"590+786=" (95 + 687 = 782) the four members answered 862, 782, 762 and 772 almost every
time, only one of them right. Their answers never overlap, so epistemic is exactly log 4 =
1.39, against 0.23 aleatoric. Aleatoric uncertainty rises too (0.07 to 0.38), since the
members are also less sure on their own. The paraphrase split rises less
(0.02 to 0.17): one member's answers to a + b and b + a differ less than different members'
answers do. As a reward term, ``uncertainty_penalty`` (coef 1) costs an ID sample 0.045 on
average and an OOD sample 0.47. It is nonzero for 48% of ID and 93% of OOD samples, and every
sample of a prompt gets the same value. Within OOD, epistemic ranks the mostly-wrong prompts
a little worse than total entropy does (AUROC 0.80 against 0.85).

``--shift=subpopulation`` (OOD in the training support, only rare; 1.6 min): sample accuracy
0.88 ID, 0.86 OOD; epistemic 0.159 ID, 0.187 OOD (total 0.43, 0.50). So epistemic barely
moves where the inputs are not new, but within OOD it ranks the mostly-wrong prompts almost
perfectly (AUROC 0.996, total 0.980).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import os
import time
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import metrics
from rlalign.data import addition
from rlalign.data.tokenizer import EOS_ID, PAD_ID
from rlalign.diagnostics import uncertainty as unc
from rlalign.models import transformer as tfm
from rlalign.sampling import sampler
from rlalign.studies import agreement_on_the_line as aol

MAX_NEW_TOKENS = aol.WIDTH + 2  # up to 4 answer digits and EOS
SAMPLING = sampler.SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
                                  stop_tokens=(EOS_ID,))
PARTS = ("total", "aleatoric", "epistemic")


def prompts(num: int, carries: Tuple[int, int], seed: int) -> Dict[str, np.ndarray]:
  """``num`` test prompts [P, 8], the same with the operands swapped (the paraphrase), and the
  correct answers as the sampler would emit them: digits, EOS, then PAD, [P, MAX_NEW_TOKENS].
  """
  rng = np.random.default_rng([seed, *carries, 2])
  pairs = aol.sample_pairs(num, carries, "test", rng)
  encode = lambda a, b: aol.TOKENIZER.encode(addition.format_prompt(a, b, aol.WIDTH))
  target = np.full((num, MAX_NEW_TOKENS), PAD_ID, np.int32)
  for n, (a, b) in enumerate(pairs):
    ids = aol.TOKENIZER.encode(addition.correct_answer(a, b)) + [EOS_ID]
    target[n, :len(ids)] = ids
  return {"prompt": np.array([encode(a, b) for a, b in pairs], np.int32),
          "swapped": np.array([encode(b, a) for a, b in pairs], np.int32),
          "target": target}


@functools.lru_cache(maxsize=None)
def measure_fn(cfg: tfm.ModelConfig, members: int, samples: int, coef: float):
  """The jitted ``measure(stacked_params, prompt, swapped, target, rng) -> dict``.

  ``stacked_params`` carry a leading member axis [K]. Each member samples ``samples``
  answers for each phrasing of each prompt, all in one vmapped ``sampler.sample``; the
  decompositions, the penalty and exact-match correctness follow in the same program.
  """
  num_classes = members * samples

  def sample_view(params, view, rng):  # view [P, L] -> tokens, mask [P, G, N]
    rows = jnp.repeat(view, samples, axis=0)
    out = sampler.sample(params, rows, jnp.ones(rows.shape, bool), rng, cfg, SAMPLING,
                         pad_id=PAD_ID)
    shape = (view.shape[0], samples, MAX_NEW_TOKENS)
    return out.tokens.reshape(shape), out.mask.reshape(shape)

  @jax.jit
  def measure(stacked_params, prompt, swapped, target, rng):
    views = jnp.stack([prompt, swapped])  # [2, P, L]
    keys = jax.random.split(rng, (members, 2))
    per_view = jax.vmap(sample_view, in_axes=(None, 0, 0))  # over the two phrasings
    tokens, mask = jax.vmap(per_view, in_axes=(0, None, 0))(stacked_params, views, keys)
    tokens = tokens.transpose(2, 0, 1, 3, 4)  # [K, 2, P, G, N] -> [P, K, 2, G, N]
    mask = mask.transpose(2, 0, 1, 3, 4)
    # Ensemble: the original phrasing, members as the members.
    ens_tokens, ens_mask = tokens[:, :, 0], mask[:, :, 0]  # [P, K, G, N]
    ids = unc.answer_class_ids(ens_tokens, ens_mask)
    valid = jnp.ones(ids.shape, bool)  # every sample is an answer, stopped or not
    ensemble = unc.decompose(ids, valid, num_classes)
    penalty = unc.uncertainty_penalty(ids, valid, num_classes, coef).reshape(ids.shape)
    # Paraphrases: per (prompt, member), the two phrasings as the members.
    flat = lambda x: x.reshape(-1, 2, samples, MAX_NEW_TOKENS)  # [P * K, 2, G, N]
    para_ids = unc.answer_class_ids(flat(tokens), flat(mask))
    para = unc.decompose(para_ids, jnp.ones(para_ids.shape, bool), 2 * samples)
    para = jax.tree.map(lambda x: x.reshape(-1, members).mean(-1), para)  # [P]
    correct = jnp.all(ens_tokens == target[:, None, None, :], axis=-1)  # [P, K, G]
    return {"ensemble": ensemble._asdict(), "paraphrase": para._asdict(),
            "penalty": penalty, "correct": correct, "class_ids": ids, "tokens": ens_tokens,
            "mask": ens_mask}

  return measure


def auroc(scores: np.ndarray, positives: np.ndarray):
  """Area under the ROC curve of ``scores`` for telling ``positives`` apart (ties count
  half); None when either class is empty."""
  from scipy import stats
  positives = np.asarray(positives, bool)
  n_pos, n_neg = int(positives.sum()), int((~positives).sum())
  if not n_pos or not n_neg:
    return None
  ranks = stats.rankdata(scores)
  return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarise(out: Dict[str, np.ndarray]) -> Dict[str, object]:
  """Means over prompts of each part, sample accuracy and the penalty, for one domain."""
  return {
      "ensemble": {k: float(np.mean(out["ensemble"][k])) for k in PARTS},
      "paraphrase": {k: float(np.mean(out["paraphrase"][k])) for k in PARTS},
      "sample_accuracy": float(np.mean(out["correct"])),
      "member_accuracy": np.mean(out["correct"], axis=(0, 2)).tolist(),
      "penalty_mean": float(np.mean(out["penalty"])),
      "penalty_nonzero_fraction": float(np.mean(out["penalty"] < 0)),
  }


def examples(out: Dict[str, np.ndarray], prompt: np.ndarray, count: int) -> List[Dict]:
  """The ``count`` prompts of highest epistemic uncertainty: each member's sampled answers and
  the per-sample reward term they would get."""
  decode = lambda row, m: aol.TOKENIZER.decode(row[m.astype(bool)], strict=False)
  rows = []
  for p in np.argsort(-out["ensemble"]["epistemic"], kind="stable")[:count]:
    rows.append({
        "prompt": aol.TOKENIZER.decode(prompt[p]),
        **{k: float(out["ensemble"][k][p]) for k in PARTS},
        "answers": [[decode(t, m) for t, m in zip(out["tokens"][p, k], out["mask"][p, k])]
                    for k in range(out["tokens"].shape[1])],
        "penalty": out["penalty"][p].tolist(),
    })
  return rows


def plot(path: str, outs: Dict[str, Dict[str, np.ndarray]], summary: Dict[str, Dict]) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(14, 4.2), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 3, 1)
  labels = [f"{d}\n{s}" for s in ("ensemble", "paraphrase") for d in ("ID", "OOD")]
  x = np.arange(len(labels))
  for i, part in enumerate(PARTS):
    heights = [summary[d.lower()][s][part] for s in ("ensemble", "paraphrase")
               for d in ("ID", "OOD")]
    ax.bar(x + (i - 1) * 0.27, heights, 0.27, label=part)
  ax.set_xticks(x, labels)
  ax.set_ylabel("mean entropy per prompt (nats)")
  ax.set_title("decomposition of sampled answers")
  ax.legend()
  ax.grid(alpha=0.3, axis="y")

  ax = fig.add_subplot(1, 3, 2)
  values = np.concatenate([outs[d]["ensemble"]["epistemic"] for d in ("id", "ood")])
  bins = np.linspace(0.0, max(float(values.max()), 1e-3), 25)
  for d in ("id", "ood"):
    ax.hist(outs[d]["ensemble"]["epistemic"], bins=bins, alpha=0.6, label=d.upper())
  ax.set_xlabel("epistemic (nats) per prompt; the reward penalty is -coef times this")
  ax.set_ylabel("prompts")
  ax.set_title("ensemble epistemic uncertainty")
  ax.legend()

  ax = fig.add_subplot(1, 3, 3)
  for d in ("id", "ood"):
    accuracy = outs[d]["correct"].mean(axis=(1, 2))
    ax.scatter(outs[d]["ensemble"]["epistemic"], accuracy, s=8, alpha=0.5, label=d.upper())
  ax.set_xlabel("epistemic (nats)")
  ax.set_ylabel("sample accuracy of the prompt")
  ax.set_title("uncertainty against correctness")
  ax.legend()
  ax.grid(alpha=0.3)

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  metrics.atomic_write(path, lambda f: f.write(buffer.getvalue()), suffix=".png")


def table(summary: Dict[str, Dict]) -> str:
  lines = ["domain  decomposition   total  aleatoric  epistemic   sample acc  penalty/sample"]
  for d in ("id", "ood"):
    s = summary[d]
    for kind in ("ensemble", "paraphrase"):
      parts = s[kind]
      tail = (f"{s['sample_accuracy']:12.3f} {s['penalty_mean']:15.4f}" if kind == "ensemble"
              else "")
      lines.append(f"{d.upper():6s}  {kind:12s} {parts['total']:8.3f} {parts['aleatoric']:10.3f} "
                   f"{parts['epistemic']:10.3f} {tail}")
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  for key, where in (("auroc_mostly_wrong", "ID and OOD pooled"),
                     ("auroc_mostly_wrong_within_ood", "within OOD")):
    a = summary[key]
    lines.append(f"AUROC for prompts answered mostly wrong ({where}): "
                 + ", ".join(f"{k} {fmt(a[k])}" for k in PARTS))
  return "\n".join(lines)


def run(out: str, *, shift: str = "carries", members: int = 4, steps: int = 600,
        samples: int = 8, num_prompts: int = 256, seed: int = 0, width: int = 32,
        batch_size: int = 128, num_train: int = 20_000, coef: float = 1.0,
        progress: bool = True, verbose: bool = True) -> Dict[str, object]:
  """Trains the ensemble, measures ID and OOD, writes ``out``/uncertainty.{json,png}."""
  os.makedirs(out, exist_ok=True)
  domains = aol.SHIFTS[shift]
  times = {}
  start = time.perf_counter()
  data = aol.sft_data(num_train, domains["id"], "train", seed)
  test = {d: prompts(num_prompts, domains[d], seed) for d in ("id", "ood")}
  times["data_s"] = time.perf_counter() - start

  start = time.perf_counter()
  with metrics.progress(members * steps, desc="sft", enabled=progress) as bar:
    policies = [aol.pretrain(data, width, steps, seed * 1000 + k, batch_size, bar)
                for k in range(members)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *policies)
  times["train_s"] = time.perf_counter() - start

  start = time.perf_counter()
  measure = measure_fn(aol.model_config(width, heads=("lm",)), members, samples, coef)
  rng = jax.random.key(seed)
  outs = {}
  for i, d in enumerate(("id", "ood")):
    t = test[d]
    result = measure(stacked, t["prompt"], t["swapped"], t["target"], jax.random.fold_in(rng, i))
    outs[d] = jax.tree.map(np.asarray, result)
  times["measure_s"] = time.perf_counter() - start

  summary = {d: summarise(outs[d]) for d in outs}
  # As a metric: does a prompt's uncertainty flag that its answers are mostly wrong? Pooled,
  # this mostly tells OOD from ID; within OOD it must rank the OOD prompts themselves.
  wrong = {d: outs[d]["correct"].mean(axis=(1, 2)) < 0.5 for d in outs}
  summary["auroc_mostly_wrong"] = {
      k: auroc(np.concatenate([outs[d]["ensemble"][k] for d in outs]),
               np.concatenate([wrong[d] for d in outs])) for k in PARTS}
  summary["auroc_mostly_wrong_within_ood"] = {
      k: auroc(outs["ood"]["ensemble"][k], wrong["ood"]) for k in PARTS}
  record = {
      "task": {"shift": shift, "carries": domains, "members": members, "steps": steps,
               "samples_per_member": samples, "num_prompts": num_prompts, "seed": seed,
               "penalty_coef": coef, "sampling": dataclasses.asdict(SAMPLING),
               "model": dataclasses.asdict(aol.model_config(width, heads=("lm",))),
               "optimizer": dataclasses.asdict(aol.LM_OPTIMIZER)},
      **summary,
      "per_prompt": {d: {"ensemble": outs[d]["ensemble"], "paraphrase": outs[d]["paraphrase"],
                         "sample_accuracy": outs[d]["correct"].mean(axis=(1, 2))}
                     for d in outs},
      "examples": {d: examples(outs[d], test[d]["prompt"], 3) for d in outs},
      "times": times,
  }
  aol.write_json(os.path.join(out, "uncertainty.json"), record)
  plot(os.path.join(out, "uncertainty.png"), outs, summary)
  if verbose:
    print(table(summary))
    print(f"train {times['train_s']:.0f} s, measure {times['measure_s']:.0f} s; wrote "
          f"{out}/uncertainty.json and uncertainty.png")
  return record


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rlalign.studies.uncertainty",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--shift", choices=tuple(aol.SHIFTS), default="carries")
  parser.add_argument("--members", type=int, default=4, help="K, the ensemble's size (>= 2)")
  parser.add_argument("--steps", type=int, default=600, help="SFT steps of each member")
  parser.add_argument("--samples", type=int, default=8, help="G, answers per member and prompt")
  parser.add_argument("--prompts", type=int, default=256, help="test prompts per domain")
  parser.add_argument("--coef", type=float, default=1.0, help="the penalty's coefficient")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.members < 2:
    parser.error("epistemic uncertainty needs at least 2 members")
  run(args.out, shift=args.shift, members=args.members, steps=args.steps, samples=args.samples,
      num_prompts=args.prompts, seed=args.seed, coef=args.coef)


if __name__ == "__main__":
  main()
