"""Reward over-optimisation, reproduced (Gao et al. 2023): RL against a proxy reward model
trained on a limited number of gold-labelled pairs, with the gold judge watching.

The argument is the pair files and a variant: ``train.jsonl,test.jsonl,VARIANT[,smoke]``.

  python -m rlalign.data.addition --pairs_out=/tmp/oo_pairs --num_train=2000
  for v in proxy ensemble lsc; do
    python -m rlalign.main --config=configs/overoptimisation_addition.py:\
/tmp/oo_pairs/train.jsonl,/tmp/oo_pairs/test.jsonl,$v --workdir=/tmp/oo_$v
  done
  python -m rlalign.eval.proxy_gold --run=proxy=/tmp/oo_proxy --run=ensemble=/tmp/oo_ensemble \
      --run=lsc=/tmp/oo_lsc --out=/tmp/oo_report

The task: reversed-digit addition from 2,000 preference pairs ("chosen" the correct sum,
"rejected" mostly a sloppy teacher's carry mistake). The gold reward is a scoring program the
loop never sees: ``answer_digits``, the fraction of the answer's positions (stop included) the
completion gets right, logged as ``monitor/gold``. Every variant runs the same phases:

  warm_start      sft of the policy on the sloppy teacher's demonstrations
  rm_0 .. rm_2    three Bradley-Terry reward models on the pairs: the warm-started backbone
                  with a fresh scalar head, each phase reading the pairs in its own order
  rl              GRPO for 200 steps; what it trains on is the variant:
    proxy         rm_0's score
    ensemble      mean - 1 * std of rm_0..rm_2 (the disagreement penalty, Coste et al. 2024)
    ensemble_bagged
                  the same, each rm_i trained on its own bootstrap resample of the pairs
                  (bradley_terry bootstrap=True, bootstrap_seed=i)
    lsc           rm_0's score through log sigmoid(r - r_ref(x)), r_ref(x) the 0.85 quantile
                  of rm_0's scores of 4 reference samples of the prompt (Wang et al. 2024)
    proxy_centred, lsc_centred
                  the same two with group-centred advantages (no division by the group's
                  std, which would undo LSC's saturation)

Every variant also logs rm_0's raw score as ``monitor/proxy``, so the three share a y-axis,
and ``kl_sequence`` for the x-axis. The RM phases report held-out pair accuracy as
``eval/rm_<i>/accuracy``.

Measured (2 shared CPU cores, 6-11 minutes a run; RM held-out pair accuracy 0.744, 0.744,
0.742; gold 0.726 at the RL start; peaks from a 5-point moving average):

  variant         peak gold   KL at peak   gold after 200 steps   KL after
  proxy           0.774       2.41         0.302                  26.4
  ensemble        0.770       1.06         0.332                  25.0
  ensemble_bagged 0.761       3.45         0.309                  31.0
  lsc             0.771       2.51         0.298                  26.7
  proxy_centred   0.762       1.13         0.397                  19.0
  lsc_centred     0.765       0.86         0.699                   6.7

Gold rises, peaks and falls while the proxy climbs to its plateau (3.3-3.75). The ensemble's
members barely disagree on the policy's samples after the first steps. Bagged members
(held-out accuracy 0.713, 0.697, 0.674) disagree about 30 times more, and gold falls all the
same. LSC only helps without the std division. The README discusses all three.
"""
import ml_collections

from rlalign import presets

PROXY = {"rm": {"name": "reward_model", "role": "rm_0"}}
ENSEMBLE = {"ensemble": {"name": "reward_ensemble", "roles": ("rm_0", "rm_1", "rm_2"),
                         "aggregate": "mean_minus_std", "std_coef": 1.0}}
LSC = {"rm": {"name": "reward_model", "role": "rm_0",
              "transforms": ({"name": "lsc", "quantile": 0.85, "samples": 4},)}}
# variant: (rewards, advantage estimator)
VARIANTS = {
    "proxy": (PROXY, "group_norm"),
    "ensemble": (ENSEMBLE, "group_norm"),
    # The same penalty over members that each trained on a bootstrap resample of the pairs.
    "ensemble_bagged": (ENSEMBLE, "group_norm"),
    "lsc": (LSC, "group_norm"),
    # LSC works by flattening the reward once a completion beats the reference; dividing by
    # the group's std (GRPO) scales that flat part back up, so these two centre only.
    "proxy_centred": (PROXY, "group_mean"),
    "lsc_centred": (LSC, "group_mean"),
}
RM_OPTIMIZER = dict(learning_rate=3e-4, warmup_steps=10, max_grad_norm=1.0)


def get_config(arg: str = ""):
  parts = arg.split(",")
  smoke = parts[-1] == "smoke"
  if smoke:
    parts = parts[:-1]
  if len(parts) != 3 or parts[2] not in VARIANTS:
    raise ValueError("overoptimisation_addition.py needs train.jsonl,test.jsonl,VARIANT with "
                     f"VARIANT one of {sorted(VARIANTS)} (then ',smoke' for a test run), got "
                     f"{arg!r}")
  train, test, variant = parts
  c = ml_collections.ConfigDict()
  presets.addition_pairs_task(c, f"{train},{test}", "overoptimisation_addition.py")
  c.train.update(log_every=2, eval_every=50)
  rms = {f"rm_{i}": dict(heads=("scalar",), weights=dict(source="role", role="policy"),
                         trainable=True, optimizer=dict(RM_OPTIMIZER)) for i in range(3)}
  c.roles = dict(**presets.policy_and_reference(optimizer=dict(presets.ADDITION_RL_OPTIMIZER)),
                 **rms)
  bagged = dict(bootstrap=True) if variant == "ensemble_bagged" else {}
  rm_phases = {name: dict(steps=300, batch_size=64, slots=dict(model=name),
                          objective=dict(name="bradley_terry", **bagged,
                                         **(dict(bootstrap_seed=i) if bagged else {})))
               for i, name in enumerate(rms)}
  rewards, advantage = VARIANTS[variant]
  rl = presets.grpo_phase(steps=200, batch_size=256, group_size=8, minibatches=2,
                          rewards=rewards)
  rl["advantage"] = advantage
  rl["monitors"] = {"proxy": {"name": "reward_model", "role": "rm_0"},
                    "gold": {"name": "answer_digits"}, "exact_match": 1.0}
  c.phases = dict(warm_start=presets.sft_phase(steps=800, batch_size=64,
                                               optimizer=dict(learning_rate=3e-3,
                                                              warmup_steps=100)),
                  **rm_phases, rl=rl)
  c.recipe = dict(name="sequence", order=("warm_start", *rm_phases, "rl"))
  c = ml_collections.ConfigDict(c.to_dict())
  if smoke:
    presets.shrink_for_smoke(c)
    for name in c.phases:
      c.phases[name].update(steps=2, batch_size=16)
    c.phases.rl.update(batch_size=16, group_size=4, minibatches=1)
  return c
