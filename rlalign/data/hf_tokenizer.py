"""Hugging Face tokenizers behind the same protocol as `CharTokenizer`.

`HFTokenizer.from_dir(path)` reads a checkpoint's tokenizer directory:

  tokenizer.json          required; the `tokenizers` serialisation (vocabulary, merges,
                          normalizer, pre-tokenizer, post-processor, added tokens).
  tokenizer_config.json   optional; named special tokens (strings or AddedToken-style
                          dicts with a "content"), `add_bos_token`, `chat_template` (a
                          string, or a list of {"name", "template"}).
  chat_template.jinja,    optional; when present they replace the config's templates,
  additional_chat_templates/NAME.jinja    as in transformers.

Protocol semantics, and where they differ from a CharTokenizer:

  encode(text)   no special tokens are added unless `add_special_tokens=True`, which runs
                 tokenizer.json's post-processor (as transformers does). Special-token
                 strings inside `text` (e.g. "<|im_start|>") always map to their ids, which
                 is what makes templated chat text tokenize correctly.
  decode(ids)    stops at the first EOS and drops special tokens (PAD, BOS, chat markers).
  pad_id         the pad token, or the EOS id when the config names none (Llama 3 and many
                 others ship without one). Then PAD == EOS: decoding a left-padded prompt
                 stops at once, so strip padding by its mask before decoding prompts.
  bos_id         the id to put in front of a raw (untemplated) prompt, or None for "prepend
                 nothing": None when the config has no BOS token (Qwen) or says not to add it.
                 `add_bos_token` decides when the config sets it; otherwise the
                 post-processor does. Chat templates that want a BOS write it themselves
                 (Llama 3, Gemma), so templated prompts must never get another one.
  vocab_size     one past the largest id, added tokens included. A checkpoint's embedding
                 is often larger (padded); that is fine, the reverse is not.

Padding and truncation stored in tokenizer.json are switched off: batches are padded by the
data pipeline, and silent truncation would corrupt prompts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import jinja2
import tokenizers

from rlalign.data import chat_template as chat_lib

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
# The named special tokens transformers passes to chat templates.
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token")


def _read_text(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _parse_json(path: str, text: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})"
                     ) from None


def _token_content(value: Any, key: str, where: str) -> str:
  """A special token given as a string or as an AddedToken-style dict."""
  if isinstance(value, dict):
    value = value.get("content")
  if not isinstance(value, str) or not value:
    raise ValueError(f"{where}: {key} must be a token string or a dict with a \"content\" "
                     f"string, got {value!r}")
  return value


def _config_templates(raw: Any, where: str) -> dict[str, str]:
  if raw is None:
    return {}
  if isinstance(raw, str):
    return {"default": raw}
  if isinstance(raw, list) and all(
      isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
      for t in raw):
    return {t["name"]: t["template"] for t in raw}
  raise ValueError(f"{where}: chat_template must be a string or a list of "
                   "{\"name\", \"template\"} objects")


def _file_templates(directory: str) -> dict[str, str]:
  templates = {}
  path = os.path.join(directory, TEMPLATE_FILE)
  if os.path.isfile(path):
    templates["default"] = _read_text(path)
  extra_dir = os.path.join(directory, TEMPLATE_DIR)
  if os.path.isdir(extra_dir):
    for name in sorted(os.listdir(extra_dir)):
      if name.endswith(".jinja"):
        templates[name[:-len(".jinja")]] = _read_text(os.path.join(extra_dir, name))
  return templates


@dataclasses.dataclass(frozen=True, eq=False)
class HFTokenizer:
  """A loaded tokenizer directory; build it with :meth:`from_dir` (see module docstring).

  Treat the mappings as read-only. Plain dicts (not mapping proxies) keep the object
  copyable, so it can be shipped to data-loader worker processes.
  """

  directory: str
  backend: tokenizers.Tokenizer = dataclasses.field(repr=False)
  special_tokens: Mapping[str, str]  # named special tokens set in the config -> string
  chat_templates: Mapping[str, str] = dataclasses.field(repr=False)  # name -> Jinja source
  eos_id: int
  pad_id: int
  bos_id: Optional[int]
  vocab_size: int
  _skip_ids: frozenset = dataclasses.field(repr=False)

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> HFTokenizer:
    directory = os.fspath(path)
    tok_path = os.path.join(directory, TOKENIZER_FILE)
    try:
      tok_text = _read_text(tok_path)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"{tok_path}: not found; HFTokenizer needs the `tokenizers` file tokenizer.json "
          "(a bare sentencepiece tokenizer.model is not supported)") from None
    _parse_json(tok_path, tok_text)
    try:
      backend = tokenizers.Tokenizer.from_str(tok_text)
    except Exception as e:  # the Rust side raises a bare Exception
      raise ValueError(f"{tok_path}: not a valid tokenizers file ({e})") from None
    backend.no_padding()
    backend.no_truncation()

    cfg_path = os.path.join(directory, CONFIG_FILE)
    has_config = os.path.isfile(cfg_path)
    config = _parse_json(cfg_path, _read_text(cfg_path)) if has_config else {}
    if not isinstance(config, dict):
      raise ValueError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")

    special = {k: _token_content(config[k], k, cfg_path) for k in NAMED_TOKENS
               if config.get(k) is not None}
    ids = {}
    for key, token in special.items():
      ids[key] = backend.token_to_id(token)
      if ids[key] is None:
        # transformers would append it as a new token, an id no checkpoint has an embedding for.
        raise ValueError(f"{cfg_path}: {key} {token!r} is not in the vocabulary of {tok_path}")
    if "eos_token" not in special:
      raise ValueError(f"{cfg_path}: no eos_token is configured" if has_config else
                       f"{tok_path}: no eos_token is configured ({CONFIG_FILE} not found)")

    add_bos = config.get("add_bos_token")
    if add_bos is None and "bos_token" in special:
      # No explicit setting: prepend BOS exactly when the post-processor would.
      add_bos = backend.encode("", add_special_tokens=True).ids[:1] == [ids["bos_token"]]
    if not isinstance(add_bos, (bool, type(None))):
      raise ValueError(f"{cfg_path}: add_bos_token must be true or false, got {add_bos!r}")

    templates = _file_templates(directory) or _config_templates(config.get("chat_template"),
                                                                cfg_path)
    added = backend.get_added_tokens_decoder()
    skip = {i for i, t in added.items() if t.special}
    skip |= {ids[k] for k in ("bos_token", "pad_token") if k in ids}
    eos_id = ids["eos_token"]
    return cls(
        directory=directory, backend=backend,
        special_tokens=special, chat_templates=templates,
        eos_id=eos_id, pad_id=ids.get("pad_token", eos_id),
        bos_id=ids["bos_token"] if add_bos and "bos_token" in ids else None,
        vocab_size=max(backend.get_vocab(with_added_tokens=True).values()) + 1,
        _skip_ids=frozenset(skip))

  # ------------------------------------------------------------------ tokens

  def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; see the module docstring for `add_special_tokens`."""
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def token_id(self, token: str) -> int:
    """The id of one token string, e.g. an end-of-turn marker to stop sampling at."""
    token_id = self.backend.token_to_id(token)
    if token_id is None:
      raise ValueError(f"token {token!r} is not in the vocabulary of "
                       f"{os.path.join(self.directory, TOKENIZER_FILE)}")
    return token_id

  def _is_token(self, token: int) -> bool:
    return 0 <= token < self.vocab_size and self.backend.id_to_token(token) is not None

  def decode(self, ids: Iterable[int], *, strict: bool = True) -> str:
    """Text of `ids` up to the first EOS, without special tokens.

    Ids that are no token (a model's vocabulary is often padded past the tokenizer's) raise
    with ``strict=True`` and become U+FFFD otherwise; the runs between them are decoded
    separately, so a decoder that strips a leading space would do so after each one.
    """
    pieces, run = [], []
    for token in ids:
      token = int(token)
      if token == self.eos_id:
        break
      if token in self._skip_ids:
        continue
      if self._is_token(token):
        run.append(token)
        continue
      if strict:
        raise ValueError(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
      pieces += [self.backend.decode(run, skip_special_tokens=True), "\ufffd"]
      run = []
    pieces.append(self.backend.decode(run, skip_special_tokens=True))
    return "".join(pieces)

  # ------------------------------------------------------------------ chat

  def chat_template(self, name: Optional[str] = None, *, tools: Any = None) -> str:
    """The template called `name`, else "tool_use" when tools are given, else "default"."""
    if not self.chat_templates:
      raise ValueError(
          f"{self.directory}: this tokenizer has no chat template (none in {CONFIG_FILE}, no "
          f"{TEMPLATE_FILE}); pass a template to chat_template.apply_chat_template instead")
    if name is None:
      name = "tool_use" if tools is not None and "tool_use" in self.chat_templates else "default"
    if name not in self.chat_templates:
      raise ValueError(f"{self.directory}: no chat template named {name!r}; available: "
                       f"{sorted(self.chat_templates)}")
    template = self.chat_templates[name]
    try:
      chat_lib.compile_template(template)  # cached; fails here to name the tokenizer
    except jinja2.TemplateSyntaxError as e:
      raise ValueError(f"{self.directory}: chat template {name!r} does not parse (line "
                       f"{e.lineno}: {e.message})") from None
    return template

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = True, *,
                          template_name: Optional[str] = None, tools: Any = None,
                          **extra: Any) -> str:
    """The conversation rendered to text, as transformers' `tokenize=False` renders it.

    Unlike transformers, `add_generation_prompt` defaults to True: here a conversation is
    almost always a prompt for the policy to answer. Every named special token is visible to
    the template; `extra` adds variables (e.g. `enable_thinking=False`) or overrides them.
    """
    variables = {**{k: v for k, v in self.special_tokens.items()
                    if k not in ("bos_token", "eos_token")}, **extra}
    variables.setdefault("bos_token", self.special_tokens.get("bos_token"))
    variables.setdefault("eos_token", self.special_tokens.get("eos_token"))
    return chat_lib.apply_chat_template(
        self.chat_template(template_name, tools=tools), messages,
        add_generation_prompt=add_generation_prompt, tools=tools, **variables)

  def encode_chat(self, messages: Sequence[Mapping[str, Any]],
                  add_generation_prompt: bool = True, **kwargs: Any) -> list[int]:
    """Ids of the rendered conversation; the template supplies any BOS, none is added."""
    return self.encode(self.apply_chat_template(messages, add_generation_prompt, **kwargs))
