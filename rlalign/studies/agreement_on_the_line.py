"""Agreement-on-the-line on a toy shift: OOD accuracy from unlabelled agreement.

  python -m rlalign.studies.agreement_on_the_line --out=/tmp/aline [--shift=subpopulation
      --models=8 --steps=1600 --pretrain_steps=600 --seed=0]

The task is a verifier: given "prompt + candidate" in the reversed-digit format of
``rlalign.data.addition`` ("740+580=231" for 47 + 85 = 132), is the candidate the correct sum?
Half the candidates are correct, half plausible mistakes: one carry dropped (the sloppy
teacher's error, where the problem has a carry) or one digit changed. Operands are uniform
below 1000, zero-padded to 3 digits as in the default task; train and test problems come from
``addition.is_test_pair``'s disjoint pair sets.

The shifts are in the number of carries (``count_carries``, the final carry included; 17%,
36%, 34% and 13.5% of problems carry 0, 1, 2 and 3 times):

- ``subpopulation`` (the default): ID is every problem, OOD the rare hardest part, where all
  three columns carry. Every OOD input is of a kind the models trained on, only rarer and
  harder (a carry chain through each column): the ImageNet-to-ImageNetV2 kind of shift, under
  which Baek et al. (2022) found accuracy and agreement on one probit line.
- ``carries``: ID carries at most once, OOD two or three times. This was the first choice, by
  the same argument (carries and dropped carries do occur ID), and it was wrong: chained
  carries never occur ID, so nothing ties OOD behaviour to ID. Every model fell near chance OOD
  (figures below), which is why ``subpopulation`` became the default: the shift was changed
  once, on that evidence, and not tuned any further.
- Rejected without a run: 2-digit operands ID against 3 OOD puts nonzero digits where the ID
  models only ever saw "0", and carry-free ID against carries OOD asks for a rule never shown
  ID. Both give arbitrary OOD behaviour rather than harder inputs.

The K models differ in init, seed and training length, so that their ID accuracies spread (the
line cannot be fitted from models that all sit at one point). Members alternate between two
inits: a shared backbone under a fresh scalar head (the backbone is a tiny LM trained by SFT
on the ID train problems, ``pretrain``) and random weights. Their training lengths run
geometrically from ``--steps`` down to an eighth of it. Each is a 2-layer, d_model 32 transformer
(``rlalign.models.transformer``) with the scalar head, trained with binary cross-entropy on
its logit at EOS. OOD labels are read by ``ood_truth`` alone, after the prediction, to report
the truth: ``observe`` sees OOD inputs only, and ``predict`` takes only ID accuracies and
agreements. ``make_examples`` returns labels apart from the unlabelled ``Inputs``.

Measured with the defaults (K = 8, 2000 ID and 2000 OOD test inputs, 2 CPU cores shared with
other jobs at load ~8): 2 min wall, of which 116 s training.

  model  init        steps  ID acc OOD acc ALine-S ALine-D   naive
      0  pretrained   1600   82.8   74.8   97.3   86.9   82.8
      1  scratch      1189   67.5   67.4   92.3   94.0   67.5
      2  pretrained    883   71.5   68.5   93.9   92.3   71.5
      3  scratch       656   64.5   66.8   91.0   94.5   64.5
      4  pretrained    488   68.8   67.8   92.8   95.5   68.8
      5  scratch       362   63.5   67.7   90.6   96.2   63.5
      6  pretrained    269   66.0   68.3   91.7   94.4   66.0
      7  scratch       200   62.8   68.2   90.3   82.8   62.8
                             MAE (points)   23.8   23.4    3.3
  probit correlation ID-OOD: accuracy 0.923, agreement 0.543
  agreement line: probit(OOD) = 1.012 probit(ID) + 0.967
  accuracy line (OOD labels): probit(OOD) = 0.337 probit(ID) + 0.323

ALine does not beat the naive baseline here, because the agreements are not on the accuracy
line. OOD, every model says "correct" to about 80% of inputs: it accepts 92-100% of the
correct candidates and 50-66% of the wrong ones, largely the same wrong ones. So OOD
agreement (0.87-0.99) far exceeds what independent errors at their accuracy would give, and
at the models' ID accuracies the agreement line sits 0.9-1.3 probit above the accuracy line.
ALine assumes that models' disagreements shrink OOD as their accuracies do, and a failure all
the models share breaks that. The warning was visible without labels: the agreements
correlate at 0.54 in probit, against 0.92 for the accuracies. The naive baseline does well
because this shift costs these weak models little (OOD - ID from -8 to +5 points).
``--seed=1`` (2.5 min) gives the same verdict with a different failure: MAE 7.4 (ALine-S),
15.6 (ALine-D), 2.7 (naive). OOD agreements cluster at 0.97-1.0 among six of the eight models,
so the fitted line rests on the pairs with the other two and comes out steep (slope 2.86,
against 0.56 for accuracy). ALine-S misses most on the weakest model (35% predicted, 60%
true), and ALine-D swings from 27% to 92% because agreements near 1 make its pair equations
ill-conditioned.

``--shift=carries`` (2 min 51 s): ID 58-77%, OOD 54-65%, with OOD accuracy anti-correlated
with ID (probit r = -0.81; the better-trained models reject more of the correct multi-carry
answers). MAE: ALine-S 7.5, ALine-D 4.7, naive 9.9 points. ALine wins there only because it
shrinks toward 50%, the level every model sits at.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import time
from typing import Dict, List, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlalign import metrics
from rlalign.data import addition
from rlalign.data.tokenizer import ADDITION_ALPHABET, EOS_ID, PAD_ID, CharTokenizer
from rlalign.diagnostics import agreement as agr
from rlalign.models import transformer as tfm
from rlalign.rl.state import OptimizerConfig, make_optimizer

WIDTH = 3  # operand digits, as the default addition task
# Each shift's ID and OOD carry counts (inclusive ranges); see the module docstring.
SHIFTS = {"subpopulation": {"id": (0, 3), "ood": (3, 3)},
          "carries": {"id": (0, 1), "ood": (2, 3)}}
TOKENIZER = CharTokenizer(ADDITION_ALPHABET)
# Prompt "abc+def=", up to 4 answer digits, EOS.
SEQ_LEN = 2 * WIDTH + 2 + WIDTH + 1 + 1


# ---- the toy shift ------------------------------------------------------------------------


def column_carries(a: int, b: int) -> List[bool]:
  """Whether each column of a + b (least significant first, ``WIDTH`` of them) carries."""
  out, carry = [], 0
  for i in range(WIDTH):
    column = (a // 10**i) % 10 + (b // 10**i) % 10 + carry
    carry = column // 10
    out.append(bool(carry))
  return out


def count_carries(a: int, b: int) -> int:
  return sum(column_carries(a, b))


def answer_without_carry(a: int, b: int, column: int) -> str:
  """a + b in reversed digits, by schoolbook addition that loses the carry out of ``column``."""
  digits, carry = [], 0
  for i in range(WIDTH):
    total = (a // 10**i) % 10 + (b // 10**i) % 10 + carry
    digits.append(total % 10)
    carry = 0 if i == column else total // 10
  if carry:
    digits.append(carry)
  while len(digits) > 1 and digits[-1] == 0:
    digits.pop()
  return "".join(map(str, digits))


def candidate(a: int, b: int, correct: bool, rng: np.random.Generator) -> str:
  """The correct answer, or a plausible mistake: half the time one carry dropped (when there
  is one), else one digit changed (``addition.perturbed_answer``)."""
  right = addition.correct_answer(a, b)
  if correct:
    return right
  carried = [i for i, c in enumerate(column_carries(a, b)) if c]
  if carried and rng.random() < 0.5:
    wrong = answer_without_carry(a, b, int(rng.choice(carried)))
    if wrong != right and addition.is_well_formed(wrong):
      return wrong
  return addition.perturbed_answer(a, b)


def sample_pairs(num: int, carries: Tuple[int, int], split: str, rng: np.random.Generator
                 ) -> List[Tuple[int, int]]:
  """``num`` operand pairs, uniform but for a carry count in ``carries`` (inclusive).

  Train and test use ``addition.is_test_pair``'s disjoint pair sets, so evaluation is on
  problems no model trained on; test pairs do not repeat.
  """
  low, high = carries
  want_test = split == "test"
  pairs, seen = [], set()
  while len(pairs) < num:
    a, b = (int(x) for x in rng.integers(0, 10**WIDTH, 2))
    if addition.is_test_pair(a, b) != want_test or not low <= count_carries(a, b) <= high:
      continue
    if want_test:
      if (a, b) in seen:
        continue
      seen.add((a, b))
    pairs.append((a, b))
  return pairs


class Inputs(NamedTuple):
  """Unlabelled classifier inputs: "prompt + candidate" then EOS, right-padded."""
  tokens: np.ndarray  # [N, SEQ_LEN] int32
  mask: np.ndarray    # [N, SEQ_LEN] bool


def make_examples(num: int, carries: Tuple[int, int], split: str, seed: int
                  ) -> Tuple[Inputs, np.ndarray]:
  """``num`` inputs and their labels [N] (1.0: the candidate is correct), half of each.

  The labels come back apart from the inputs so that code handed OOD inputs cannot read
  OOD labels.
  """
  rng = np.random.default_rng([seed, *carries, int(split == "test")])
  tokens = np.full((num, SEQ_LEN), PAD_ID, np.int32)
  labels = np.zeros((num,), np.float32)
  for n, (a, b) in enumerate(sample_pairs(num, carries, split, rng)):
    correct = n % 2 == 0  # exactly balanced; training batches draw rows at random
    text = addition.format_prompt(a, b, WIDTH) + candidate(a, b, correct, rng)
    ids = TOKENIZER.encode(text) + [EOS_ID]
    tokens[n, :len(ids)] = ids
    labels[n] = correct
  return Inputs(tokens, tokens != PAD_ID), labels


# ---- the models ---------------------------------------------------------------------------

PROMPT_LEN = 2 * WIDTH + 2
INITS = ("pretrained", "scratch")


@dataclasses.dataclass(frozen=True)
class Member:
  """One model of the family: its seed (head init and batch order), training steps, and
  init: ``"pretrained"`` fine-tunes the shared LM backbone with a fresh scalar head,
  ``"scratch"`` starts from random weights."""
  seed: int
  steps: int
  init: str


def family(num_models: int, steps: int, seed: int) -> List[Member]:
  """``num_models`` members: inits in turn, training lengths geometric from ``steps`` down
  to ``steps / 8``, so ID accuracies spread from barely-trained scratch models to
  well-trained fine-tunes."""
  members = []
  for i in range(num_models):
    fraction = 0.125 ** (i / max(num_models - 1, 1))
    members.append(Member(seed=seed * 1000 + i, steps=max(1, round(steps * fraction)),
                          init=INITS[i % len(INITS)]))
  return members


def model_config(width: int, heads: Tuple[str, ...] = ("scalar",)) -> tfm.ModelConfig:
  return tfm.ModelConfig(vocab_size=TOKENIZER.vocab_size, d_model=width, n_layers=2, n_heads=4,
                         n_kv_heads=2, head_dim=width // 4, d_ff=4 * width, heads=heads)


# Adam at 3e-3 learns the dense LM targets fast; the one-bit classifier labels do better at
# 1e-3 (probed on ID accuracy only).
LM_OPTIMIZER = OptimizerConfig(learning_rate=3e-3, warmup_steps=100, max_grad_norm=1.0)
OPTIMIZER = OptimizerConfig(learning_rate=1e-3, warmup_steps=50, max_grad_norm=1.0)


def lm_loss(params: tfm.Params, tokens: jax.Array, mask: jax.Array,
            cfg: tfm.ModelConfig) -> jax.Array:
  """Mean negative log-likelihood of the answer tokens (EOS included) after the prompt."""
  logp = tfm.token_logprobs(params, tokens, mask, cfg)
  # logp[:, t] scores tokens[:, t + 1]; answers start at PROMPT_LEN.
  weights = mask[:, 1:] & (jnp.arange(tokens.shape[1] - 1) >= PROMPT_LEN - 1)[None]
  return -jnp.sum(logp * weights) / jnp.maximum(jnp.sum(weights), 1)


def bce_loss(params: tfm.Params, tokens: jax.Array, mask: jax.Array, labels: jax.Array,
             cfg: tfm.ModelConfig) -> jax.Array:
  """Binary cross-entropy of the scalar head's logit at the last token (EOS)."""
  logits = tfm.sequence_scores(params, tokens, mask, cfg)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


@functools.lru_cache(maxsize=None)
def train_step(cfg: tfm.ModelConfig, opt_cfg: OptimizerConfig):
  """The jitted ``step(params, opt_state, batch) -> (params, opt_state, loss)``, one per
  config: ``bce_loss`` when the batch has labels, else ``lm_loss``."""
  optimizer = make_optimizer(opt_cfg)

  def loss_fn(params, batch):
    if "labels" in batch:
      return bce_loss(params, batch["tokens"], batch["mask"], batch["labels"], cfg)
    return lm_loss(params, batch["tokens"], batch["mask"], cfg)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


@functools.lru_cache(maxsize=None)
def _scores(cfg: tfm.ModelConfig):
  return jax.jit(lambda params, tokens, mask: tfm.sequence_scores(params, tokens, mask, cfg))


def fit(params: tfm.Params, cfg: tfm.ModelConfig, opt_cfg: OptimizerConfig, data: Dict,
        steps: int, seed: int, batch_size: int, bar=None, desc: str = "") -> tfm.Params:
  """``steps`` updates on random batches of the rows of ``data`` (arrays with a leading N)."""
  step = train_step(cfg, opt_cfg)
  opt_state = make_optimizer(opt_cfg).init(params)
  rng = np.random.default_rng(seed)
  rows_total = len(next(iter(data.values())))
  for s in range(steps):
    rows = rng.integers(0, rows_total, batch_size)
    params, opt_state, loss = step(params, opt_state, {k: v[rows] for k, v in data.items()})
    if bar is not None:
      bar.update(1)
      if s % 50 == 0 or s == steps - 1:
        bar.set_postfix_str(f"{desc} loss {float(loss):.3f}")
  return params


def sft_data(num: int, carries: Tuple[int, int], split: str, seed: int
             ) -> Dict[str, np.ndarray]:
  """``num`` prompt + correct answer + EOS rows, for ``lm_loss``: the correct half of
  ``make_examples``, the same token layout the classifiers read."""
  inputs, labels = make_examples(2 * num, carries, split, seed)
  keep = labels == 1
  return {"tokens": inputs.tokens[keep], "mask": inputs.mask[keep]}


def pretrain(data: Dict[str, np.ndarray], width: int, steps: int, seed: int,
             batch_size: int, bar=None) -> tfm.Params:
  """An LM (tied embeddings, no extra head) trained by SFT on ``data``."""
  cfg = model_config(width, heads=("lm",))
  params = tfm.init(cfg, jax.random.key(seed))
  return fit(params, cfg, LM_OPTIMIZER, data, steps, seed, batch_size, bar, "sft")


def train(member: Member, backbone: tfm.Params, width: int, inputs: Inputs,
          labels: np.ndarray, batch_size: int, bar=None) -> tfm.Params:
  """Trains one classifier on random batches of ``(inputs, labels)``; returns its params."""
  cfg = model_config(width)
  params = tfm.init(cfg, jax.random.key(member.seed))
  if member.init == "pretrained":  # the backbone's weights, this member's fresh scalar head
    # A copy: the train step donates its params, and the next member needs the backbone.
    params = {**jax.tree.map(jnp.copy, backbone), "scalar_head": params["scalar_head"]}
  data = {"tokens": inputs.tokens, "mask": inputs.mask, "labels": labels}
  return fit(params, cfg, OPTIMIZER, data, member.steps, member.seed, batch_size, bar,
             f"{member.init} {member.steps}")


def classify(params: tfm.Params, width: int, inputs: Inputs) -> np.ndarray:
  """Predicted classes [N] (1: correct) from the sign of the logit."""
  logits = _scores(model_config(width))(params, inputs.tokens, inputs.mask)
  return np.asarray(logits > 0, np.int32)


# ---- prediction, kept apart from the truth ------------------------------------------------


class Observations(NamedTuple):
  """All the prediction may see: ID accuracies (ID labels) and agreements (no labels)."""
  id_acc: np.ndarray         # [K]
  id_agreement: np.ndarray   # [pairs]
  ood_agreement: np.ndarray  # [pairs]
  pairs: List[Tuple[int, int]]


def observe(id_predictions: np.ndarray, id_labels: np.ndarray,
            ood_predictions: np.ndarray) -> Observations:
  """From class predictions [K, N] on ID and OOD inputs and the ID labels only."""
  id_acc = np.mean(id_predictions == id_labels[None].astype(np.int32), axis=1)
  id_agreement, pairs = agr.pairwise_agreement(id_predictions)
  ood_agreement, _ = agr.pairwise_agreement(ood_predictions)
  return Observations(id_acc, id_agreement, ood_agreement, pairs)


def predict(id_acc, id_agreement, ood_agreement, pairs) -> Dict[str, object]:
  """OOD accuracy [K] by ALine-S, ALine-D and the naive "OOD = ID" baseline, and the fitted
  agreement line. Takes no OOD labels: none can leak in."""
  slope, bias = agr.fit_agreement_line(id_agreement, ood_agreement)
  return {"aline_s": agr.aline_s(id_acc, slope, bias),
          "aline_d": agr.aline_d(id_acc, id_agreement, ood_agreement, pairs),
          "naive": np.asarray(id_acc, np.float64),
          "agreement_line": {"slope": slope, "bias": bias}}


def ood_truth(ood_predictions: np.ndarray, ood_labels: np.ndarray) -> Dict[str, np.ndarray]:
  """The truth, for reporting only, and the one reader of OOD labels: each model's OOD
  accuracy [K], and its accuracy on the correct and on the wrong candidates."""
  right = ood_predictions == ood_labels[None].astype(np.int32)
  positive = ood_labels == 1
  return {"acc": right.mean(1), "acc_on_correct": right[:, positive].mean(1),
          "acc_on_wrong": right[:, ~positive].mean(1)}


METHODS = ("aline_s", "aline_d", "naive")


def analyse(id_predictions: np.ndarray, id_labels: np.ndarray, ood_predictions: np.ndarray,
            ood_labels: np.ndarray) -> Dict[str, object]:
  """Predictions, then the truth and each method's error against it."""
  obs = observe(id_predictions, id_labels, ood_predictions)
  predicted = predict(obs.id_acc, obs.id_agreement, obs.ood_agreement, obs.pairs)
  truth_by = ood_truth(ood_predictions, ood_labels)  # after predicting, never fed back
  truth = truth_by["acc"]
  z_id, z_ood = agr.probit(obs.id_acc), agr.probit(truth)
  u, v = agr.probit(obs.id_agreement), agr.probit(obs.ood_agreement)
  slope, bias = np.polyfit(z_id, z_ood, 1)
  return {
      "id_acc": obs.id_acc, "ood_acc": truth,
      "id_agreement": obs.id_agreement, "ood_agreement": obs.ood_agreement,
      "pairs": obs.pairs,
      "predicted": {m: predicted[m] for m in METHODS},
      "mae": {m: float(np.mean(np.abs(predicted[m] - truth))) for m in METHODS},
      "agreement_line": predicted["agreement_line"],
      # Fitted with the OOD labels: the line ALine assumes the agreements share.
      "accuracy_line": {"slope": float(slope), "bias": float(bias)},
      "correlation": {"probit_accuracy": float(np.corrcoef(z_id, z_ood)[0, 1]),
                      "probit_agreement": float(np.corrcoef(u, v)[0, 1])},
      # Why agreement may part from accuracy: how often each model says "correct" (no labels)
      # and, with the labels, its OOD accuracy on correct and on wrong candidates.
      "positive_rate": {"id": id_predictions.mean(1), "ood": ood_predictions.mean(1)},
      "ood_acc_by_label": {"correct": truth_by["acc_on_correct"],
                           "wrong": truth_by["acc_on_wrong"]},
  }


# ---- report -------------------------------------------------------------------------------


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def write_json(path: str, record) -> None:
  payload = json.dumps(_jsonable(record), indent=2, allow_nan=False).encode()
  metrics.atomic_write(path, lambda f: f.write(payload), suffix=".json")


def plot(path: str, result: Dict[str, object]) -> None:
  """Probit-scaled accuracies and agreements with their lines; predicted against true."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from scipy import stats

  fig = Figure(figsize=(11, 4.6), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 2, 1)
  z = lambda p: agr.probit(p)
  ax.scatter(z(result["id_agreement"]), z(result["ood_agreement"]), marker="^", s=18,
             color="tab:orange", alpha=0.7, label="agreement (pairs, no labels)")
  ax.scatter(z(result["id_acc"]), z(result["ood_acc"]), s=36, color="tab:blue",
             label="accuracy (models)")
  everything = np.concatenate([z(result[k]) for k in
                               ("id_agreement", "ood_agreement", "id_acc", "ood_acc")])
  grid = np.linspace(everything.min() - 0.2, everything.max() + 0.2, 2)
  for line, style, label in ((result["agreement_line"], "-", "agreement fit (ALine)"),
                             (result["accuracy_line"], "--", "accuracy fit (OOD labels)")):
    ax.plot(grid, line["slope"] * grid + line["bias"], style, color="k", lw=1,
            label=f"{label}: {line['slope']:.2f}x{line['bias']:+.2f}")
  ax.plot(grid, grid, ":", color="gray", lw=1, label="y = x")
  ticks = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
  ticks = ticks[(stats.norm.ppf(ticks) >= grid[0]) & (stats.norm.ppf(ticks) <= grid[1])]
  for setter in (ax.set_xticks, ax.set_yticks):
    setter(stats.norm.ppf(ticks), [f"{t:g}" for t in ticks])
  ax.set_xlabel("ID (probit scale)")
  ax.set_ylabel("OOD (probit scale)")
  ax.set_title("accuracy and agreement on the line?")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)

  ax = fig.add_subplot(1, 2, 2)
  truth = result["ood_acc"]
  for method, marker in zip(METHODS, ("o", "s", "x")):
    ax.scatter(truth, result["predicted"][method], marker=marker, s=30,
               label=f"{method}: MAE {100 * result['mae'][method]:.1f} pts")
  values = np.concatenate([truth] + [result["predicted"][m] for m in METHODS])
  span = [values.min() - 0.02, values.max() + 0.02]
  ax.plot(span, span, ":", color="gray", lw=1)
  ax.set_xlabel("true OOD accuracy")
  ax.set_ylabel("predicted OOD accuracy")
  ax.set_title("predicted vs true")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  metrics.atomic_write(path, lambda f: f.write(buffer.getvalue()), suffix=".png")


def table(members: Sequence[Member], result: Dict[str, object]) -> str:
  pct = lambda x: f"{100 * x:7.1f}"
  lines = ["model  init        steps  ID acc OOD acc ALine-S ALine-D   naive"]
  p = result["predicted"]
  for k, m in enumerate(members):
    row = [result["id_acc"][k], result["ood_acc"][k]] + [p[name][k] for name in METHODS]
    lines.append(f"{k:5d}  {m.init:10s} {m.steps:6d}" + "".join(pct(x) for x in row))
  lines.append(f"{'MAE (points)':>39}" + "".join(pct(result["mae"][m]) for m in METHODS))
  c = result["correlation"]
  lines.append(f"probit correlation ID-OOD: accuracy {c['probit_accuracy']:.3f}, "
               f"agreement {c['probit_agreement']:.3f}")
  for name in ("agreement_line", "accuracy_line"):
    line = result[name]
    lines.append(f"{name}: probit(OOD) = {line['slope']:.3f} probit(ID) {line['bias']:+.3f}")
  return "\n".join(lines)


# ---- the study ----------------------------------------------------------------------------


def run(out: str, *, shift: str = "subpopulation", num_models: int = 8, steps: int = 1600,
        seed: int = 0, width: int = 32,
        pretrain_steps: int = 600, batch_size: int = 128, num_train: int = 40_000,
        num_eval: int = 2_000, progress: bool = True, verbose: bool = True
        ) -> Dict[str, object]:
  """Trains the family, predicts OOD accuracies, writes ``out``/agreement.{json,png}."""
  os.makedirs(out, exist_ok=True)
  times = {}
  start = time.perf_counter()
  domains = SHIFTS[shift]
  train_inputs, train_labels = make_examples(num_train, domains["id"], "train", seed)
  id_inputs, id_labels = make_examples(num_eval, domains["id"], "test", seed)
  ood_inputs, ood_labels = make_examples(num_eval, domains["ood"], "test", seed)
  # The backbone's SFT rows: the correct candidates, i.e. prompt + answer + EOS.
  correct = train_labels == 1
  sft_rows = {"tokens": train_inputs.tokens[correct], "mask": train_inputs.mask[correct]}
  times["data_s"] = time.perf_counter() - start

  members = family(num_models, steps, seed)
  start = time.perf_counter()
  params = []
  total = pretrain_steps + sum(m.steps for m in members)
  with metrics.progress(total, desc="train", enabled=progress) as bar:
    backbone = pretrain(sft_rows, width, pretrain_steps, seed, batch_size, bar)
    for member in members:
      params.append(train(member, backbone, width, train_inputs, train_labels, batch_size,
                          bar))
  times["train_s"] = time.perf_counter() - start

  start = time.perf_counter()
  id_predictions = np.stack([classify(p, width, id_inputs) for p in params])
  ood_predictions = np.stack([classify(p, width, ood_inputs) for p in params])
  result = analyse(id_predictions, id_labels, ood_predictions, ood_labels)
  times["evaluate_s"] = time.perf_counter() - start

  record = {
      "task": {"shift": shift, "carries": domains, "operand_digits": WIDTH,
               "num_train": num_train,
               "num_eval": num_eval, "batch_size": batch_size, "seed": seed,
               "model": dataclasses.asdict(model_config(width)),
               "pretrain_steps": pretrain_steps,
               "lm_optimizer": dataclasses.asdict(LM_OPTIMIZER),
               "optimizer": dataclasses.asdict(OPTIMIZER)},
      "members": [dataclasses.asdict(m) for m in members],
      **result,
      "times": times,
  }
  write_json(os.path.join(out, "agreement.json"), record)
  plot(os.path.join(out, "agreement.png"), result)
  if verbose:
    print(table(members, result))
    print(f"train {times['train_s']:.0f} s; wrote {out}/agreement.json and agreement.png")
  return record


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rlalign.studies.agreement_on_the_line",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--shift", choices=tuple(SHIFTS), default="subpopulation",
                      help="which ID/OOD carry counts (module docstring)")
  parser.add_argument("--models", type=int, default=8, help="K, the family's size (>= 3)")
  parser.add_argument("--steps", type=int, default=1600,
                      help="training steps of the longest-trained member")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--pretrain_steps", type=int, default=600,
                      help="SFT steps of the shared LM backbone")
  parser.add_argument("--width", type=int, default=32, help="d_model of every model")
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args(argv)
  if args.models < 3:
    parser.error("ALine-D needs at least 3 models")
  run(args.out, shift=args.shift, num_models=args.models, steps=args.steps, seed=args.seed,
      width=args.width, pretrain_steps=args.pretrain_steps, batch_size=args.batch_size)


if __name__ == "__main__":
  main()
