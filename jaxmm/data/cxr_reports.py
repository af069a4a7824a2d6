"""Templated radiology reports for synthetic_cxr, consistent with CheXpert-style labels.

Labels follow paper 001_02ed271d6d235282.txt: per finding 1 = positive mention, 0 = negated
mention ("no pneumothorax"), -1 = uncertain mention ("possible atelectasis", "cannot exclude
pneumonia"), -2 = not mentioned. A report is "FINDINGS: ... IMPRESSION: ..." with varied
phrasing and filler sentences that name no finding.

The text is a strong but imperfect signal by design:
- equivocal mentions: a share of positive AND of uncertain findings is written with the same
  hedged phrasing ("probable left pleural effusion", "findings likely represent ..."), so the
  text cannot tell 1 from -1 there; the image shows every positive finding but only half of
  the uncertain ones, so it can.
- differentials: a share of positive findings is written as a differential with a plausible
  partner finding ("findings likely represent atelectasis or pneumonia", names in random order);
  the partner is labelled uncertain (-1), so the text is symmetric between a 1 and a -1 while
  the image shows the positive one and only half of the time the partner.
- group phrases: a share of positive findings is described by a phrase that does not say which
  finding of its group it is ("increased density in the right lower zone" may be atelectasis,
  consolidation, lung opacity, pneumonia, a lesion or edema); the image tells them apart (band
  vs blotch vs nodule vs haze).
A joint model therefore beats text alone, and text beats the (noisy, low-resolution) image.
"""
import dataclasses
import re

import numpy as np

CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices")
POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -2
NO_FINDING = CHEXPERT_LABELS.index("No Finding")
SUPPORT_DEVICES = CHEXPERT_LABELS.index("Support Devices")
# Share of positive findings described by their group phrase only.
AMBIGUOUS_RATE = 0.15
# Shares of (non-group-phrase) positive / of uncertain findings written with equivocal phrasing.
EQUIVOCAL_POSITIVE_RATE = 0.4
EQUIVOCAL_UNCERTAIN_RATE = 0.6
# Share of positive findings written as a differential with an unmentioned partner finding.
DIFFERENTIAL_RATE = 0.4
# Partners a finding is commonly confused with (all drawn differently on the image).
DIFFERENTIALS = {
    "Atelectasis": ("Consolidation", "Pneumonia", "Pleural Effusion"),
    "Consolidation": ("Atelectasis", "Pneumonia"),
    "Pneumonia": ("Atelectasis", "Edema"),
    "Edema": ("Pneumonia",),
    "Pleural Effusion": ("Atelectasis",),
    "Cardiomegaly": ("Enlarged Cardiomediastinum",),
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
    "Lung Opacity": ("Atelectasis", "Pneumonia"),
    "Lung Lesion": ("Pneumonia",),
}
# Location-free names, so a differential sentence never reveals which of its two is positive.
SHORT_NAMES = {
    "Atelectasis": "atelectasis", "Consolidation": "consolidation", "Pneumonia": "pneumonia",
    "Edema": "pulmonary edema", "Pleural Effusion": "pleural effusion",
    "Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "mediastinal widening",
    "Lung Opacity": "focal opacity", "Lung Lesion": "pulmonary nodule",
}
DIFFERENTIAL_TEMPLATES = ("Findings likely represent {a} or {b}.", "Probable {a} or {b}.",
                          "This is likely {a} or {b}.", "{A} or {b} is favored.")

# Words that name each finding; a report mentions a label iff one of these occurs in it.
SYNONYMS = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly", "enlarged heart", "enlargement of the cardiac silhouette"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Enlarged Cardiomediastinum": ("mediastinal widening", "widened mediastinum",
                                   "enlarged cardiomediastinum"),
    "Fracture": ("fracture", "fractures"),
    "Lung Lesion": ("nodule", "mass"),
    "Lung Opacity": ("opacity", "opacities", "opacification"),
    "No Finding": (),
    "Pleural Effusion": ("effusion", "effusions"),
    "Pleural Other": ("pleural thickening", "pleural scarring"),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
    "Support Devices": ("endotracheal tube", "nasogastric tube", "central venous catheter",
                        "chest tube", "pacemaker", "support devices", "lines or tubes"),
}
NEGATION_CUES = ("no", "without", "negative for")
EQUIVOCAL_CUES = ("probable", "likely", "favored")
UNCERTAINTY_CUES = ("possible", "cannot exclude", "cannot be excluded", "may represent",
                    "questionable", "suspicious for", "could reflect")
NORMAL_IMPRESSIONS = ("No acute cardiopulmonary process.", "Normal chest radiograph.",
                      "No acute intrathoracic abnormality.")
CLEAR_LUNGS = "The lungs are clear."
FILLERS = (
    "Portable AP view of the chest.", "PA and lateral views of the chest were obtained.",
    "Comparison is made to the prior radiograph.", "The patient is slightly rotated.",
    "Lung volumes are low.", "The trachea is midline.", "The visualized upper abdomen is "
    "unremarkable.", "Evaluation is limited by patient positioning.",
    "Degenerative changes of the thoracic spine are noted.", "Study is compared with the "
    "prior examination.", "Findings were discussed with the referring clinician.")

# Group phrases: say that something is there (and where) without naming the finding.
GROUPS = {
    "parenchymal": ("Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Lung Opacity",
                    "Pneumonia"),
    "cardiac": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "pleural": ("Pleural Effusion", "Pleural Other", "Pneumothorax"),
    "linear": ("Fracture", "Support Devices"),
}
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}
GROUP_TEMPLATES = {
    "parenchymal": ("There is increased density in the {where}.",
                    "An area of increased density is seen in the {where}.",
                    "Abnormal density in the {where}."),
    "cardiac": ("The cardiomediastinal silhouette is prominent.",
                "Prominence of the cardiomediastinal contours."),
    "pleural": ("There is an abnormality of the {side} pleural space.",
                "Abnormal appearance of the {side} pleural surface."),
    "linear": ("A linear density projects over the {side} chest.",
               "There is a linear density over the {side} hemithorax."),
}
POSITIVE_TEMPLATES = ("There is {phrase}.", "{Phrase} is present.", "{Phrase} is again seen.",
                      "Findings are consistent with {phrase}.", "{Phrase} has increased.",
                      "Interval development of {phrase}.")
NEGATIVE_TEMPLATES = ("No {name}.", "There is no {name}.", "No evidence of {name}.",
                      "No {name} is seen.", "Negative for {name}.")
NEGATIVE_PAIR_TEMPLATES = ("No {a} or {b}.", "There is no {a} or {b}.")
UNCERTAIN_TEMPLATES = ("Possible {phrase}.", "Cannot exclude {phrase}.",
                       "{Phrase} cannot be excluded.", "Findings may represent {phrase}.",
                       "Questionable {phrase}.", "Findings are suspicious for {phrase}.",
                       "This could reflect {phrase}.")
EQUIVOCAL_TEMPLATES = ("Probable {phrase}.", "{Phrase} is likely.",
                       "Findings likely represent {phrase}.", "{Phrase} is favored.")
# Names used in negated sentences (short, generic).
NEGATED_NAMES = {
    "Atelectasis": ("atelectasis",), "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("focal consolidation", "consolidation"),
    "Edema": ("pulmonary edema", "edema"),
    "Enlarged Cardiomediastinum": ("mediastinal widening", "widened mediastinum"),
    "Fracture": ("rib fracture", "acute fracture"), "Lung Lesion": ("pulmonary nodule", "mass"),
    "Lung Opacity": ("focal opacity", "opacities"),
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Pleural Other": ("pleural thickening",), "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",), "Support Devices": ("support devices", "lines or tubes"),
}
SEVERITIES = ("mild", "moderate", "severe")
SIZES = ("small", "moderate", "large")
RIBS = ("fourth", "fifth", "sixth", "seventh", "eighth")
ZONES = ("upper", "mid", "lower")
DEVICES = ("endotracheal tube", "nasogastric tube", "central venous catheter", "chest tube",
           "pacemaker")
DEVICE_SENTENCES = {
    "endotracheal tube": ("An endotracheal tube is in standard position.",
                          "The endotracheal tube terminates above the carina."),
    "nasogastric tube": ("A nasogastric tube extends below the diaphragm.",
                         "The nasogastric tube terminates in the stomach."),
    "central venous catheter": (
        "A right internal jugular central venous catheter terminates in the superior vena cava.",
        "The central venous catheter tip is in the low superior vena cava."),
    "chest tube": ("A {side} chest tube is in place.", "The {side} chest tube is unchanged."),
    "pacemaker": ("A left chest wall pacemaker is present with leads in the right heart.",
                  "Pacemaker leads terminate in the right ventricle."),
}


@dataclasses.dataclass(frozen=True)
class Finding:
  """One mentioned finding of a study: what it is, how it is reported, where it is drawn.

  side: "left" | "right" | "bilateral" | "" (patient's side; left appears on the image right).
  zone: "upper" | "mid" | "lower" | "" ; grade: an index into SEVERITIES / SIZES (0..2).
  detail: device name (Support Devices) or rib ordinal (Fracture), else "".
  drawn: whether the image shows it; ambiguous: positive mention by group phrase only;
  equivocal: positive or uncertain mention in the shared hedged phrasing (EQUIVOCAL_TEMPLATES).
  partner: label index of the other finding of its differential sentence, else -1.
  """
  label: int
  status: int
  side: str = ""
  zone: str = ""
  grade: int = 0
  detail: str = ""
  drawn: bool = False
  ambiguous: bool = False
  equivocal: bool = False
  partner: int = -1

  @property
  def name(self) -> str:
    return CHEXPERT_LABELS[self.label]


@dataclasses.dataclass(frozen=True)
class Sentence:
  """A report sentence and the (label, status) mentions it carries."""
  text: str
  mentions: tuple = ()


@dataclasses.dataclass(frozen=True)
class Report:
  """The report text plus its sentences (FINDINGS then IMPRESSION) for verification."""
  text: str
  findings: tuple
  impression: tuple


def _side_prefix(side: str) -> str:
  return {"bilateral": "bilateral ", "": ""}.get(side, side + " ")


def noun_phrase(finding: Finding) -> str:
  """Positive/uncertain noun phrase naming the finding with its side, zone and grade."""
  side, sev, size = finding.side, SEVERITIES[finding.grade], SIZES[finding.grade]
  lobe = f"{side} {finding.zone} lobe"
  phrases = {
      "Atelectasis": ("bibasilar atelectasis" if side == "bilateral"
                      else f"{sev} {side} basilar atelectasis"),
      "Cardiomegaly": f"{sev} cardiomegaly",
      "Consolidation": f"{lobe} consolidation",
      "Edema": f"{sev} pulmonary edema",
      "Enlarged Cardiomediastinum": f"{sev} mediastinal widening",
      "Fracture": f"{side} {finding.detail} rib fracture",
      "Lung Lesion": f"{size} {side} {finding.zone} lung nodule",
      "Lung Opacity": f"{side} {finding.zone} lung opacity",
      "Pleural Effusion": f"{size} {_side_prefix(side)}pleural effusion".replace(
          "bilateral pleural effusion", "bilateral pleural effusions"),
      "Pleural Other": f"{side} pleural thickening",
      "Pneumonia": f"{lobe} pneumonia",
      "Pneumothorax": f"{size} {side} apical pneumothorax",
      "Support Devices": finding.detail,
  }
  return phrases[finding.name]


def _capitalize(text: str) -> str:
  return text[:1].upper() + text[1:]


def _fill(template: str, **values) -> str:
  capitalized = {k[:1].upper() + k[1:]: _capitalize(v) for k, v in values.items()}
  return _capitalize(template.format(**values, **capitalized))


def _where(finding: Finding) -> str:
  """Location words of a group phrase ("right lower zone", "perihilar regions of both lungs")."""
  if finding.name == "Edema":
    return "perihilar regions of both lungs"
  zone = finding.zone or "lower"
  if finding.side in ("bilateral", ""):
    return f"{zone} zones of both lungs"
  return f"{finding.side} {zone} zone"


def positive_sentence(finding: Finding, rng: np.random.Generator) -> str:
  """A sentence reporting the finding as present (by name, or by group phrase if ambiguous)."""
  if finding.ambiguous:
    template = rng.choice(GROUP_TEMPLATES[GROUP_OF[finding.name]])
    side = finding.side if finding.side in ("left", "right") else "right"
    return _fill(str(template), where=_where(finding), side=side)
  if finding.label == SUPPORT_DEVICES:
    template = rng.choice(DEVICE_SENTENCES[finding.detail])
    return _fill(str(template), side=finding.side or "right")
  return _fill(str(rng.choice(POSITIVE_TEMPLATES)), phrase=noun_phrase(finding))


def uncertain_sentence(finding: Finding, rng: np.random.Generator) -> str:
  return _fill(str(rng.choice(UNCERTAIN_TEMPLATES)), phrase=noun_phrase(finding))


def equivocal_sentence(finding: Finding, rng: np.random.Generator) -> str:
  return _fill(str(rng.choice(EQUIVOCAL_TEMPLATES)), phrase=noun_phrase(finding))


def mention_sentence(finding: Finding, rng: np.random.Generator) -> Sentence:
  """The sentence reporting a positive or uncertain finding."""
  if finding.equivocal:
    text = equivocal_sentence(finding, rng)
  elif finding.status == POSITIVE:
    text = positive_sentence(finding, rng)
  else:
    text = uncertain_sentence(finding, rng)
  return Sentence(text, ((finding.label, finding.status),))


def differential_sentence(first: Finding, second: Finding,
                          rng: np.random.Generator) -> Sentence:
  """One hedged sentence naming both findings of a differential, in random order."""
  pair = [first, second]
  rng.shuffle(pair)
  text = _fill(str(rng.choice(DIFFERENTIAL_TEMPLATES)), a=SHORT_NAMES[pair[0].name],
               b=SHORT_NAMES[pair[1].name])
  return Sentence(text, tuple((f.label, f.status) for f in pair))


def mention_sentences(findings: list, rng: np.random.Generator) -> list[Sentence]:
  """Sentences of positive/uncertain findings; a differential pair shares one sentence."""
  by_label = {f.label: f for f in findings}
  out, done = [], set()
  for f in findings:
    if f.status not in (POSITIVE, UNCERTAIN) or f.label in done:
      continue
    if f.partner >= 0:
      out.append(differential_sentence(f, by_label[f.partner], rng))
      done.add(f.partner)
    else:
      out.append(mention_sentence(f, rng))
  return out


def negative_sentences(findings: list, rng: np.random.Generator) -> list[Sentence]:
  """Negated findings, some pairs merged into one sentence ("No pleural effusion or ...")."""
  out, pending = [], list(findings)
  while pending:
    first = pending.pop(0)
    name_a = str(rng.choice(NEGATED_NAMES[first.name]))
    if pending and rng.uniform() < 0.5:
      second = pending.pop(0)
      name_b = str(rng.choice(NEGATED_NAMES[second.name]))
      text = _fill(str(rng.choice(NEGATIVE_PAIR_TEMPLATES)), a=name_a, b=name_b)
      out.append(Sentence(text, ((first.label, NEGATIVE), (second.label, NEGATIVE))))
    else:
      text = _fill(str(rng.choice(NEGATIVE_TEMPLATES)), name=name_a)
      out.append(Sentence(text, ((first.label, NEGATIVE),)))
  return out


def findings_section(findings: list, no_finding: bool,
                     rng: np.random.Generator) -> list[Sentence]:
  """FINDINGS sentences: devices first, then the other mentions, negations, fillers."""
  order = sorted(findings, key=lambda f: (f.label != SUPPORT_DEVICES, f.label))
  out = mention_sentences(order, rng)
  if no_finding and rng.uniform() < 0.5:
    out.append(Sentence(CLEAR_LUNGS, ((NO_FINDING, POSITIVE),)))
  negated = [f for f in order if f.status == NEGATIVE]
  rng.shuffle(negated)
  out += negative_sentences(negated, rng)
  for filler in rng.choice(FILLERS, size=int(rng.integers(1, 3)), replace=False):
    out.insert(int(rng.integers(0, len(out) + 1)), Sentence(str(filler)))
  return out


def impression_section(findings: list, no_finding: bool,
                       rng: np.random.Generator) -> list[Sentence]:
  """IMPRESSION sentences: a normal statement, or up to three key positive/uncertain findings."""
  if no_finding:
    return [Sentence(str(rng.choice(NORMAL_IMPRESSIONS)), ((NO_FINDING, POSITIVE),))]
  key = [f for f in findings if f.status in (POSITIVE, UNCERTAIN) and f.label != SUPPORT_DEVICES]
  return mention_sentences(key, rng)[:3]


def write_report(findings: list, no_finding: bool, rng: np.random.Generator) -> Report:
  """The report of one study from its mentioned findings (status != -2)."""
  body = findings_section(findings, no_finding, rng)
  impression = impression_section(findings, no_finding, rng)
  text = ("FINDINGS: " + " ".join(s.text for s in body) + " IMPRESSION: "
          + " ".join(s.text for s in impression))
  return Report(text=text, findings=tuple(body), impression=tuple(impression))


def mentioned_labels(text: str) -> set[int]:
  """Indices of labels whose synonyms occur (as whole words) in `text`."""
  lower = text.lower()
  return {i for i, name in enumerate(CHEXPERT_LABELS)
          if any(re.search(rf"\b{re.escape(s)}\b", lower) for s in SYNONYMS[name])}


def sentence_statuses(text: str) -> set[int]:
  """Statuses a sentence's cues allow: {-1} uncertainty cue, {1, -1} equivocal cue,
  {0} negation cue, else {1}."""
  lower = text.lower()
  has = lambda cues: any(re.search(rf"\b{c}\b", lower) for c in cues)
  if has(UNCERTAINTY_CUES):
    return {UNCERTAIN}
  if has(EQUIVOCAL_CUES):
    return {POSITIVE, UNCERTAIN}
  if has(NEGATION_CUES):
    return {NEGATIVE}
  return {POSITIVE}


# Words that only appear through noun_phrase / _where formatting.
PHRASE_WORDS = ("left right bilateral bibasilar basilar lobe lung apical pleural pulmonary rib "
                "perihilar regions of both lungs zone zones chest hemithorax")


def vocabulary_texts() -> list[str]:
  """Every word the report generator can emit, as texts (the tokenizer vocabulary source)."""
  string_tuples = [
      NORMAL_IMPRESSIONS, FILLERS, POSITIVE_TEMPLATES, NEGATIVE_TEMPLATES,
      NEGATIVE_PAIR_TEMPLATES, UNCERTAIN_TEMPLATES, EQUIVOCAL_TEMPLATES, DIFFERENTIAL_TEMPLATES,
      tuple(SHORT_NAMES.values()), SEVERITIES, SIZES, RIBS, ZONES, DEVICES, NEGATION_CUES,
      UNCERTAINTY_CUES, EQUIVOCAL_CUES, (PHRASE_WORDS, CLEAR_LUNGS, "FINDINGS: IMPRESSION:"),
      CHEXPERT_LABELS]
  for table in (SYNONYMS, NEGATED_NAMES, GROUP_TEMPLATES, DEVICE_SENTENCES):
    string_tuples += list(table.values())
  return [re.sub(r"\{[^}]*\}", " ", s) for strings in string_tuples for s in strings]
