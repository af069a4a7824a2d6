"""Mass on the artefact (evaluation.confounder): each image with the artefact is compared with a
control image of its own class (the same mask on both maps, a paired test), so maps that differ
only between classes do not read as using the artefact."""
import numpy as np

from jaxmm.evaluation import confounder, runner

H = 16


def class_dependent_maps(seed: int = 0, n: int = 400):
  """Maps that ignore the artefact: diffuse for class 1, central for class 0; the artefact (a
  left-border ruler) is in about 50% of class 1 and 5% of class 0."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  flags = rng.uniform(size=n) < np.where(labels == 1, 0.5, 0.05)
  yy, xx = np.mgrid[:H, :H]
  ruler = np.zeros((H, H), bool)
  ruler[:, :3] = True
  masks = np.where(flags[:, None, None], ruler, False)
  centre = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8.0)
  maps = np.where(labels[:, None, None] == 1, 0.5 + 0.5 * rng.uniform(size=(n, H, H)),
                  centre[None] + 0.05 * rng.uniform(size=(n, H, H))).astype(np.float32)
  return maps, masks, flags, labels


def test_maps_that_depend_only_on_the_class_show_no_mass_on_the_artefact():
  """Controls from every class gave mass 0.18 vs control 0.10, p = 3e-19."""
  maps, masks, flags, labels = class_dependent_maps()
  result = confounder.mass_on_artefact(maps, masks, flags, labels, seed=0)
  assert result["test"] == "ttest_rel" and result["n"] == flags.sum()
  assert abs(result["mass"] - result["control_mass"]) < 0.01
  assert result["p"] > 0.05
  assert result["pooled_classes"] == [] and result["replaced_classes"] == []


def test_controls_share_the_class_and_are_drawn_without_replacement_when_enough():
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
  flags = np.array([1, 1, 0, 0, 0, 1, 1, 0, 1, 1], bool)
  with_c, control, drawn = confounder.control_pairs(flags, labels, seed=3)
  np.testing.assert_array_equal(with_c, [0, 1, 5, 6, 8, 9])
  assert not flags[control].any()
  # class 0: two distinct controls of its three; class 1: one image without it for two
  # (with replacement); class 2: none without it, drawn from every class
  np.testing.assert_array_equal(labels[control[:4]], [0, 0, 1, 1])
  assert len(set(control[:2].tolist())) == 2
  assert drawn == {"pooled_classes": [2], "replaced_classes": [1]}
  text = confounder.describe_controls(drawn, ["nv", "mel", "bcc"])
  assert text == ("same class, without replacement (with replacement in mel: fewer images "
                  "without the confounder than with it); from every class for bcc (no image "
                  "of the class without the confounder)")
  again = confounder.control_pairs(flags, labels, seed=3)[1]
  np.testing.assert_array_equal(again, control)  # fixed by the seed


def test_the_finding_records_the_test_and_how_controls_were_drawn():
  maps, masks, flags, labels = class_dependent_maps(n=120)
  data = {"label": labels, "confounder": flags.astype(int), "confounder_mask": masks,
          "gradcam.normalized": maps}
  ecfg = runner.default_config()
  ecfg.saliency_methods = ("gradcam",)
  finding = runner.confounder_finding(data, ecfg, 1, ["nv", "mel"], {}, {})
  row = finding["methods"][0]
  assert row["mass_test"] == "ttest_rel"
  assert row["mass_controls"] == "same class, without replacement"
  lines = runner.confounder_lines(finding).splitlines()
  assert "same-class control (paired p)" in lines[1]
  assert not any(line.startswith("mass on artefact controls") for line in lines)
  flags[labels == 0] = True  # class 0 has no image without the artefact: pooled, and said so
  data["confounder"], data["confounder_mask"] = flags.astype(int), np.where(
      flags[:, None, None], masks.any(0), False)
  finding = runner.confounder_finding(data, ecfg, 1, ["nv", "mel"], {}, {})
  assert "from every class for nv" in finding["methods"][0]["mass_controls"]
  assert "mass on artefact controls: same class" in runner.confounder_lines(finding)
