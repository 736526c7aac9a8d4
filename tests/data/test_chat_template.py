"""Tests for rlalign.data.chat_template, with parity against transformers.

Each family below is a tiny tokenizer trained here on a few sentences, with the family's
special tokens, pre-tokenization and tokenizer class, plus a chat template written for this
test in the style of that family. transformers must render and tokenize every conversation
exactly as we do.
"""

import datetime
import json

import jinja2
import pytest
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

from rlalign.data import chat_template as chat_lib
from rlalign.data.hf_tokenizer import HFTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you!",
    "What is 2 + 3? The answer is 5. Think step by step.",
    "You are a helpful assistant. Keep your answers short and clear.",
    "Café, naïve, déjà vu. 日本語のテキスト。 Emoji: 🙂🚀",
]

# ------------------------------------------------------------------ family templates
# Written for these tests to reproduce each family's turn format; not the hub files.

LLAMA3_TEMPLATE = r"""
{{- bos_token }}
{%- if messages[0].role == "system" %}
  {%- set system = messages[0].content | trim %}
  {%- set turns = messages[1:] %}
{%- else %}
  {%- set system = "" %}
  {%- set turns = messages %}
{%- endif %}
{%- if date_string is not defined %}
  {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system + "<|eot_id|>" }}
{%- for message in turns %}
  {{- "<|start_header_id|>" + message.role + "<|end_header_id|>\n\n" }}
  {{- (message.content | trim) + "<|eot_id|>" }}
{%- endfor %}
{%- if add_generation_prompt %}
  {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
{%- endif %}
"""

QWEN25_TEMPLATE = r"""
{%- if messages[0].role == "system" %}
  {%- set system = messages[0].content %}
{%- else %}
  {%- set system = "You are a helpful assistant." %}
{%- endif %}
{{- "<|im_start|>system\n" + system }}
{%- if tools %}
  {{- "\n\n# Tools\n\n<tools>" }}
  {%- for tool in tools %}
    {{- "\n" + (tool | tojson) }}
  {%- endfor %}
  {{- "\n</tools>" }}
{%- endif %}
{{- "<|im_end|>\n" }}
{%- for message in messages %}
  {%- if not (loop.first and message.role == "system") %}
    {{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" }}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
  {{- "<|im_start|>assistant\n" }}
{%- endif %}
"""

# Reasoning of assistant turns after the last user turn is kept inside <think> tags;
# earlier turns keep only their answer. enable_thinking=false pre-fills an empty think block.
QWEN3_TEMPLATE = r"""
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
  {%- if message.role == "user" %}
    {%- set ns.last_user = loop.index0 %}
  {%- endif %}
{%- endfor %}
{%- for message in messages %}
  {%- if message.role in ("system", "user") %}
    {{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" }}
  {%- elif message.role == "assistant" %}
    {%- set content = message.content %}
    {%- set reasoning = "" %}
    {%- if message.reasoning_content is string %}
      {%- set reasoning = message.reasoning_content %}
    {%- elif "</think>" in content %}
      {%- set reasoning = content.split("</think>")[0].split("<think>")[-1].strip("\n") %}
      {%- set content = content.split("</think>")[-1].lstrip("\n") %}
    {%- endif %}
    {{- "<|im_start|>assistant\n" }}
    {%- if loop.index0 > ns.last_user and reasoning %}
      {{- "<think>\n" + reasoning + "\n</think>\n\n" }}
    {%- endif %}
    {{- content + "<|im_end|>\n" }}
  {%- else %}
    {{- raise_exception("unknown role: " + message.role) }}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
  {{- "<|im_start|>assistant\n" }}
  {%- if enable_thinking is defined and enable_thinking is false %}
    {{- "<think>\n\n</think>\n\n" }}
  {%- endif %}
{%- endif %}
"""

GEMMA_TEMPLATE = r"""
{{- bos_token }}
{%- if messages[0].role == "system" %}
  {%- set prefix = messages[0].content + "\n\n" %}
  {%- set turns = messages[1:] %}
{%- else %}
  {%- set prefix = "" %}
  {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
  {%- if (message.role == "user") != (loop.index0 % 2 == 0) %}
    {{- raise_exception("roles must alternate user/assistant/user/...") }}
  {%- endif %}
  {%- set role = "model" if message.role == "assistant" else message.role %}
  {{- "<start_of_turn>" + role + "\n" + (prefix if loop.first else "") }}
  {{- (message.content | trim) + "<end_of_turn>\n" }}
{%- endfor %}
{%- if add_generation_prompt %}
  {{- "<start_of_turn>model\n" }}
{%- endif %}
"""

# ------------------------------------------------------------------ tiny tokenizers


def _special(tokens):
  return [AddedToken(t, special=True, normalized=False) for t in tokens]


def _byte_level(pre_tokenizer, normalizer=None):
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizer
  tok.pre_tokenizer = pre_tokenizer
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  return tok


def llama3_tokenizer():
  tok = _byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
  tok.add_special_tokens(_special(["<|begin_of_text|>", "<|end_of_text|>",
                                   "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]))
  bos = tok.token_to_id("<|begin_of_text|>")
  tok.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
      special_tokens=[("<|begin_of_text|>", bos)])
  return tok


def qwen_tokenizer(think_tokens=False):
  # Qwen2Tokenizer rebuilds this pipeline from its class, so copy its split regex exactly.
  from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
  tok = _byte_level(pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), normalizers.NFC())
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.add_special_tokens(_special(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
  if think_tokens:  # Qwen3's think tags are added but not special: decode keeps them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in ("<think>", "</think>")])
  return tok


def gemma_tokenizer():
  """SentencePiece-style BPE: "▁" for spaces, byte fallback, specials at the lowest ids."""
  specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=_special(specials), show_progress=False))
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  for byte in range(256):
    vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
  spec["model"].update(byte_fallback=True, fuse_unk=True, unk_token="<unk>")
  tok = Tokenizer.from_str(json.dumps(spec))
  tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  tok.post_processor = processors.TemplateProcessing(
      single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
  return tok


def _added(content):
  """An AddedToken-style dict, as transformers writes special tokens into the config."""
  return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
          "rstrip": False, "single_word": False, "special": True}


FAMILIES = {
    "llama3": dict(
        tokenizer=llama3_tokenizer,
        config={"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE},
        template_kwargs={"date_string": "26 Jul 2024"}),
    "qwen2.5": dict(
        tokenizer=qwen_tokenizer,
        config={"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "unk_token": None,
                "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        jinja_file=QWEN25_TEMPLATE),
    "qwen3": dict(
        tokenizer=lambda: qwen_tokenizer(think_tokens=True),
        config={"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "unk_token": None,
                "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "chat_template": [{"name": "default", "template": QWEN3_TEMPLATE},
                                  {"name": "plain", "template": QWEN25_TEMPLATE}]}),
    "gemma": dict(
        tokenizer=gemma_tokenizer,
        config={"tokenizer_class": "GemmaTokenizer", "add_bos_token": True,
                "bos_token": _added("<bos>"), "eos_token": _added("<eos>"),
                "pad_token": _added("<pad>"), "unk_token": _added("<unk>"),
                "mask_token": _added("<mask>"), "chat_template": GEMMA_TEMPLATE}),
}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is 2 + 3?"}],
    "system_user": [{"role": "system", "content": "Keep your answers short."},
                    {"role": "user", "content": " Hello, how are you today? 🙂 "}],
    "multi_turn": [{"role": "system", "content": "You are a helpful assistant."},
                   {"role": "user", "content": "What is 2 + 3?"},
                   {"role": "assistant", "content": "The answer is 5."},
                   {"role": "user", "content": "Café, naïve, déjà vu?"}],
    "ends_with_assistant": [{"role": "user", "content": "Think step by step."},
                            {"role": "assistant", "content": "Fine, thank you!"}],
}
THINKING = {
    "think_in_content": [{"role": "user", "content": "What is 2 + 3?"},
                         {"role": "assistant", "content": "<think>\n2 plus 3\n</think>\n\n5"},
                         {"role": "user", "content": "And 3 + 3?"},
                         {"role": "assistant", "content": "<think>\n3 plus 3\n</think>\n\n6"}],
    "reasoning_field": [{"role": "user", "content": "What is 2 + 3?"},
                        {"role": "assistant", "content": "5", "reasoning": "2 plus 3"}],
}


def _write(directory, family):
  spec = FAMILIES[family]
  directory.mkdir(parents=True, exist_ok=True)
  spec["tokenizer"]().save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(spec["config"]), "utf-8")
  if "jinja_file" in spec:
    (directory / "chat_template.jinja").write_text(spec["jinja_file"], "utf-8")
  return directory


@pytest.fixture(scope="module")
def load(tmp_path_factory):
  """name -> (name, our tokenizer, transformers' tokenizer), each family built once."""
  transformers = pytest.importorskip("transformers")
  cache = {}

  def get(name):
    if name not in cache:
      directory = _write(tmp_path_factory.mktemp(name), name)
      cache[name] = (name, HFTokenizer.from_dir(directory),
                     transformers.AutoTokenizer.from_pretrained(str(directory)))
    return cache[name]
  return get


@pytest.fixture(params=sorted(FAMILIES))
def family(request, load):
  return load(request.param)


def _check_parity(ours, theirs, messages, add_generation_prompt, **kwargs):
  text = ours.apply_chat_template(messages, add_generation_prompt, **kwargs)
  assert text == theirs.apply_chat_template(
      messages, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)
  ids = ours.encode_chat(messages, add_generation_prompt, **kwargs)
  assert ids == list(theirs.apply_chat_template(
      messages, add_generation_prompt=add_generation_prompt, tokenize=True,
      return_dict=False, **kwargs))
  return text, ids


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_family_parity_with_transformers(family, conversation, add_generation_prompt):
  name, ours, theirs = family
  _check_parity(ours, theirs, CONVERSATIONS[conversation], add_generation_prompt,
                **FAMILIES[name].get("template_kwargs", {}))


def test_family_special_tokens_match_transformers(family):
  _, ours, theirs = family
  assert ours.eos_id == theirs.eos_token_id
  assert ours.pad_id == (theirs.pad_token_id if theirs.pad_token_id is not None
                         else theirs.eos_token_id)
  assert ours.vocab_size == len(theirs)
  text = "Hello <|im_start|> <start_of_turn> world 🙂"
  assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
  assert ours.encode(text, add_special_tokens=True) == theirs.encode(text)


def test_rendered_formats(family):
  """Spot checks that each template reproduces its family's layout."""
  name, ours, _ = family
  text = ours.apply_chat_template(CONVERSATIONS["system_user"], **FAMILIES[name].get(
      "template_kwargs", {}))
  expected = {
      "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Today Date: 26 Jul 2024\n\nKeep your answers short.<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\n"
                 "Hello, how are you today? 🙂<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n"),
      "qwen2.5": ("<|im_start|>system\nKeep your answers short.<|im_end|>\n"
                  "<|im_start|>user\n Hello, how are you today? 🙂 <|im_end|>\n"
                  "<|im_start|>assistant\n"),
      "qwen3": ("<|im_start|>system\nKeep your answers short.<|im_end|>\n"
                "<|im_start|>user\n Hello, how are you today? 🙂 <|im_end|>\n"
                "<|im_start|>assistant\n"),
      "gemma": ("<bos><start_of_turn>user\nKeep your answers short.\n\n"
                "Hello, how are you today? 🙂<end_of_turn>\n<start_of_turn>model\n"),
  }[name]
  assert text == expected
  # The template writes any BOS itself; encoding the text adds nothing more.
  ids = ours.encode_chat(CONVERSATIONS["system_user"], **FAMILIES[name].get(
      "template_kwargs", {}))
  assert ids.count(ours.bos_id) == (0 if ours.bos_id is None else 1)
  if name == "qwen2.5":  # no system message: the family's default system prompt
    default = ours.apply_chat_template(CONVERSATIONS["user"])
    assert default.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


@pytest.mark.parametrize("conversation", sorted(THINKING))
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_qwen3_thinking_parity(load, conversation, enable_thinking):
  _, ours, theirs = load("qwen3")
  kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
  text, ids = _check_parity(ours, theirs, THINKING[conversation], True, **kwargs)
  assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"
                       if enable_thinking is False else "<|im_start|>assistant\n")
  if conversation == "think_in_content":
    # Only the turn after the last user message keeps its reasoning.
    assert "2 plus 3" not in text and "<think>\n3 plus 3\n</think>\n\n6" in text
  else:  # `reasoning` is aliased to `reasoning_content`, which the template reads
    assert "<think>\n2 plus 3\n</think>\n\n5" in text
  # <think> is an added, non-special token: one id, kept by decode; chat markers are not.
  # Decode the last assistant turn: from the EOS before it up to (excluding) its own EOS.
  ends = [i for i, t in enumerate(ids) if t == ours.eos_id]
  decoded = ours.decode(ids[ends[-2] + 1:])
  assert ours.token_id("<think>") in ids[ends[-2]:ends[-1]]
  assert decoded.startswith("\nassistant\n<think>\n") and decoded.endswith("</think>\n\n" + (
      "6" if conversation == "think_in_content" else "5"))


def test_named_templates_parity(load):
  _, ours, theirs = load("qwen3")  # a list of named templates in the config
  assert sorted(ours.chat_templates) == ["default", "plain"]
  assert (ours.apply_chat_template(CONVERSATIONS["user"], template_name="plain") ==
          theirs.apply_chat_template(CONVERSATIONS["user"], chat_template="plain",
                                     add_generation_prompt=True, tokenize=False))
  with pytest.raises(ValueError, match="no chat template named 'nope'.*default.*plain"):
    ours.apply_chat_template(CONVERSATIONS["user"], template_name="nope")


def test_tools_parity(load):
  _, ours, theirs = load("qwen2.5")  # tools are rendered with `tojson`: no escaping
  tools = [{"type": "function", "function": {
        "name": "add", "description": "Adds two numbers <a> & <b> — für Zahlen",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]
  text = ours.apply_chat_template(CONVERSATIONS["user"], tools=tools)
  assert text == theirs.apply_chat_template(CONVERSATIONS["user"], tools=tools,
                                            add_generation_prompt=True, tokenize=False)
  assert json.dumps(tools[0], ensure_ascii=False) in text


def test_gemma_rejects_non_alternating_roles_like_transformers(load):
  _, ours, theirs = load("gemma")
  messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
  with pytest.raises(jinja2.TemplateError, match="alternate"):
    ours.apply_chat_template(messages)
  with pytest.raises(jinja2.TemplateError, match="alternate"):
    theirs.apply_chat_template(messages, tokenize=False)


# ------------------------------------------------------------------ environment


def _render(template, messages=({"role": "user", "content": "hi"},), **kwargs):
  return chat_lib.apply_chat_template(template, list(messages), add_generation_prompt=False,
                                      bos_token="<s>", eos_token="</s>", **kwargs)


def test_tojson_matches_json_dumps_with_its_arguments():
  value = {"b": "<x> & ü", "a": [1, 2]}
  assert _render("{{ v | tojson }}", v=value) == json.dumps(value, ensure_ascii=False)
  assert _render("{{ v | tojson(indent=2, sort_keys=True) }}", v=value) == json.dumps(
      value, ensure_ascii=False, indent=2, sort_keys=True)
  assert _render("{{ v | tojson(ensure_ascii=True, separators=(',', ':')) }}", v=value) == (
      json.dumps(value, ensure_ascii=True, separators=(",", ":")))


def test_globals_and_extensions():
  assert _render("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}") == "<s>hi</s>"
  year = datetime.datetime.now().strftime("%Y")
  assert _render("{{ strftime_now('%Y') }}") in (year, str(int(year) + 1))
  assert _render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}"
                 "{% endfor %}") == "012"
  assert _render("{% generation %}kept{% endgeneration %}") == "kept"
  assert _render("{% set ns = namespace(n=1) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}") == "2"
  assert _render("{{ dict(a=1)['a'] }}{{ dict.fromkeys(['x']) | tojson }}") == '1{"x": null}'
  # trim_blocks / lstrip_blocks: block tags leave no newline or indentation behind.
  assert _render("{% if true %}\n    a\n{% endif %}\n") == "    a\n"
  with pytest.raises(jinja2.TemplateError, match="boom"):
    _render("{{ raise_exception('boom') }}")


def test_sandbox_blocks_mutation_and_private_names():
  with pytest.raises(jinja2.exceptions.SecurityError):
    _render("{{ messages.append(1) }}")
  with pytest.raises(jinja2.exceptions.SecurityError):
    _render("{% set ns = namespace(_x=1) %}")
  with pytest.raises(jinja2.exceptions.SecurityError):
    _render("{{ ''.__class__.__mro__ }}{{ cycler.__init__.__globals__ }}")


def test_messages_are_copied_like_transformers():
  messages = [{"role": "user", "content": "hi", "tool_calls": None, "thinking": "hmm"}]
  out = _render("{{ messages[0].tool_calls is defined }}|{{ messages[0].reasoning_content }}",
                messages)
  assert out == "False|hmm"
  assert messages[0] == {"role": "user", "content": "hi", "tool_calls": None,
                         "thinking": "hmm"}  # the caller's dicts are untouched
  out = chat_lib.apply_chat_template("{{ bos_token is defined }}", messages,
                                     add_generation_prompt=True, bos_token=None,
                                     eos_token="</s>")
  assert out == "False"
  with pytest.raises(ValueError, match="empty conversation"):
    chat_lib.apply_chat_template("x", [], add_generation_prompt=True, bos_token=None,
                                 eos_token=None)


def _render_limited(template, **limits):
  return chat_lib.apply_chat_template(template, [{"role": "user", "content": "hi"}],
                                      add_generation_prompt=True, bos_token=None,
                                      eos_token=None, **limits)


@pytest.mark.parametrize("template, match", [
    # One big value at once: repetition, a huge power, a big filter output.
    ("{{ 'x' * 100000000 }}", "repetition of 100,000,000 items"),
    ("{{ [0] * 100000000 }}", "repetition of 100,000,000 items"),
    ("{{ 7 ** 100000000 }}", "power of more than 4096 bits"),
    ("{{ 'x'|center(30000000) }}", "output longer than 1,000,000 characters"),
    # Growth that needs no output: doubling through a namespace, and through recursion.
    ("{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}"
     "{% endfor %}{{ ns.x|length }}", "built a value of 1,048,576 items"),
    ("{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
     "{{ f('ab', 40) }}", "built a value of 1,048,576 items|longer than 1 s"),
    # Many small outputs.
    ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}",
     "output longer than 1,000,000 characters"),
])
def test_rendering_stops_at_its_size_limit(template, match):
  with pytest.raises(chat_lib.TemplateLimitError, match=match):
    _render_limited(template, max_chars=1_000_000, max_seconds=1.0)


def test_rendering_stops_at_its_time_limit():
  """10^10 iterations that write nothing: each inner range() call checks the clock."""
  import time
  template = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
              "{% endfor %}")
  start = time.perf_counter()
  with pytest.raises(chat_lib.TemplateLimitError, match="longer than 0.5 s"):
    _render_limited(template, max_seconds=0.5)
  # Generous: the point is that it stops, not how fast (it would run for hours otherwise).
  assert time.perf_counter() - start < 30


def test_limits_leave_real_templates_alone():
  """A long conversation through a real template: the same string with and without limits,
  and a limit just under its length stops it."""
  template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
              "<|im_end|>\n{% endfor %}")
  messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 500}
              for i in range(100)]
  plain = chat_lib.compile_template(template).render(messages=messages)
  limited = chat_lib.apply_chat_template(template, messages, add_generation_prompt=False,
                                         bos_token=None, eos_token=None)
  assert limited == plain and len(plain) > 250_000
  with pytest.raises(chat_lib.TemplateLimitError, match="output longer"):
    chat_lib.apply_chat_template(template, messages, add_generation_prompt=False,
                                 bos_token=None, eos_token=None, max_chars=len(plain) - 1)
