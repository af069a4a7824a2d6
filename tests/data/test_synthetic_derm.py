"""synthetic_derm: determinism, masks, confounder, metadata, lesion grouping, frequencies."""
import numpy as np
import pytest

from jaxmm.data import builders
from jaxmm.data import metadata
from jaxmm.data import synthetic_derm as sd

N, SIZE = 120, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory, read_records):
  builder = builders.get_builder("synthetic_derm", config="small", num_examples=N,
                                 image_size=SIZE, data_dir=str(tmp_path_factory.mktemp("a")))
  builders.prepare(builder)
  return builder, read_records(builder, "image_id")


def test_custom_config_name_and_predefined_configs(built):
  builder, records = built
  assert builder.builder_config.name == f"n{N}_px{SIZE}_seed0"
  assert len(records) == N
  configs = {c.name: (c.num_examples, c.image_size) for c in sd.SyntheticDerm.BUILDER_CONFIGS}
  assert configs == {"small": (1200, 32), "default": (3000, 64), "large": (10015, 224)}


def test_two_builds_in_different_dirs_are_identical(built, tmp_path, read_records,
                                                    same_records):
  _, records = built
  other = builders.get_builder("synthetic_derm", config=sd.SyntheticDermConfig.custom(N, SIZE),
                               data_dir=str(tmp_path))
  builders.prepare(other)
  same_records(records, read_records(other, "image_id"))


def test_shapes_masks_and_confounder_consistency(built):
  _, records = built
  flags = []
  for key, r in records.items():
    assert r["image"].shape == (SIZE, SIZE, 3) and r["image"].dtype == np.uint8
    roi, marks = r["roi_mask"], r["confounder_mask"]
    assert roi.shape == marks.shape == (SIZE, SIZE)
    assert set(np.unique(roi)) <= {0, 1} and set(np.unique(marks)) <= {0, 1}
    assert roi.sum() > 0, key
    assert not (roi & marks).any(), key
    assert marks.any() == bool(r["confounder"]), key
    # Ruler pixels are dark, the lesion differs from the surrounding skin.
    if marks.any():
      assert r["image"][marks > 0].mean() < r["image"][(marks == 0) & (roi == 0)].mean()
    flags.append(int(r["confounder"]))
  assert 0 < sum(flags) < len(flags)


def test_labels_metadata_and_ids(built):
  _, records = built
  for r in records.values():
    label = int(r["label"])
    assert 0 <= label < 7
    assert int(r["malignant"]) == int(sd.CLASS_NAMES[label] in sd.MALIGNANT_CLASSES)
    age = float(r["age"])
    assert np.isnan(age) or (0 <= age <= 90 and age % 5 == 0)
    assert r["sex"].decode() in metadata.SEXES
    assert r["localization"].decode() in metadata.LOCALIZATIONS
    assert r["dx_type"].decode() in metadata.DX_TYPES
  encoder = metadata.MetadataEncoder.fit(
      [{k: r[k] for k in metadata.FIELD_NAMES} for r in records.values()], strict=True)
  assert encoder.dim == 24


def test_lesions_share_class_and_metadata_and_stay_in_one_split(built):
  _, records = built
  by_lesion = {}
  for r in records.values():
    by_lesion.setdefault(r["lesion_id"], []).append(r)
  assert len(by_lesion) < len(records)  # some lesions have several images
  for images in by_lesion.values():
    first = images[0]
    for r in images[1:]:
      for field in ("label", "sex", "localization", "dx_type", "split"):
        assert r[field] == first[field]
      np.testing.assert_array_equal(r["age"], first["age"])
      assert not np.array_equal(r["image"], first["image"])
      colour = lambda x: x["image"][x["roi_mask"] > 0].mean(0)
      assert np.abs(colour(r) - colour(first)).max() < 12  # same lesion, similar look


def test_split_fractions_near_64_16_20():
  plan = sd.plan_dataset(3000, 0)
  parts = sd.split_indices(plan, 0)
  sizes = np.array([len(parts[k]) for k in ("train", "validation", "test")]) / 3000
  np.testing.assert_allclose(sizes, [0.64, 0.16, 0.20], atol=0.015)
  lesion_sets = [set(plan.lesion[idx]) for idx in parts.values()]
  assert sum(len(s) for s in lesion_sets) == len(set().union(*lesion_sets))


def test_class_frequencies_lesions_and_confounder_rates_at_ham_size():
  plan = sd.plan_dataset(10015, 0)
  freq = np.bincount(plan.label, minlength=7) / len(plan.label) * 100
  np.testing.assert_allclose(freq, sd.CLASS_FREQUENCIES, atol=0.02)
  assert 7000 < len(np.unique(plan.lesion)) < 7900  # HAM10000: 7,470 lesions
  rates = [plan.confounder[plan.label == c].mean() for c in range(7)]
  np.testing.assert_allclose(rates, sd.RULER_RATES, atol=0.06)
  assert np.isnan(plan.age).mean() < 0.015
  assert set(plan.dx_type) <= set(metadata.DX_TYPES)


def test_plan_and_render_are_deterministic_functions_of_seed():
  a, b = sd.plan_dataset(200, 5), sd.plan_dataset(200, 5)
  np.testing.assert_array_equal(a.label, b.label)
  np.testing.assert_array_equal(a.appearance, b.appearance)
  x, y = sd.render_example(a, 17, 64, 5), sd.render_example(b, 17, 64, 5)
  for k in ("image", "roi_mask", "confounder_mask"):
    np.testing.assert_array_equal(x[k], y[k])
  c = sd.plan_dataset(200, 6)
  assert not np.array_equal(a.label, c.label)


def test_signal_design_image_meta_complementary():
  """Latent-level check of the designed signal: logistic regression on the image's latent
  appearance (+ ruler) vs the encoded metadata vs both (macro-F1, class-balanced)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import f1_score
  plan = sd.plan_dataset(12000, 1)
  parts = sd.split_indices(plan, 1)
  train, test = np.r_[parts["train"], parts["validation"]], parts["test"]
  fields = {k: getattr(plan, k) for k in metadata.FIELD_NAMES}
  encoder = metadata.MetadataEncoder.fit({k: v[train] for k, v in fields.items()})
  image = np.c_[np.eye(7)[plan.appearance], plan.confounder]
  meta = encoder.transform(fields)
  scores = {}
  for name, x in (("image", image), ("meta", meta), ("both", np.c_[image, meta])):
    clf = LogisticRegression(class_weight="balanced", max_iter=2000).fit(x[train], plan.label[train])
    scores[name] = f1_score(plan.label[test], clf.predict(x[test]), average="macro")
  assert 0.45 < scores["image"] < 0.70, scores
  assert 0.25 < scores["meta"] < 0.42, scores
  assert scores["both"] > scores["image"] + 0.07, scores
