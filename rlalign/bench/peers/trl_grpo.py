"""The TRL baseline: times one GRPO iteration of Hugging Face TRL's ``GRPOTrainer``.

Runs one workload of :mod:`rlalign.bench.settings` (the checkpoint and prompts that
:mod:`rlalign.bench.fixtures` wrote under ``--root``) for ``1 + steps`` trainer steps, each
one iteration: generate ``rollouts`` completions of exactly ``new_tokens`` tokens, score them
with the shared reward, score the reference model, then one loss/backward/optimizer update.
It writes one JSON result::

  python rlalign/bench/peers/trl_grpo.py --root=/tmp/rlalign_bench --setting=medium \\
      --out=/tmp/trl_medium.json [--launch_time=<epoch seconds>] [--steps=N]

Only ``rlalign.bench.settings`` (pure python) is imported from rlalign, so this runs in an
environment that has TRL and torch but not JAX.
"""
import time

_T0 = time.time()  # startup is measured from here, unless --launch_time is given

import json
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
from rlalign.bench import settings as S  # noqa: E402
from rlalign.bench.peers import common  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402

# rlalign's side of the benchmark updates with optax.adam(learning_rate): b1 0.9, b2 0.999,
# eps 1e-8, no weight decay and no gradient clipping. The same here, in torch's AdamW.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 0.0  # transformers clips only when > 0; None is rejected (compared with 0)


def even_token_reward(completion_ids, **_):
  """The benchmark reward, on the completion token ids TRL passes to reward functions."""
  return [S.even_token_fraction(ids) for ids in completion_ids]


def grpo_config_kwargs(setting: S.GRPOSetting, steps: int, output_dir: str) -> dict:
  """Every GRPOConfig value set here; each one that differs from TRL's default says why."""
  n = setting.new_tokens
  return dict(
      output_dir=output_dir,
      seed=0,
      # Float32 end to end, as the fixtures are; TRL defaults to bf16 and gradient checkpointing.
      bf16=False,
      fp16=False,
      gradient_checkpointing=False,
      model_init_kwargs={"dtype": "float32"},
      # The KL term is part of the workload: TRL's default beta=0 would skip the reference model.
      beta=setting.kl_coef,
      # Per-sequence token mean, then mean over sequences (settings.aggregation == "sequence");
      # TRL's default "dapo" normalises by the batch's token count instead.
      loss_type="grpo",
      epsilon=setting.clip_eps,
      learning_rate=setting.learning_rate,
      lr_scheduler_type="constant",  # TRL/transformers default: linear decay
      warmup_steps=0,
      weight_decay=WEIGHT_DECAY,
      adam_beta1=ADAM_BETAS[0],
      adam_beta2=ADAM_BETAS[1],
      adam_epsilon=ADAM_EPS,
      max_grad_norm=MAX_GRAD_NORM,  # transformers default: clip at 1.0
      # One trainer step = one fresh generation batch of prompts_per_step x group_size
      # completions and one optimizer update on all of them (no micro-batching, no reuse).
      num_generations=setting.group_size,
      per_device_train_batch_size=setting.rollouts,
      gradient_accumulation_steps=1,
      steps_per_generation=1,
      num_iterations=1,
      max_steps=1 + steps,
      # Prompts in file order, as every framework consumes them.
      shuffle_dataset=False,
      # Sampling from the full distribution, never stopping early: min_new_tokens masks EOS
      # until new_tokens tokens are out, so every completion is exactly new_tokens long. (TRL 1.16
      # has no max_prompt_length: prompts go in whole.)
      max_completion_length=n,
      temperature=setting.temperature,
      top_p=1.0,
      top_k=0,
      min_p=None,
      repetition_penalty=1.0,
      generation_kwargs={"min_new_tokens": n},
      use_vllm=False,
      # No side work: no logging backends, checkpoints, eval or dataloader workers.
      report_to="none",
      save_strategy="no",
      eval_strategy="no",
      logging_steps=1,
      log_completions=False,
      disable_tqdm=True,
      dataloader_num_workers=0,
  )


class StepTimer(transformers.TrainerCallback):
  """perf_counter stamps around each trainer step, the wall time the first one ends, and logs."""

  def __init__(self):
    self.begins, self.ends, self.logs = [], [], []
    self.first_end_wall = None

  def on_step_begin(self, args, state, control, **kwargs):
    self.begins.append(time.perf_counter())

  def on_step_end(self, args, state, control, **kwargs):
    self.ends.append(time.perf_counter())
    if self.first_end_wall is None:
      self.first_end_wall = time.time()

  def on_log(self, args, state, control, logs=None, **kwargs):
    if logs and "completions/mean_length" in logs:  # per-step train logs, not the final summary
      self.logs.append(dict(logs))


def check_prompt_tokenisation(tokenizer, texts, ids) -> None:
  """TRL tokenises the prompt text itself; it must give the file's ids (no BOS, no specials)."""
  got = tokenizer(text=texts)["input_ids"]
  if got != ids:
    raise RuntimeError("the tokenizer does not reproduce the prompt ids of the fixture file")


def main() -> None:
  p = common.parser(__doc__.splitlines()[0])
  a = p.parse_args()
  setting, steps, start = common.resolve(p, a, _T0)
  model_dir = os.path.join(a.root, "models", setting.model)
  with open(os.path.join(a.root, "prompts", f"{setting.name}.json")) as f:
    prompts = json.load(f)
  if any(len(row) != setting.prompt_len for row in prompts["ids"]):
    raise RuntimeError(f"prompts of {setting.name} are not all {setting.prompt_len} tokens")

  timer = StepTimer()
  with tempfile.TemporaryDirectory(prefix="trl_grpo_") as output_dir:
    kwargs = grpo_config_kwargs(setting, steps, output_dir)
    config = trl.GRPOConfig(**kwargs)
    trainer = trl.GRPOTrainer(
        model=model_dir,  # the reference model is loaded from the same path
        reward_funcs=[even_token_reward],
        args=config,
        train_dataset=datasets.Dataset.from_dict({"prompt": prompts["text"]}),
        callbacks=[timer],
    )
    check_prompt_tokenisation(trainer.processing_class, prompts["text"], prompts["ids"])
    trainer.train()

  durations = [e - b for b, e in zip(timer.begins, timer.ends)]
  if len(durations) != 1 + steps or len(timer.logs) != 1 + steps:
    raise RuntimeError(f"expected {1 + steps} steps and logs, got {len(durations)} and "
                       f"{len(timer.logs)}")

  def logged(key):
    return [log.get(key) for log in timer.logs]

  lengths = logged("completions/mean_length")
  length_range = (min(logged("completions/min_length")), max(logged("completions/max_length")))
  if length_range != (setting.new_tokens, setting.new_tokens):
    raise RuntimeError(f"completion lengths {length_range}, expected exactly {setting.new_tokens}")
  for key in ("loss", "kl"):
    if not all(v is not None and math.isfinite(v) for v in logged(key)):
      raise RuntimeError(f"non-finite {key} in the logs: {logged(key)}")

  resolved = {k: getattr(config, k) for k in ("generation_batch_size", "steps_per_generation",
                                               "optim", "use_cpu")}
  result = {
      "framework": "trl",
      "version": trl.__version__,
      "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                   "torch": torch.__version__},
      "device": str(trainer.accelerator.device),
      "torch_threads": torch.get_num_threads(),
      "cpu_count": os.cpu_count(),
      **common.timing_fields(setting, steps, start, timer.first_end_wall, durations, lengths, length_range,
                             launched=a.launch_time is not None),
      "metrics": {k: logged(k) for k in ("loss", "kl", "reward", "entropy", "grad_norm")},
      "config": {**{k: v for k, v in kwargs.items() if k != "output_dir"}, **resolved},
      "notes": [
          "step_s spans Trainer's on_step_begin to on_step_end: generation, reward, reference "
          "and policy log-probs, loss, backward and the AdamW update. Fetching the step's "
          "prompts and TRL's per-step metric logging fall outside it.",
          "Generation is transformers' model.generate (no vLLM, dynamic KV cache, sdpa "
          "attention); min_new_tokens=new_tokens masks EOS, so sampling never stops early.",
          "With one generation per update TRL runs no separate old-policy log-prob pass: the "
          "ratio is taken against the detached current log-probs.",
          "Gradient clipping is off, but transformers still computes the global gradient "
          "norm each step for its logs; TRL also computes token entropies in the loss pass.",
      ],
  }
  common.write_json(a.out, result)
  print(f"trl {trl.__version__} {setting.name}: startup {result['startup_s']:.2f}s, first step "
        f"{result['first_step_s']:.3f}s, median step {result['median_step_s']:.3f}s over "
        f"{steps} steps, completion length {result['completion_length_mean']:g} -> {a.out}")


if __name__ == "__main__":
  main()
