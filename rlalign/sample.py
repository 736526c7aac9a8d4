"""``python -m rlalign.sample``: completions from any role of a run, or a Hugging Face directory.

  python -m rlalign.sample --run=/tmp/rlalign_addition --prompt="740+580="  # 47+85: "231"
  python -m rlalign.sample --run=/tmp/rlalign_cotrain --role=generator --samples=4 \\
      --temperature=1.0 --prompts_file=prompts.txt
  echo "What is 2+2?" | python -m rlalign.sample --hf_dir=/ckpt --format=chat
  python -m rlalign.sample --hf_dir=/ckpt --chat --system="Be brief."

Weights: the role's in the run's newest phase checkpoint that holds it (or ``--phase``,
``--step``), LoRA merged, as ``python -m rlalign.export`` reads them; or ``--hf_dir``, whose
config.json gives the architecture and whose tokenizer files the tokenizer (else the run's).

Prompts: each ``--prompt``; else the lines of ``--prompts_file`` (``-`` for stdin; a ``.jsonl``
file's records give ``"prompt"`` text or a ``"messages"`` conversation); else stdin, one
prompt per line. ``--format=raw`` conditions on the text as the run's raw prompts are (BOS,
then the text); ``chat`` renders one user turn (after ``--system``) with the tokenizer's chat
template. The default is the run's ``data.prompt_format``, or raw. ``--chat`` is a
conversation on the terminal: each line you type is a user turn, the whole history is
rendered with the chat template, and the reply streams back; ``/reset`` starts over and an
empty line or end of input ends it.

Sampling: the run's ``sampling`` settings unless a flag overrides them (``--temperature``, 0
is greedy; ``--top_k``, ``--top_p``, ``--max_new_tokens``), stopping at the tokenizer's EOS and
any stop tokens of the run or of ``generation_config.json``. It is the training sampler, one
compiled program per prompt-length bucket; with one sample per prompt the tokens stream to the
terminal as that program produces them (``--no_stream`` prints each completion whole).
Prompt ``i`` (or chat turn ``i``) draws from ``fold_in(key(--seed), i)``. ``--jsonl`` writes
one ``{"prompt", "completions"}`` object per prompt instead, for scripts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import workdir
from rlalign.data import tokenizer as tok_lib
from rlalign.models import transformer as tfm
from rlalign.rl.experiment import ExperimentConfig
from rlalign.sampling import sampler

MIN_BUCKET = 16  # shortest prompt length compiled for; longer prompts use powers of two
HF_DEFAULT_MAX_NEW_TOKENS = 256  # with --hf_dir alone there are no run settings


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """Where the model comes from and how to sample (the command's flags)."""
  run: str = ""
  config: str = ""
  hf_dir: str = ""
  role: str = "policy"
  phase: Optional[str] = None
  step: Optional[int] = None
  format: str = ""               # "raw" | "chat"; "": the run's data.prompt_format, or raw
  system: str = ""
  temperature: Optional[float] = None
  top_k: Optional[int] = None
  top_p: Optional[float] = None
  max_new_tokens: Optional[int] = None
  samples: int = 1
  seed: int = 0

  def validate(self) -> None:
    if not (self.run or self.config or self.hf_dir):
      raise workdir.RunInputError("give --run=WORKDIR, --hf_dir=DIR, or --config=FILE with "
                                  "--hf_dir")
    if self.config and not self.hf_dir and not self.run:
      raise workdir.RunInputError("--config gives no weights: add --hf_dir=DIR or --run")
    if self.format not in ("", "raw", "chat"):
      raise workdir.RunInputError(f"--format must be 'raw' or 'chat', got {self.format!r}")
    if self.samples < 1:
      raise workdir.RunInputError(f"--samples must be >= 1, got {self.samples}")
    if self.step is not None and self.step < 0:
      raise workdir.RunInputError(f"--step must be >= 0, got {self.step}")


def _generation_stops(directory: str) -> tuple:
  """The eos_token_id(s) of a HF checkpoint's generation_config.json (end-of-turn tokens)."""
  path = os.path.join(directory, "generation_config.json")
  if not os.path.isfile(path):
    return ()
  try:
    with open(path) as f:
      ids = json.load(f).get("eos_token_id", ())
  except (OSError, ValueError) as e:
    raise workdir.RunInputError(f"{path}: unreadable ({e})") from None
  ids = ids if isinstance(ids, list) else [ids]
  return tuple(int(i) for i in ids if isinstance(i, int))


class Sampler:
  """A loaded model, its tokenizer and sampling settings; ``complete`` runs one prompt."""

  def __init__(self, settings: SampleSettings):
    settings.validate()
    self.settings = settings
    cfg: Optional[ExperimentConfig] = None
    self.source: Dict[str, Any] = {}
    if settings.run or settings.config:
      cfg, where = workdir.load_experiment(run=settings.run, config=settings.config,
                                           data_dir_base=settings.run or ".")
      self.source["config"] = where
    if settings.hf_dir:
      self.model, self.params = workdir.hf_params(cfg, settings.role, settings.hf_dir,
                                                  one_device=True)
      self.source["hf_dir"] = settings.hf_dir
    else:
      workdir.check_role(cfg, settings.role, where)
      self.model = cfg.role_model(settings.role)
      if "lm" not in self.model.heads:
        raise workdir.RunInputError(
            f"--role: role {settings.role!r} has no LM head (model.heads="
            f"{self.model.heads}); only a role that generates can be sampled")
      plan = workdir.plan_for(cfg, settings.role, one_device=True)
      checkpoint, self.params = workdir.role_params(settings.run, cfg, settings.role, plan,
                                                    settings.phase, settings.step)
      self.source.update(phase=checkpoint.phase, step=checkpoint.step,
                         checkpoint=checkpoint.step_dir)
    self.tokenizer = self._tokenizer(cfg)
    if self.model.vocab_size < self.tokenizer.vocab_size:
      raise workdir.RunInputError(
          f"the model's vocab_size ({self.model.vocab_size}) is smaller than its tokenizer's "
          f"vocabulary ({self.tokenizer.vocab_size})")
    self.format = settings.format or (cfg.data.prompt_format if cfg else "raw")
    self.system = settings.system or (cfg.data.system_prompt if cfg else "")
    if self.format == "chat":
      self._check_chat()
    self.sampling = self._sampling(cfg)
    self._programs: Dict[tuple, Callable] = {}
    self._on_token: Optional[Callable[[np.ndarray, np.ndarray], None]] = None
    self._calls = 0

  def _tokenizer(self, cfg: Optional[ExperimentConfig]):
    hf_dir = self.settings.hf_dir
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
      from rlalign.data.hf_tokenizer import HFTokenizer
      return HFTokenizer.from_dir(hf_dir)
    if cfg is None:
      raise workdir.RunInputError(f"--hf_dir: {hf_dir} has no tokenizer.json; add --run or "
                                  "--config for the run's tokenizer")
    return tok_lib.tokenizer_for(cfg.data)

  def _check_chat(self) -> None:
    try:
      self.tokenizer.chat_template()
    except AttributeError:
      raise workdir.RunInputError("--format=chat / --chat needs a tokenizer with a chat "
                                  "template; this run's is the character tokenizer") from None

  def _sampling(self, cfg: Optional[ExperimentConfig]) -> sampler.SamplingConfig:
    s = self.settings
    base = cfg.sampling if cfg else sampler.SamplingConfig(
        max_new_tokens=HF_DEFAULT_MAX_NEW_TOKENS)
    stops = tuple(base.stop_tokens) + (self.tokenizer.eos_id,)
    if s.hf_dir:
      stops += _generation_stops(s.hf_dir)
    pick = lambda flag, value: value if flag is None else flag
    sampling = sampler.SamplingConfig(
        max_new_tokens=pick(s.max_new_tokens, base.max_new_tokens),
        temperature=pick(s.temperature, base.temperature), top_k=pick(s.top_k, base.top_k),
        top_p=pick(s.top_p, base.top_p), stop_tokens=tuple(dict.fromkeys(stops)))
    try:
      sampling.validate("--")
    except ValueError as e:
      raise workdir.RunInputError(str(e).replace("--.", "--")) from None
    if sampling.top_k > self.model.vocab_size:
      raise workdir.RunInputError(f"--top_k ({sampling.top_k}) is more than the vocabulary "
                                  f"({self.model.vocab_size})")
    return sampling

  # ---- prompts -----------------------------------------------------------------------------

  def prompt_ids(self, prompt: Any) -> List[int]:
    """Text (raw or one chat turn, as ``format``) or a conversation (a list of messages)."""
    if isinstance(prompt, str) and self.format == "raw":
      bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
      return bos + self.tokenizer.encode(prompt)
    if isinstance(prompt, str):
      prompt = [{"role": "user", "content": prompt}]
    if self.system and not any(m.get("role") == "system" for m in prompt):
      prompt = [{"role": "system", "content": self.system}, *prompt]
    self._check_chat()
    return self.tokenizer.encode_chat(prompt, add_generation_prompt=True)

  # ---- sampling ----------------------------------------------------------------------------

  def _program(self, width: int, streamed: bool) -> Callable:
    """One compiled sampler per prompt bucket; a streamed one calls back to the host each
    token (which costs a sync per step), so whole completions use their own."""
    if (width, streamed) not in self._programs:
      model, sampling, pad = self.model, self.sampling, self.tokenizer.pad_id
      on_token = self._emit if streamed else None

      def run(params, tokens, mask, rng):
        return sampler.sample(params, tokens, mask, rng, model, sampling, pad,
                              on_token=on_token)
      self._programs[width, streamed] = jax.jit(run)
    return self._programs[width, streamed]

  def _emit(self, tokens: np.ndarray, done: np.ndarray) -> None:
    if self._on_token is not None:
      self._on_token(np.asarray(tokens), np.asarray(done))

  def complete_ids(self, ids: Sequence[int],
                   on_token: Optional[Callable[[np.ndarray, np.ndarray], None]] = None
                   ) -> List[List[int]]:
    """``settings.samples`` completions (token ids, the stop token left out) of one prompt;
    call ``i`` draws from ``fold_in(key(seed), i)``."""
    width = max(MIN_BUCKET, 1 << (len(ids) - 1).bit_length())
    rows = self.settings.samples
    tokens = np.full((rows, width), self.tokenizer.pad_id, np.int32)
    tokens[:, width - len(ids):] = ids
    mask = np.zeros((rows, width), bool)
    mask[:, width - len(ids):] = True
    rng = jax.random.fold_in(jax.random.key(self.settings.seed), self._calls)
    self._calls += 1
    self._on_token = on_token
    try:
      program = self._program(width, streamed=on_token is not None)
      out = jax.device_get(program(self.params, jnp.asarray(tokens), jnp.asarray(mask), rng))
    finally:
      self._on_token = None
    stops = set(self.sampling.stop_tokens)
    completions = []
    for row, keep in zip(out.tokens, out.mask):
      ids_ = [int(t) for t in row[keep]]
      completions.append(ids_[:-1] if ids_ and ids_[-1] in stops else ids_)
    return completions

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode(ids, strict=False)

  def complete(self, prompt: Any, stream: Optional[TextIO] = None) -> List[str]:
    """The completions' text; with ``stream`` (and one sample), written there as it comes."""
    ids = self.prompt_ids(prompt)
    if stream is None or self.settings.samples != 1:
      return [self.decode(c) for c in self.complete_ids(ids)]
    streamer = _Streamer(self, stream)
    completion = self.complete_ids(ids, on_token=streamer)
    text = self.decode(completion[0])
    stream.write(text[len(streamer.written):])  # anything the last callback did not show
    stream.flush()
    return [text]


class _Streamer:
  """Writes row 0's new text after each token: the decoded whole minus what is shown (a
  multi-byte character or merged piece appears once its tokens are all in)."""

  def __init__(self, owner: Sampler, out: TextIO):
    self.owner, self.out = owner, out
    self.ids: List[int] = []
    self.written = ""

  def __call__(self, tokens: np.ndarray, done: np.ndarray) -> None:
    if done[0] or int(tokens[0]) in self.owner.sampling.stop_tokens:
      return
    self.ids.append(int(tokens[0]))
    text = self.owner.decode(self.ids)
    if text.startswith(self.written) and not text.endswith("\ufffd"):
      self.out.write(text[len(self.written):])
      self.out.flush()
      self.written = text


# ---- the command ------------------------------------------------------------------------------


def read_prompts(prompts: Sequence[str], prompts_file: str, stdin: TextIO) -> List[Any]:
  """``--prompt`` values; else the prompts file (``-``: stdin) or stdin, one per line; a
  ``.jsonl`` file's records give "prompt" or "messages"."""
  if prompts:
    return list(prompts)
  if prompts_file and prompts_file != "-":
    if not os.path.isfile(prompts_file):
      raise workdir.RunInputError(f"--prompts_file: no such file {prompts_file}")
    with open(prompts_file, encoding="utf-8") as f:
      lines = f.read().split("\n")
  else:
    lines = stdin.read().split("\n")
  if prompts_file.endswith(".jsonl"):
    return [_jsonl_prompt(prompts_file, i, line) for i, line in enumerate(lines, 1)
            if line.strip()]
  found = [line for line in lines if line.strip()]
  if not found:
    raise workdir.RunInputError(f"no prompts in {prompts_file or 'stdin'}: give --prompt, "
                                "--prompts_file, or one prompt per line on stdin")
  return found


def _jsonl_prompt(path: str, lineno: int, line: str) -> Any:
  where = f"{path}:{lineno}"
  try:
    record = json.loads(line)
  except ValueError as e:
    raise workdir.RunInputError(f"{where}: invalid JSON ({e})") from None
  if isinstance(record, dict) and isinstance(record.get("prompt"), str) and record["prompt"]:
    return record["prompt"]
  messages = record.get("messages") if isinstance(record, dict) else None
  if (isinstance(messages, list) and messages
      and all(isinstance(m, dict) and isinstance(m.get("role"), str)
              and isinstance(m.get("content"), str) for m in messages)):
    return messages
  raise workdir.RunInputError(f"{where}: expected {{\"prompt\": \"...\"}} or {{\"messages\": "
                              "[{\"role\": ..., \"content\": ...}, ...]}")


def chat(s: Sampler, stdin: TextIO, stdout: TextIO, interactive: bool) -> int:
  """The conversation loop; returns the number of replies."""
  s._check_chat()
  history: List[Mapping[str, str]] = []
  replies = 0
  while True:
    if interactive:
      stdout.write("user> ")
      stdout.flush()
    line = stdin.readline()
    if not line or not line.strip():
      return replies
    text = line.rstrip("\n")
    if text.strip() == "/reset":
      history = []
      stdout.write("(history cleared)\n")
      continue
    history.append({"role": "user", "content": text})
    if interactive:
      stdout.write("assistant> ")
    reply = s.complete(history, stream=stdout)[0]
    stdout.write("\n")
    stdout.flush()
    history.append({"role": "assistant", "content": reply})
    replies += 1


def main(argv: Optional[List[str]] = None, stdin: Optional[TextIO] = None,
         stdout: Optional[TextIO] = None) -> int:
  stdin = sys.stdin if stdin is None else stdin
  stdout = sys.stdout if stdout is None else stdout
  parser = argparse.ArgumentParser(prog="python -m rlalign.sample",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", default="", help="a run's workdir")
  parser.add_argument("--config", default="", help="a config file path.py[:arg] (its data, "
                      "tokenizer and sampling) for --hf_dir")
  parser.add_argument("--hf_dir", default="", help="a Hugging Face checkpoint directory")
  parser.add_argument("--role", default="policy")
  parser.add_argument("--phase", default=None, help="default: the newest phase checkpoint "
                      "holding the role")
  parser.add_argument("--step", type=int, default=None, help="default: the phase's latest")
  parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  parser.add_argument("--prompts_file", default="", help="one prompt per line, .jsonl "
                      "records, or - for stdin")
  parser.add_argument("--chat", action="store_true", help="a conversation on the terminal")
  parser.add_argument("--format", default="", help="raw or chat; default: the run's "
                      "data.prompt_format")
  parser.add_argument("--system", default="", help="a system turn before chat prompts")
  parser.add_argument("--temperature", type=float, default=None, help="0: greedy")
  parser.add_argument("--top_k", type=int, default=None)
  parser.add_argument("--top_p", type=float, default=None)
  parser.add_argument("--max_new_tokens", type=int, default=None)
  parser.add_argument("--samples", type=int, default=1, help="completions per prompt")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_stream", action="store_true", help="print completions whole")
  parser.add_argument("--jsonl", action="store_true", help="one JSON object per prompt")
  args = parser.parse_args(argv)
  settings = SampleSettings(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(SampleSettings)})
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every file, and read-only mode
  try:
    settings.validate()  # before stdin is read
    if args.chat:
      if args.prompt or args.prompts_file:
        raise workdir.RunInputError("--chat reads its turns from the terminal; drop --prompt "
                                    "and --prompts_file")
      settings = dataclasses.replace(settings, samples=1, format="chat")
      s = Sampler(settings)
      chat(s, stdin, stdout, interactive=stdin.isatty())
      return 0
    prompts = read_prompts(args.prompt, args.prompts_file, stdin)
    s = Sampler(settings)
    for prompt in prompts:
      if args.jsonl:
        stdout.write(json.dumps({"prompt": prompt, "completions": s.complete(prompt)}) + "\n")
      elif settings.samples == 1 and args.no_stream:
        stdout.write(s.complete(prompt)[0] + "\n")
      elif settings.samples == 1:
        s.complete(prompt, stream=stdout)
        stdout.write("\n")
      else:
        for i, text in enumerate(s.complete(prompt)):
          stdout.write(f"[{i}] {text}\n")
      stdout.flush()
  except (ValueError, FileNotFoundError) as e:
    print("error: " + "; ".join(str(e).splitlines()), file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
