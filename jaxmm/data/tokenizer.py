"""Radiology report cleaning and a local WordPiece vocabulary/tokenizer (no hub access).

Cleaning follows section 2 of paper 001_02ed271d6d235282.txt: keep the FINDINGS and IMPRESSION
sections, lower-case, remove punctuation and special characters, collapse whitespace. A report
is split into sections only at the known MIMIC-CXR headings (SECTION_HEADINGS), so an
upper-case abbreviation before a colon inside a section ("Left PICC: ...") stays text.

The vocabulary is BERT-shaped: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then every word
of the given texts (sorted), then single characters and their "##" continuations (a-z, 0-9)
so that an unseen lower-case word still tokenizes into pieces instead of [UNK]. It is a
deterministic function of its texts, so a dataset's vocab.txt can always be rebuilt. A
pretrained text encoder's own tokenizer (`model.text.init_from`) loads from its Hugging Face
directory instead (`load_pretrained_tokenizer`).
"""
import os
import re
from typing import Iterable, Sequence

from jaxmm.data.atomic import write_text_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"
# What a Hugging Face BERT-family model directory holds its tokenizer in (either suffices).
PRETRAINED_TOKENIZER_FILES = ("tokenizer.json", VOCAB_FILE)
KEPT_SECTIONS = ("FINDINGS", "IMPRESSION")
# The section headings of MIMIC-CXR reports: the names the MIMIC-CXR authors' section parser
# (github.com/MIT-LCP/mimic-cxr, txt/section_parser.py) lists as frequent, in upper case as the
# reports write them. Only these split a report: other upper-case words before a colon are
# report text ("Left PICC: tip in the low SVC.", "NG tube: ...").
SECTION_HEADINGS = (
    "FINDINGS", "IMPRESSION", "INDICATION", "HISTORY", "TECHNIQUE", "COMPARISON", "EXAMINATION",
    "EXAM", "FINAL REPORT", "WET READ", "NOTIFICATION", "REASON FOR EXAMINATION",
    "REASON FOR EXAM", "CLINICAL HISTORY", "CLINICAL INFORMATION", "CLINICAL INDICATION",
    "PATIENT HISTORY", "TYPE OF EXAMINATION", "COMPARISONS", "COMPARISON EXAM",
    "COMPARISON FILM", "REFERENCE EXAM", "CONCLUSION", "CONCLUSIONS", "RECOMMENDATION",
    "RECOMMENDATIONS", "RECOMMENDATION(S)", "ADDENDUM", "FINDINGS AND IMPRESSION",
    "FINDINGS/IMPRESSION", "COMMENT", "PFI")
# Headings read as a kept section, as the MIMIC-CXR section parser's name normalisation maps
# them (a report's conclusion is its impression).
SECTION_ALIASES = {"CONCLUSION": "IMPRESSION", "CONCLUSIONS": "IMPRESSION",
                   "FINDINGS AND IMPRESSION": "IMPRESSION", "FINDINGS/IMPRESSION": "IMPRESSION"}
_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
_PUNCTUATION = ".,:;!?'\"()[]/-_%+*&#<>=@"
# A section heading: a whole SECTION_HEADINGS name (its words separated by any spaces) directly
# followed by a colon; longest names first, so "REASON FOR EXAMINATION:" is one heading.
_HEADER = re.compile(r"\b(" + "|".join(
    re.escape(name).replace(r"\ ", " +")
    for name in sorted(SECTION_HEADINGS, key=len, reverse=True)) + "):")
# BERT's basic tokenization: runs of word characters, or single punctuation characters.
_WORDS = re.compile(r"\w+|[^\w\s]")


def report_sections(text: str) -> dict[str, str]:
  """Splits a report into {HEADING: body} at its SECTION_HEADINGS; text before the first
  heading is under "", an alias heading is under the name it stands for (SECTION_ALIASES) and
  a repeated heading's bodies are joined."""
  sections, last, name = {}, 0, ""
  for match in _HEADER.finditer(text):
    sections[name] = (sections.get(name, "") + " " + text[last:match.start()]).strip()
    name, last = " ".join(match.group(1).split()), match.end()
    name = SECTION_ALIASES.get(name, name)
  sections[name] = (sections.get(name, "") + " " + text[last:]).strip()
  return sections


def clean_report(text: str | bytes) -> str:
  """FINDINGS + IMPRESSION text, lower-cased, without punctuation, single-spaced.

  A report with neither section is cleaned whole.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  sections = report_sections(text)
  kept = [sections[name] for name in KEPT_SECTIONS if name in sections]
  body = " ".join(kept) if kept else text
  body = re.sub(r"[^a-z0-9\s]", " ", body.lower())
  return " ".join(body.split())


def words(text: str) -> list[str]:
  """Lower-cased BERT basic tokens (words and single punctuation marks) of `text`."""
  return _WORDS.findall(text.lower())


def build_vocab(texts: Iterable[str]) -> list[str]:
  """Vocabulary tokens: specials, sorted words of `texts`, then character fallbacks."""
  found = sorted({w for text in texts for w in words(text)} - set(SPECIAL_TOKENS))
  tokens = list(SPECIAL_TOKENS) + found
  seen = set(tokens)
  for token in list(_CHARACTERS + _PUNCTUATION) + [f"##{c}" for c in _CHARACTERS]:
    if token not in seen:
      tokens.append(token)
      seen.add(token)
  return tokens


def write_vocab(path: str, tokens: Sequence[str]) -> None:
  """Writes one token per line (line number = id), atomically."""
  write_text_atomic(path, "\n".join(tokens) + "\n")


def read_vocab(path: str) -> dict[str, int]:
  """token -> id of a vocab.txt file."""
  with open(path, encoding="utf-8") as f:
    tokens = [line.rstrip("\n") for line in f]
  return {token: i for i, token in enumerate(tokens) if token}


def load_tokenizer(vocab_dir: str):
  """A lower-casing WordPiece BertTokenizerFast from `vocab_dir/vocab.txt` (or a file path).

  Built from the local file only; nothing is fetched from the Hugging Face hub.
  """
  from transformers import BertTokenizerFast  # heavy import, only needed by text models
  path = os.path.join(vocab_dir, VOCAB_FILE) if os.path.isdir(vocab_dir) else vocab_dir
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {VOCAB_FILE} at {path}; prepare the dataset with "
                            f"jaxmm.data.builders.prepare(builder) to write it")
  return BertTokenizerFast(vocab=read_vocab(path), do_lower_case=True)


def load_pretrained_tokenizer(model_dir: str):
  """The WordPiece tokenizer of a local Hugging Face BERT-family model directory.

  Reads tokenizer.json or vocab.txt with tokenizer_config.json's settings (do_lower_case,
  special tokens; lower-casing when there is no tokenizer_config.json), local files only:
  nothing is fetched from the Hugging Face hub. Used for `model.text.init_from`.
  """
  from transformers import BertTokenizerFast  # heavy import, only needed by text models
  model_dir = os.path.expanduser(model_dir)
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"tokenizer directory {model_dir!r} does not exist (local paths "
                            f"only; hub ids are not downloaded)")
  if not any(os.path.exists(os.path.join(model_dir, name))
             for name in PRETRAINED_TOKENIZER_FILES):
    raise FileNotFoundError(f"no tokenizer in {model_dir}: expected one of "
                            f"{list(PRETRAINED_TOKENIZER_FILES)}")
  return BertTokenizerFast.from_pretrained(model_dir, local_files_only=True)
