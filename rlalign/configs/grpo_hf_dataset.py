"""GRPO on a local copy of a Hugging Face dataset: grpo_jsonl.py with data.task="hf".

The argument is the dataset (a save_to_disk directory, or parquet / arrow / JSONL files; never a
hub name), optionally followed by FIELD=COLUMN pairs for columns not named like rlalign's fields:

  python -m rlalign.main --config=configs/grpo_hf_dataset.py:/data/my_ds,prompt=question \
      --workdir=/tmp/rlalign_hf_dataset \
      --config.data.hf_train_split='train[:90%]' --config.data.hf_test_split='train[90%:]'

A dataset on the hub is copied once on a machine with network:
``datasets.load_dataset("OWNER/NAME").save_to_disk("/data/my_ds")``. ``answer`` feeds the
exact-match verifier and ``demonstration`` the supervised warm start; a "messages" column
(chat data) also needs ``--config.data.tokenizer_dir`` (a tokenizer with a chat template) and
a ``--config.model.vocab_size`` that holds it. Without one, text is tokenized per character over
printable ASCII and the model starts from scratch.

Expected: on the same rows this is grpo_jsonl.py's run step for step (the pipeline reads both to
the same batches in the same order; tests/data/test_hf_datasets.py checks the batches, and its
slow test the trained params).
"""
import ml_collections

from rlalign import presets


def get_config(arg: str = ""):
  path, *pairs = arg.split(",") if arg else [""]
  if not path:
    raise ValueError("grpo_hf_dataset.py needs the dataset: --config=configs/grpo_hf_dataset.py:"
                     "/path/to/dataset[,FIELD=COLUMN...]")
  columns = {}
  for pair in pairs:
    field, sep, column = pair.partition("=")
    if not sep or not field:
      raise ValueError(f"grpo_hf_dataset.py: {pair!r} is not FIELD=COLUMN (e.g. "
                       "prompt=question; COLUMN '' leaves a same-named column unread)")
    columns[field] = column
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(presets.ADDITION_MODEL, vocab_size=128)
  c.data = dict(task="hf", data_dir="", hf_path=path, hf_train_split="train",
                hf_test_split="test", columns=columns, max_prompt_len=24, max_answer_len=8,
                tokenizer_dir="", system_prompt="")
  c.sampling = dict(presets.ADDITION_SAMPLING, max_new_tokens=8)
  c.roles = presets.policy_and_reference(
      optimizer=dict(learning_rate=5e-4, warmup_steps=10, max_grad_norm=1.0))
  c.phases = dict(warm_start=presets.sft_phase(**presets.ADDITION_WARM_START),
                  rl=presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2))
  c.recipe = dict(name="sequence", order=("warm_start", "rl"))
  c.mesh = presets.mesh()
  c.sampler_layout = presets.sampler_layout(c.mesh)
  c.train = dict(presets.LOOP)
  return ml_collections.ConfigDict(c.to_dict())
