"""Tests for rlalign.data.hf_tokenizer: loading, the tokenizer protocol, parity with transformers.

Tokenizers are trained here on a few sentences, so nothing is downloaded.
"""

import copy
import json

import numpy as np
import pytest
from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

from rlalign.data.hf_tokenizer import HFTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you!",
    "Café, naïve, déjà vu. Keep your answers short.",
]
# Scripts, combining marks, emoji, astral-plane letters and odd whitespace; most characters
# never occur in the corpus, so they go through byte-level BPE or byte fallback.
UNICODE_TEXT = ("naïve café — 日本語のテキスト 🙂🚀👩‍👩‍👧 e\u0301 Ω≈ç√ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 עברית "
                "\t tab\n\nnew lines  two  spaces ")
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"]


def _special(tokens):
  return [AddedToken(t, special=True, normalized=False) for t in tokens]


def byte_level(bos=None):
  """GPT-2 / Llama 3 style byte-level BPE; specials after the vocabulary, BOS optional."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.add_special_tokens(_special(LLAMA_SPECIALS))
  if bos:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
  return tok


def byte_fallback():
  """SentencePiece / Gemma style: "▁" for spaces, <0xNN> byte tokens, specials first."""
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=200, special_tokens=_special(["<pad>", "<eos>", "<bos>", "<unk>"]),
      show_progress=False))
  spec = json.loads(tok.to_str())
  for byte in range(256):
    spec["model"]["vocab"].setdefault(f"<0x{byte:02X}>", len(spec["model"]["vocab"]))
  spec["model"].update(byte_fallback=True, fuse_unk=True, unk_token="<unk>")
  tok = Tokenizer.from_str(json.dumps(spec))
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  tok.post_processor = processors.TemplateProcessing(
      single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
  return tok


def write_dir(path, tokenizer, config=None, **files):
  path.mkdir(parents=True, exist_ok=True)
  if tokenizer is not None:
    tokenizer.save(str(path / "tokenizer.json"))
  if config is not None:
    (path / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
  for name, text in files.items():
    target = path / name.replace("__", "/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, "utf-8")
  return path


LLAMA_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>"}
GEMMA_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True,
                "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                "unk_token": "<unk>"}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return write_dir(tmp_path_factory.mktemp("llama"), byte_level("<|begin_of_text|>"),
                   LLAMA_CONFIG)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
  return write_dir(tmp_path_factory.mktemp("gemma"), byte_fallback(), GEMMA_CONFIG)


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("which", ["llama_dir", "gemma_dir"])
def test_unicode_encode_decode_parity_with_transformers(which, request):
  transformers = pytest.importorskip("transformers")
  directory = request.getfixturevalue(which)
  ours = HFTokenizer.from_dir(directory)
  theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
  ids = ours.encode(UNICODE_TEXT)
  assert ids == theirs.encode(UNICODE_TEXT, add_special_tokens=False)
  assert ours.encode(UNICODE_TEXT, add_special_tokens=True) == theirs.encode(UNICODE_TEXT)
  assert ours.encode(UNICODE_TEXT, add_special_tokens=True) == [ours.bos_id] + ids
  assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == UNICODE_TEXT
  # Specials are dropped and decoding stops at EOS, as for a CharTokenizer (with PAD == EOS
  # a leading PAD would end it at once, see test_special_ids_and_pad_falls_back_to_eos).
  pad = [] if ours.pad_id == ours.eos_id else [ours.pad_id]
  framed = pad + [ours.bos_id] + ids + [ours.eos_id] + ids
  assert ours.decode(framed) == theirs.decode(framed[:-len(ids) - 1],
                                              skip_special_tokens=True) == UNICODE_TEXT
  for piece in ("a", " 🙂", "日本", "\n", ""):
    assert ours.encode(piece) == theirs.encode(piece, add_special_tokens=False)
  assert ours.vocab_size == len(theirs)


def test_parity_with_pretrained_tokenizer_fast_from_file(llama_dir):
  transformers = pytest.importorskip("transformers")
  theirs = transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(llama_dir / "tokenizer.json"), bos_token="<|begin_of_text|>",
      eos_token="<|eot_id|>")
  ours = HFTokenizer.from_dir(llama_dir)
  assert ours.encode(UNICODE_TEXT) == theirs.encode(UNICODE_TEXT, add_special_tokens=False)
  assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)


# ------------------------------------------------------------------ protocol


def test_special_ids_and_pad_falls_back_to_eos(llama_dir, gemma_dir):
  llama = HFTokenizer.from_dir(llama_dir)
  eot = llama.token_id("<|eot_id|>")
  assert (llama.eos_id, llama.pad_id) == (eot, eot)  # no pad token configured
  assert llama.bos_id == llama.token_id("<|begin_of_text|>")  # the post-processor adds it
  # PAD == EOS: a left-padded prompt decodes to "" unless its padding is stripped first.
  prompt = [llama.pad_id, llama.pad_id, llama.bos_id] + llama.encode("Hello")
  assert llama.decode(prompt) == "" and llama.decode(prompt[2:]) == "Hello"
  assert llama.vocab_size == max(llama.backend.get_vocab().values()) + 1
  gemma = HFTokenizer.from_dir(gemma_dir)
  assert (gemma.pad_id, gemma.eos_id, gemma.bos_id) == (0, 1, 2)


@pytest.mark.parametrize("config_update,bos_processor,expect_bos", [
    ({}, "<|begin_of_text|>", True),                         # Llama 3: post-processor adds BOS
    ({}, None, False),                                       # BOS defined but never added
    ({"add_bos_token": True}, None, True),                   # the config says to add it
    ({"add_bos_token": False}, "<|begin_of_text|>", False),  # the config wins
    ({"bos_token": None}, None, False),                      # Qwen: no BOS token at all
])
def test_bos_id_is_what_a_raw_prompt_gets(tmp_path, config_update, bos_processor, expect_bos):
  config = {**LLAMA_CONFIG, **config_update}
  tok = HFTokenizer.from_dir(write_dir(tmp_path, byte_level(bos_processor), config))
  assert tok.bos_id == (tok.token_id("<|begin_of_text|>") if expect_bos else None)
  assert ("bos_token" in tok.special_tokens) == (config["bos_token"] is not None)


def test_decode_skips_specials_stops_at_eos_and_handles_bad_ids(gemma_dir):
  tok = HFTokenizer.from_dir(gemma_dir)
  hello = tok.encode("Hello you")
  assert tok.decode(np.array([0, 0, 2] + hello + [1, 5, 6], np.int32)) == "Hello you"
  assert tok.decode([tok.token_id("<unk>")] + hello) == "Hello you"  # special: dropped
  assert tok.decode([1] + hello) == ""
  with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is outside"):
    tok.decode(hello + [tok.vocab_size])
  with pytest.raises(ValueError, match="-1"):
    tok.decode([-1])
  assert tok.decode(hello + [tok.vocab_size + 7] + hello, strict=False) == (
      "Hello you\ufffdHello you")


def test_copies_behave_the_same(gemma_dir):
  """Data loaders may copy the tokenizer into worker processes."""
  tok = HFTokenizer.from_dir(gemma_dir)
  clone = copy.deepcopy(tok)
  assert clone.encode(UNICODE_TEXT) == tok.encode(UNICODE_TEXT)
  assert (clone.pad_id, clone.bos_id, clone.eos_id, clone.vocab_size) == (
      tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size)


def test_padding_and_truncation_in_tokenizer_json_are_ignored(tmp_path):
  backend = byte_level()
  backend.enable_padding(length=64, pad_id=backend.token_to_id("<|pad|>"), pad_token="<|pad|>")
  backend.enable_truncation(max_length=3)
  tok = HFTokenizer.from_dir(write_dir(tmp_path, backend, LLAMA_CONFIG))
  ids = tok.encode("The quick brown fox jumps over the lazy dog.")
  assert len(ids) > 3 and tok.pad_id not in ids
  assert tok.decode(ids) == "The quick brown fox jumps over the lazy dog."


def test_added_token_dicts_in_config(tmp_path):
  config = {"eos_token": {"__type": "AddedToken", "content": "<|eot_id|>", "special": True},
            "pad_token": {"content": "<|pad|>"}}
  tok = HFTokenizer.from_dir(write_dir(tmp_path, byte_level(), config))
  assert (tok.eos_id, tok.pad_id) == (tok.token_id("<|eot_id|>"), tok.token_id("<|pad|>"))
  assert tok.bos_id is None and tok.special_tokens == {"eos_token": "<|eot_id|>",
                                                       "pad_token": "<|pad|>"}


# ------------------------------------------------------------------ chat templates


def test_template_sources_and_priority(tmp_path):
  """chat_template.jinja and additional_chat_templates/ replace the config's templates."""
  config = {**LLAMA_CONFIG, "chat_template": [{"name": "default", "template": "config"},
                                              {"name": "other", "template": "other"}]}
  msgs = [{"role": "user", "content": "hi"}]
  tok = HFTokenizer.from_dir(write_dir(tmp_path / "a", byte_level(), config))
  assert tok.apply_chat_template(msgs) == "config"
  assert tok.apply_chat_template(msgs, template_name="other") == "other"
  tok = HFTokenizer.from_dir(write_dir(
      tmp_path / "b", byte_level(), config, **{"chat_template.jinja": "file {{ eos_token }}",
                                               "additional_chat_templates__tool_use.jinja":
                                                   "tools {{ tools | length }}"}))
  assert sorted(tok.chat_templates) == ["default", "tool_use"]
  assert tok.apply_chat_template(msgs) == "file <|eot_id|>"
  assert tok.apply_chat_template(msgs, tools=[{"name": "f"}]) == "tools 1"
  transformers = pytest.importorskip("transformers")
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "b"))
  assert theirs.apply_chat_template(msgs, tokenize=False) == "file <|eot_id|>"
  assert theirs.apply_chat_template(msgs, tools=[{"name": "f"}], tokenize=False) == "tools 1"


def test_missing_template_names_the_directory(tmp_path):
  tok = HFTokenizer.from_dir(write_dir(tmp_path, byte_level(), LLAMA_CONFIG))
  with pytest.raises(ValueError, match=f"{tmp_path}.*no chat template.*tokenizer_config.json"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  only_named = {**LLAMA_CONFIG, "chat_template": [{"name": "rag", "template": "x"}]}
  tok = HFTokenizer.from_dir(write_dir(tmp_path / "named", byte_level(), only_named))
  with pytest.raises(ValueError, match=r"no chat template named 'default'.*\['rag'\]"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  broken = write_dir(tmp_path / "broken", byte_level(), LLAMA_CONFIG,
                     **{"chat_template.jinja": "ok\n{% for m in messages %}{{ m }}"})
  with pytest.raises(ValueError, match=f"{broken}: chat template 'default' does not parse "
                                       r"\(line 2"):
    HFTokenizer.from_dir(broken).apply_chat_template([{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------ errors


def test_missing_tokenizer_json_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/tokenizer.json: not found"):
    HFTokenizer.from_dir(tmp_path)
  with pytest.raises(FileNotFoundError, match="nowhere/tokenizer.json"):
    HFTokenizer.from_dir(tmp_path / "nowhere")


def test_malformed_files_are_named(tmp_path):
  (tmp_path / "tokenizer.json").write_text('{"model": ', "utf-8")
  with pytest.raises(ValueError, match=r"tokenizer.json: malformed JSON .*line 1"):
    HFTokenizer.from_dir(tmp_path)
  (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nope"}}', "utf-8")
  with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizers file"):
    HFTokenizer.from_dir(tmp_path)
  byte_level().save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|eot_id|>",\n}', "utf-8")
  with pytest.raises(ValueError, match=r"tokenizer_config.json: malformed JSON .*line 2"):
    HFTokenizer.from_dir(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text("[]", "utf-8")
  with pytest.raises(ValueError, match="tokenizer_config.json: expected a JSON object"):
    HFTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("config,message", [
    ({**LLAMA_CONFIG, "pad_token": "<|nope|>"},
     r"tokenizer_config.json: pad_token '<\|nope\|>' is not in the vocabulary of .*tokenizer.json"),
    ({**LLAMA_CONFIG, "eos_token": {"lstrip": False}}, "tokenizer_config.json: eos_token must be"),
    ({"bos_token": "<|begin_of_text|>"}, "tokenizer_config.json: no eos_token"),
    ({**LLAMA_CONFIG, "add_bos_token": "yes"}, "add_bos_token must be true or false"),
    ({**LLAMA_CONFIG, "chat_template": {"default": "x"}}, "chat_template must be a string"),
])
def test_bad_config_values_name_the_file(tmp_path, config, message):
  with pytest.raises(ValueError, match=message):
    HFTokenizer.from_dir(write_dir(tmp_path, byte_level(), config))


def test_missing_config_needs_an_eos(tmp_path):
  with pytest.raises(ValueError, match=r"tokenizer.json: no eos_token .*tokenizer_config.json "
                                       "not found"):
    HFTokenizer.from_dir(write_dir(tmp_path, byte_level()))
  with pytest.raises(ValueError, match=r"tokenizer_config.json: no eos_token is configured$"):
    HFTokenizer.from_dir(write_dir(tmp_path, byte_level(), {}))


def test_token_id_names_the_file(llama_dir):
  tok = HFTokenizer.from_dir(llama_dir)
  with pytest.raises(ValueError, match=r"'<nope>' is not in the vocabulary of .*tokenizer.json"):
    tok.token_id("<nope>")
