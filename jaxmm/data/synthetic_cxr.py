"""synthetic_cxr: a TF-free tfds builder shaped like MIMIC-CXR (paper 001_02ed271d6d235282.txt).

Each study is a grayscale chest radiograph, a "FINDINGS: ... IMPRESSION: ..." report and the
14 CheXpert labels (1 positive, 0 negated, -1 uncertain, -2 not mentioned). Labels are drawn
first; the report is written from them (cxr_reports) and the image shows every positive
finding and half of the uncertain ones (cxr_rendering). Patients have one to five studies;
splits are 64/16/20 grouped by patient and stratified by a label summary.

Signal design (details in cxr_reports): the report names almost every finding and its status
(strong signal), but some positive and uncertain findings share one hedged phrasing and some
positive findings are written with a group phrase that hides which finding it is; the image is
noisy and small findings are faint (weak signal) but shows every positive finding and only half
of the uncertain ones, and tells group members apart. Given the labels, text and image are
drawn independently, so a joint model beats text alone.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxmm.data import cxr_rendering
from jaxmm.data import cxr_reports
from jaxmm.data import splits
from jaxmm.data import synthetic_base
from jaxmm.data.cxr_reports import CHEXPERT_LABELS, Finding

SPLIT_FRACTIONS = (0.64, 0.16, 0.20)
SEXES = ("male", "female")
# (P(positive), P(uncertain), P(negated)) per label; the rest is "not mentioned".
LABEL_RATES = {
    "Atelectasis": (0.18, 0.06, 0.05), "Cardiomegaly": (0.17, 0.05, 0.15),
    "Consolidation": (0.05, 0.03, 0.25), "Edema": (0.11, 0.06, 0.15),
    "Enlarged Cardiomediastinum": (0.03, 0.03, 0.05), "Fracture": (0.02, 0.01, 0.03),
    "Lung Lesion": (0.03, 0.01, 0.02), "Lung Opacity": (0.21, 0.05, 0.04),
    "Pleural Effusion": (0.21, 0.06, 0.30), "Pleural Other": (0.015, 0.005, 0.01),
    "Pneumonia": (0.06, 0.07, 0.12), "Pneumothorax": (0.04, 0.02, 0.40),
    "Support Devices": (0.27, 0.005, 0.01),
}
# Share of studies with no pathology at all (on top of those that draw none by chance).
NORMAL_RATE = 0.15
UNCERTAIN_DRAWN_RATE = 0.5
STUDIES_PER_PATIENT_PROBS = np.array([0.6, 0.2, 0.1, 0.06, 0.04])
# Labels that can be bilateral / their zones.
BILATERAL = ("Atelectasis", "Lung Opacity", "Pleural Effusion")
ZONE_CHOICES = {"Consolidation": ("upper", "lower"), "Pneumonia": ("upper", "lower"),
                "Lung Opacity": cxr_reports.ZONES, "Lung Lesion": cxr_reports.ZONES}
NO_SIDE = ("Cardiomegaly", "Edema", "Enlarged Cardiomediastinum")
PATHOLOGIES = tuple(n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices"))


def draw_status(rng: np.random.Generator, name: str, normal: bool) -> int:
  """Mention status of one label of a study."""
  pos, unc, neg = LABEL_RATES[name]
  if normal and name in PATHOLOGIES:
    pos, unc = 0.0, 0.0
  u = rng.uniform()
  if u < pos:
    return cxr_reports.POSITIVE
  if u < pos + unc:
    return cxr_reports.UNCERTAIN
  if u < pos + unc + neg:
    return cxr_reports.NEGATIVE
  return cxr_reports.NOT_MENTIONED


def draw_finding(rng: np.random.Generator, label: int, status: int) -> Finding:
  """Attributes (side, zone, grade, detail, drawn, ambiguous) of one mentioned label."""
  name = CHEXPERT_LABELS[label]
  sides = ("left", "right", "bilateral") if name in BILATERAL else ("left", "right")
  side = "" if name in NO_SIDE else str(rng.choice(sides, p=None if len(sides) == 2 else
                                                  (0.4, 0.4, 0.2)))
  zone = str(rng.choice(ZONE_CHOICES.get(name, ("",))))
  detail = ""
  if name == "Support Devices":
    detail = str(rng.choice(cxr_reports.DEVICES))
  elif name == "Fracture":
    detail = str(rng.choice(cxr_reports.RIBS))
  drawn = status == cxr_reports.POSITIVE or (
      status == cxr_reports.UNCERTAIN and rng.uniform() < UNCERTAIN_DRAWN_RATE)
  ambiguous = status == cxr_reports.POSITIVE and rng.uniform() < cxr_reports.AMBIGUOUS_RATE
  equivocal_rate = {cxr_reports.POSITIVE: cxr_reports.EQUIVOCAL_POSITIVE_RATE,
                    cxr_reports.UNCERTAIN: cxr_reports.EQUIVOCAL_UNCERTAIN_RATE}.get(status, 0.0)
  equivocal = (not ambiguous and name != "Support Devices"
               and rng.uniform() < equivocal_rate)
  return Finding(label=label, status=status, side=side, zone=zone,
                 grade=int(rng.integers(0, 3)), detail=detail, drawn=drawn,
                 ambiguous=ambiguous, equivocal=equivocal)


def draw_study(seed: int, study: int) -> tuple[np.ndarray, tuple]:
  """Labels int32 [14] and mentioned findings of one study, from its own generator."""
  rng = np.random.default_rng([seed, 1, study])
  normal = rng.uniform() < NORMAL_RATE
  labels = np.full(len(CHEXPERT_LABELS), cxr_reports.NOT_MENTIONED, np.int32)
  findings = []
  for label, name in enumerate(CHEXPERT_LABELS):
    if name == "No Finding":
      continue
    labels[label] = draw_status(rng, name, normal)
    if labels[label] != cxr_reports.NOT_MENTIONED:
      findings.append(draw_finding(rng, label, int(labels[label])))
  findings = add_differentials(rng, labels, findings)
  sick = any(labels[CHEXPERT_LABELS.index(n)] in (1, -1) for n in PATHOLOGIES)
  labels[cxr_reports.NO_FINDING] = cxr_reports.NOT_MENTIONED if sick else cxr_reports.POSITIVE
  return labels, tuple(findings)


def add_differentials(rng: np.random.Generator, labels: np.ndarray, findings: list) -> list:
  """Turns some plainly reported positives into differentials with an unmentioned partner.

  The partner becomes an uncertain (-1) mention (updated in `labels` in place); both findings
  are then reported by one hedged sentence (cxr_reports.differential_sentence).
  """
  out = []
  for f in findings:
    partners = [CHEXPERT_LABELS.index(n) for n in cxr_reports.DIFFERENTIALS.get(f.name, ())
                if labels[CHEXPERT_LABELS.index(n)] == cxr_reports.NOT_MENTIONED]
    plain = f.status == cxr_reports.POSITIVE and not (f.ambiguous or f.equivocal)
    if plain and partners and rng.uniform() < cxr_reports.DIFFERENTIAL_RATE:
      partner = int(rng.choice(partners))
      labels[partner] = cxr_reports.UNCERTAIN
      other = draw_finding(rng, partner, cxr_reports.UNCERTAIN)
      out.append(dataclasses.replace(f, equivocal=True, partner=partner))
      out.append(dataclasses.replace(other, ambiguous=False, equivocal=True, partner=f.label))
    else:
      out.append(f)
  return sorted(out, key=lambda f: f.label)


@dataclasses.dataclass(frozen=True)
class CxrPlan:
  """Everything but pixels and report text, per study (length-N sequences)."""
  labels: np.ndarray       # int32 [N, 14]
  findings: tuple          # N tuples of cxr_reports.Finding
  patient: np.ndarray      # int64 [N]
  sex: np.ndarray          # object [N]
  age: np.ndarray          # float32 [N]


def plan_dataset(num_examples: int, seed: int) -> CxrPlan:
  """Deterministic patients, studies, labels and findings of N studies."""
  rng = np.random.default_rng([seed, 0])
  counts = []
  while sum(counts) < num_examples:
    counts.append(int(rng.choice(len(STUDIES_PER_PATIENT_PROBS),
                                 p=STUDIES_PER_PATIENT_PROBS)) + 1)
  counts[-1] -= sum(counts) - num_examples
  patient = np.repeat(np.arange(len(counts)), counts)
  sexes = rng.choice(SEXES, size=len(counts))
  base_age = np.clip(np.round(rng.normal(62, 16, len(counts))), 18, 95)
  visit = np.concatenate([np.arange(c) for c in counts])
  studies = [draw_study(seed, i) for i in range(num_examples)]
  return CxrPlan(labels=np.stack([s[0] for s in studies]), findings=tuple(s[1] for s in studies),
                 patient=patient, sex=sexes[patient].astype(object),
                 age=np.minimum(base_age[patient] + visit, 100).astype(np.float32))


def study_id(index: int) -> str:
  return f"s{50000000 + index:08d}"


def patient_id(patient: int) -> str:
  return f"p{10000000 + patient:08d}"


def report_text(plan: CxrPlan, index: int, seed: int) -> str:
  """The report of study `index` (its own generator, independent of the pixels)."""
  rng = np.random.default_rng([seed, 2, index])
  no_finding = plan.labels[index, cxr_reports.NO_FINDING] == cxr_reports.POSITIVE
  return cxr_reports.write_report(list(plan.findings[index]), bool(no_finding), rng).text


def render_example(plan: CxrPlan, index: int, image_size: int, seed: int) -> dict:
  """The full example (features of SyntheticCxr) of study `index` of `plan`."""
  pixels = cxr_rendering.render([seed, 3, index], plan.findings[index], image_size)
  return {
      **pixels,
      "label": plan.labels[index],
      "report": report_text(plan, index, seed),
      "patient_id": patient_id(int(plan.patient[index])),
      "study_id": study_id(index),
      "sex": plan.sex[index],
      "age": np.float32(plan.age[index]),
  }


def stratum(labels: np.ndarray) -> np.ndarray:
  """Split stratum per study: 0 for No Finding, else 1 + index of its rarest positive
  pathology (rare labels are the ones worth spreading), else 14 (only uncertain ones)."""
  rates = np.array([LABEL_RATES.get(n, (1.0,))[0] for n in CHEXPERT_LABELS])
  out = np.full(len(labels), len(CHEXPERT_LABELS), np.int64)
  for i, row in enumerate(labels):
    if row[cxr_reports.NO_FINDING] == cxr_reports.POSITIVE:
      out[i] = 0
    elif (row == cxr_reports.POSITIVE).any():
      positives = np.flatnonzero(row == cxr_reports.POSITIVE)
      out[i] = 1 + positives[np.argmin(rates[positives])]
  return out


def split_indices(plan: CxrPlan, seed: int) -> dict[str, np.ndarray]:
  """64/16/20 split of study indices, grouped by patient, stratified by `stratum`."""
  strata = splits.merge_rare_strata(stratum(plan.labels), min_count=10)
  return splits.grouped_stratified_split(strata, plan.patient, SPLIT_FRACTIONS, seed)


def vocabulary_texts() -> list[str]:
  """Texts covering every word a report can contain (source of the WordPiece vocabulary)."""
  return cxr_reports.vocabulary_texts()


class SyntheticCxrConfig(synthetic_base.SyntheticConfig):
  """Size and seed of a synthetic_cxr build; `name` must identify these values."""
  unit = "studies"


class SyntheticCxr(synthetic_base.SyntheticBuilder):
  """MIMIC-CXR-shaped synthetic radiographs + reports (array_record, no TensorFlow needed)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "A finding changes no pixel outside its ROI mask: Lung Opacity's blob and "
               "Edema's haze fade to zero at their masks' edges (their masks are unchanged) "
               "instead of extending past them, a Fracture's callus and break stay inside its "
               "mask, and a Pneumothorax's mask holds its visceral pleural line.",
  }
  BUILDER_CONFIGS = [
      SyntheticCxrConfig(name="small", num_examples=800, image_size=32,
                         description="800 studies of 32 px (tests, smoke runs)"),
      SyntheticCxrConfig(name="default", num_examples=2000, image_size=64,
                         description="2,000 studies of 64 px"),
      SyntheticCxrConfig(name="large", num_examples=10000, image_size=224,
                         description="10,000 studies of 224 px"),
  ]
  DEFAULT_CONFIG_NAME = "default"

  plan_dataset = staticmethod(plan_dataset)
  split_indices = staticmethod(split_indices)
  render_example = staticmethod(render_example)
  example_key = staticmethod(study_id)

  def _info(self) -> tfds.core.DatasetInfo:
    size, k = self.builder_config.image_size, len(CHEXPERT_LABELS)
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                          encoding="zlib"),
            "roi_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8,
                                             encoding="zlib"),
            "roi_masks": tfds.features.Tensor(shape=(k, size, size), dtype=np.uint8,
                                              encoding="zlib"),
            "label": tfds.features.Tensor(shape=(k,), dtype=np.int32),
            "report": text, "patient_id": text, "study_id": text, "sex": text,
            "age": tfds.features.Scalar(dtype=np.float32),
        }),
        supervised_keys=("image", "label"),
    )
