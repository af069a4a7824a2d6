"""Report cleaning (paper 001) and the local WordPiece vocabulary / tokenizer."""
import socket

import pytest

from jaxmm.data import tokenizer

RAW = """FINAL REPORT
EXAMINATION: CHEST (PORTABLE AP)
INDICATION: ____ year old woman with pleural effusion // chest tube interval monitoring
FINDINGS: Unchanged position of the left pleural pigtail.  Minimal increase in the
pre-existing pleural effusion!
IMPRESSION: Left perihilar mass, constant; normal right lung (see ____)."""


def test_clean_report_keeps_findings_and_impression_only():
  assert tokenizer.clean_report(RAW) == (
      "unchanged position of the left pleural pigtail minimal increase in the pre existing "
      "pleural effusion left perihilar mass constant normal right lung see")


def test_clean_report_without_sections_and_bytes():
  assert tokenizer.clean_report(b"No acute  process...\n Lungs: clear") == (
      "no acute process lungs clear")
  assert tokenizer.report_sections("FINDINGS: a. IMPRESSION: b.") == {
      "": "", "FINDINGS": "a.", "IMPRESSION": "b."}


def test_only_known_headings_split_a_report():
  # An upper-case abbreviation before a colon is report text, not a section heading.
  text = (" INDICATION: cough\n FINDINGS: Heart size normal. Left PICC: tip in the low SVC. "
          "Large right pleural effusion.\n IMPRESSION: 1. NG tube: tip in stomach. "
          "RECOMMENDATION(S): follow up.\n")
  assert tokenizer.report_sections(text) == {
      "": "", "INDICATION": "cough",
      "FINDINGS": "Heart size normal. Left PICC: tip in the low SVC. Large right pleural "
                  "effusion.",
      "IMPRESSION": "1. NG tube: tip in stomach.", "RECOMMENDATION(S)": "follow up."}
  assert tokenizer.clean_report(text) == (
      "heart size normal left picc tip in the low svc large right pleural effusion 1 ng tube "
      "tip in stomach")
  # Headings of several words, with any spaces between them, are whole headings.
  assert tokenizer.report_sections("REASON FOR  EXAMINATION: pain WET READ: none FINDINGS: ok") \
      == {"": "", "REASON FOR EXAMINATION": "pain", "WET READ": "none", "FINDINGS": "ok"}
  assert tokenizer.report_sections("NOTE: a. PICC: b.") == {"": "NOTE: a. PICC: b."}


def test_conclusion_headings_are_the_impression():
  # As the MIMIC-CXR section parser normalises them: their text is kept, not dropped.
  text = ("INDICATION: fever. FINDINGS: Lungs clear. CONCLUSION: No pneumonia. "
          "RECOMMENDATION(S): none.")
  assert tokenizer.report_sections(text)["IMPRESSION"] == "No pneumonia."
  assert tokenizer.clean_report(text) == "lungs clear no pneumonia"
  for heading in ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "CONCLUSIONS"):
    assert tokenizer.clean_report(f"HISTORY: cough. {heading}: Small effusion.") == (
        "small effusion"), heading


def test_build_vocab_specials_first_and_deterministic():
  texts = ["No pneumothorax.", "Small left pleural effusion; no pneumothorax"]
  vocab = tokenizer.build_vocab(texts)
  assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = vocab[5:vocab.index("a")]
  assert words == sorted({".", ";", "effusion", "left", "no", "pleural", "pneumothorax",
                          "small"})
  assert "##z" in vocab and len(set(vocab)) == len(vocab)
  assert tokenizer.build_vocab(reversed(texts)) == vocab


def test_load_tokenizer_offline_ids_and_no_unknowns(tmp_path, monkeypatch):
  vocab = tokenizer.build_vocab(["There is no pneumothorax.", "pleural effusion"])
  tokenizer.write_vocab(str(tmp_path / "vocab.txt"), vocab)
  assert tokenizer.read_vocab(str(tmp_path / "vocab.txt")) == {t: i for i, t in enumerate(vocab)}

  def no_network(*args, **kwargs):
    raise AssertionError("the tokenizer tried to reach the network")

  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  tok = tokenizer.load_tokenizer(str(tmp_path))
  assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
          tok.mask_token_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == len(vocab)
  ids = tok("There is NO pneumothorax.")["input_ids"]
  assert ids == [2] + [vocab.index(w) for w in ("there", "is", "no", "pneumothorax", ".")] + [3]
  pieces = tok.convert_ids_to_tokens(tok("pleurals")["input_ids"])
  assert pieces == ["[CLS]", "pleural", "##s", "[SEP]"]  # unseen word -> pieces, not [UNK]
  batch = tok(["no effusion", "pleural"], padding="max_length", max_length=6, truncation=True,
              return_tensors="np")
  assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"][1].tolist() == [
      1, 1, 1, 0, 0, 0]


def test_load_tokenizer_missing_vocab(tmp_path):
  with pytest.raises(FileNotFoundError, match="prepare"):
    tokenizer.load_tokenizer(str(tmp_path))
