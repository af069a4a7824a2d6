"""synthetic_cxr: determinism, labels vs masks vs report, patient grouping, vocabulary."""
import numpy as np
import pytest

from jaxmm.data import builders
from jaxmm.data import cxr_reports
from jaxmm.data import synthetic_cxr as sc
from jaxmm.data import tokenizer

N, SIZE = 120, 32
K = len(cxr_reports.CHEXPERT_LABELS)
DRAWABLE = np.array([n != "No Finding" for n in cxr_reports.CHEXPERT_LABELS])


@pytest.fixture(scope="module")
def built(tmp_path_factory, read_records):
  builder = builders.get_builder("synthetic_cxr", num_examples=N, image_size=SIZE,
                                 data_dir=str(tmp_path_factory.mktemp("cxr")))
  builders.prepare(builder)
  return builder, read_records(builder, "study_id")


def test_two_builds_in_different_dirs_are_identical(built, tmp_path, read_records,
                                                    same_records):
  builder, records = built
  assert builder.builder_config.name == f"n{N}_px{SIZE}_seed0"
  other = builders.get_builder("synthetic_cxr", config=sc.SyntheticCxrConfig.custom(N, SIZE),
                               data_dir=str(tmp_path))
  builders.prepare(other)
  same_records(records, read_records(other, "study_id"))


def test_labels_masks_consistent(built):
  _, records = built
  for key, r in records.items():
    labels = r["label"]
    assert labels.shape == (K,) and labels.dtype == np.int32
    assert set(labels.tolist()) <= {1, 0, -1, -2}
    assert r["image"].shape == (SIZE, SIZE, 1) and r["image"].dtype == np.uint8
    masks = r["roi_masks"]
    assert masks.shape == (K, SIZE, SIZE)
    np.testing.assert_array_equal(r["roi_mask"], masks.any(0).astype(np.uint8))
    positive = (labels == 1) & DRAWABLE
    assert r["roi_mask"].any() == positive.any(), key
    for k in range(K):
      assert masks[k].any() == bool(positive[k]), (key, k)
    pathology = np.delete(labels, [cxr_reports.NO_FINDING, cxr_reports.SUPPORT_DEVICES])
    no_finding = labels[cxr_reports.NO_FINDING]
    assert no_finding == (1 if not np.isin(pathology, (1, -1)).any() else -2)


def test_plan_label_distribution_is_plausible():
  labels = sc.plan_dataset(3000, 0).labels
  positive = (labels == 1).mean(0)
  names = cxr_reports.CHEXPERT_LABELS
  assert 0.2 < positive[names.index("No Finding")] < 0.45
  assert positive[names.index("Support Devices")] > 0.15
  assert (labels == -1).any(0)[np.array([n != "No Finding" for n in names])].all()
  assert ((labels == 1) & DRAWABLE).sum(1).max() >= 3  # several findings per study sometimes


def test_report_sentences_match_labels():
  plan = sc.plan_dataset(400, 0)
  for i in range(400):
    labels, findings = plan.labels[i], plan.findings[i]
    no_finding = labels[cxr_reports.NO_FINDING] == 1
    rng = np.random.default_rng([0, 2, i])
    report = cxr_reports.write_report(list(findings), bool(no_finding), rng)
    assert report.text == sc.report_text(plan, i, 0)
    assert report.text.startswith("FINDINGS: ") and " IMPRESSION: " in report.text
    mentioned = set()
    for sentence in report.findings + report.impression:
      assert sentence.text in report.text
      for label, status in sentence.mentions:
        assert labels[label] == status, (i, sentence)
        mentioned.add(label)
        if label != cxr_reports.NO_FINDING:
          assert status in cxr_reports.sentence_statuses(sentence.text), (i, sentence.text)
    assert mentioned == set(np.flatnonzero(labels != -2)), i
    named = cxr_reports.mentioned_labels(report.text)
    ambiguous = {f.label for f in findings if f.ambiguous}
    for k, name in enumerate(cxr_reports.CHEXPERT_LABELS):
      if labels[k] == -2 or name == "No Finding":
        assert k not in named, (i, name, report.text)
      elif k not in ambiguous:
        assert k in named, (i, name, report.text)


def test_phrase_cues():
  statuses = cxr_reports.sentence_statuses
  assert statuses("No pneumothorax.") == {0}
  assert statuses("There is no pleural effusion or edema.") == {0}
  assert statuses("Possible left lower lobe pneumonia.") == {-1}
  assert statuses("Cannot exclude mild pulmonary edema.") == {-1}
  assert statuses("Probable small right pleural effusion.") == {1, -1}
  assert statuses("Moderate cardiomegaly is present.") == {1}
  assert cxr_reports.mentioned_labels("No pleural effusion or pneumothorax.") == {
      cxr_reports.CHEXPERT_LABELS.index("Pleural Effusion"),
      cxr_reports.CHEXPERT_LABELS.index("Pneumothorax")}


def test_patients_grouped_and_splits_near_64_16_20(built):
  _, records = built
  by_patient = {}
  for r in records.values():
    by_patient.setdefault(r["patient_id"], []).append(r)
  assert len(by_patient) < len(records)
  for studies in by_patient.values():
    assert len({s["split"] for s in studies}) == 1
    assert len({s["sex"] for s in studies}) == 1
  plan = sc.plan_dataset(2000, 0)
  parts = sc.split_indices(plan, 0)
  sizes = np.array([len(parts[k]) for k in ("train", "validation", "test")]) / 2000
  np.testing.assert_allclose(sizes, [0.64, 0.16, 0.20], atol=0.015)
  sets = [set(plan.patient[idx]) for idx in parts.values()]
  assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_vocab_written_and_reports_tokenize_without_unknowns(built):
  builder, records = built
  tok = tokenizer.load_tokenizer(builder.data_dir)
  vocab = tok.get_vocab()
  plan = sc.plan_dataset(300, 7)
  texts = [r["report"].decode() for r in records.values()]
  texts += [sc.report_text(plan, i, 7) for i in range(300)]
  for text in texts:
    for variant in (text, tokenizer.clean_report(text)):
      ids = tok(variant)["input_ids"]
      assert tok.unk_token_id not in ids, variant
    for word in tokenizer.clean_report(text).split():
      assert word in vocab, word  # whole words, not character fallbacks


def _bayes_auc(keys: np.ndarray, y: np.ndarray) -> float:
  """AUC of the empirical posterior P(y | key) (fitted on even rows, scored on odd rows)."""
  from sklearn.metrics import roc_auc_score
  fit, score = slice(0, None, 2), slice(1, None, 2)
  table = {k: y[fit][keys[fit] == k].mean() if (keys[fit] == k).any() else y[fit].mean()
           for k in np.unique(keys)}
  return roc_auc_score(y[score], [table[k] for k in keys[score]])


def test_signal_design_text_strong_image_weaker_joint_best():
  """Latent-level check: per label (masked, 1 vs 0/-1), how a finding is written (text) and
  whether it is drawn (image) predict the label; the two are complementary."""
  plan = sc.plan_dataset(20000, 3)
  kind = np.full(plan.labels.shape, 6)
  drawn = np.zeros(plan.labels.shape, int)
  for i, findings in enumerate(plan.findings):
    for f in findings:
      kind[i, f.label] = (4 if f.partner >= 0 else 5 if f.ambiguous else 3 if f.equivocal
                          else {1: 0, -1: 1, 0: 2}[f.status])
      drawn[i, f.label] = f.drawn
  scores = []
  for k in np.flatnonzero(DRAWABLE):
    mask = plan.labels[:, k] != -2
    y = (plan.labels[mask, k] == 1).astype(float)
    text, image = kind[mask, k], drawn[mask, k]
    scores.append([_bayes_auc(text, y), _bayes_auc(image, y), _bayes_auc(text * 2 + image, y)])
  text, image, both = np.mean(scores, 0)
  assert image < text < both - 0.01, (text, image, both)
  assert text > 0.9
