"""The explanation-evaluation runner's stages on fakes (no training): deletion / insertion rows
(NaN maps, the blurred insertion baseline), combined outputs removed when a rerun has none,
methods without image maps skipped by the image-map stages, and the randomisable model."""
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmm.evaluation import faithfulness, runner
from jaxmm.models.build import build_model

N, H, W, C, K = 2, 6, 6, 3, 3


@pytest.fixture
def linear_run(monkeypatch):
  """A linear image model on fixed images behind the runner's model and data readers:
  (run, images [N, H, W, C], f: images -> logits)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, H, W, C)).astype(np.float32)
  weights = rng.normal(size=(H * W * C, K)).astype(np.float32)
  apply = lambda batch, deltas=None: (batch["image"].reshape(len(batch["image"]), -1) @ weights,
                                      {})
  monkeypatch.setattr(runner, "first_examples", lambda run, split, idx: {"image": jnp.asarray(
      x[np.asarray(idx)])})
  monkeypatch.setattr(runner.model_fns, "linen_apply_fn", lambda model, v, train: apply)
  data = ml_collections.ConfigDict({"image_mean": [0.5] * C, "image_std": [0.25] * C})
  run = types.SimpleNamespace(config=types.SimpleNamespace(data=data),
                              model=types.SimpleNamespace(modalities=("image",)),
                              info=types.SimpleNamespace(multilabel=False))
  return run, x, lambda images: jnp.reshape(images, (len(images), -1)) @ weights


def faithfulness_config(**faith) -> ml_collections.ConfigDict:
  ecfg = runner.default_config()
  ecfg.saliency_methods = ("gradcam",)
  ecfg.faithfulness.update({"num_examples": N, "steps": 4, "chunk_size": 2, **faith})
  return ecfg


def map_data(maps: np.ndarray) -> dict:
  return {"index": np.arange(N), "id": np.array(["img_a", "img_b"]),
          "targets": np.array([0, 1]), "gradcam.raw": maps}


def target_probability(f, images) -> np.ndarray:
  return np.asarray(jax.nn.softmax(f(jnp.asarray(images)), -1))[np.arange(N), [0, 1]]


def test_insertion_starts_from_the_blurred_image_recorded_in_the_row(linear_run):
  run, x, f = linear_run
  ecfg = faithfulness_config()
  maps = np.random.default_rng(1).normal(size=(N, H, W)).astype(np.float32)
  assert ecfg.faithfulness.insertion_blur_sigma == faithfulness.RISE_BLUR_SIGMA
  inputs = runner.faithfulness_inputs(run, None, map_data(maps), ecfg, N, "test")
  blurred = faithfulness.blurred_baseline(jnp.asarray(x), faithfulness.RISE_BLUR_SIGMA)
  np.testing.assert_allclose(inputs[3]["insertion_baseline"], blurred, rtol=1e-6)
  row = runner.faithfulness_row("gradcam", map_data(maps), ecfg, N, *inputs)
  assert row["insertion_blur_sigma"] == faithfulness.RISE_BLUR_SIGMA
  # no pixel inserted yet: the blurred image's score (black's would be another number)
  start = target_probability(f, blurred).mean()
  black = target_probability(f, np.broadcast_to(inputs[3]["baseline"], x.shape)).mean()
  assert row["insertion_curve"][0] == pytest.approx(start, abs=1e-4)
  assert abs(start - black) > 1e-3
  assert row["deletion_curve"][-1] == pytest.approx(black, abs=1e-4)  # deletion: to black


def test_a_changed_blur_sigma_recomputes_the_faithfulness_units(linear_run, tmp_path, capsys):
  run, _, _ = linear_run
  maps = np.random.default_rng(1).normal(size=(N, H, W)).astype(np.float32)
  rows = runner.faithfulness_rows(runner.UnitStore(str(tmp_path), {}), run, None,
                                  map_data(maps), faithfulness_config(), "test")
  again = runner.faithfulness_rows(runner.UnitStore(str(tmp_path), {}), run, None,
                                   map_data(maps), faithfulness_config(insertion_blur_sigma=1.0),
                                   "test")
  assert "settings changed: evaluation.faithfulness.insertion_blur_sigma" in capsys.readouterr().out
  assert [r["insertion_blur_sigma"] for r in rows + again] == [5.0, 5.0, 1.0, 1.0]
  assert rows[0]["insertion_curve"][0] != again[0]["insertion_curve"][0]
  assert runner.faithfulness_baselines(faithfulness_config())["insertion_blur_sigma"] == 5.0


def test_a_non_finite_map_is_named_and_left_out_of_the_faithfulness_means(linear_run):
  run, _, _ = linear_run
  ecfg = faithfulness_config()
  maps = np.random.default_rng(1).normal(size=(N, H, W)).astype(np.float32)
  inputs = runner.faithfulness_inputs(run, None, map_data(maps), ecfg, N, "test")
  per_example = faithfulness.deletion_insertion(inputs[0], inputs[1], jnp.asarray(maps),
                                                inputs[2], **inputs[3])
  broken = maps.copy()
  broken[1, 2, 2] = np.nan
  with pytest.warns(RuntimeWarning, match=r"1 of 2 raw gradcam maps .*\(examples img_b\)"):
    row = runner.faithfulness_row("gradcam", map_data(broken), ecfg, N, *inputs)
  assert row["n"] == 1
  for key in ("deletion_auc", "insertion_auc"):
    assert row[key] == pytest.approx(float(per_example[key][0]), rel=1e-6), key
  np.testing.assert_allclose(row["insertion_curve"],
                             np.asarray(per_example["insertion"][0]).round(4), atol=1e-4)
  with pytest.warns(RuntimeWarning, match="2 of 2"):
    row = runner.faithfulness_row("gradcam", map_data(np.full_like(maps, np.nan)), ecfg, N,
                                  *inputs)
  assert row["n"] == 0 and np.isnan(row["deletion_auc"]) and np.isnan(row["insertion_auc"])
  assert np.isnan(row["deletion_curve"]).all()
  assert runner.faithfulness_row("random", map_data(maps), ecfg, N, *inputs)["n"] == N


# ------------------------------------------------------------------ runs of a metadata-only model

def fake_evaluation(monkeypatch, workdir, data: dict) -> None:
  """run_evaluation on `data` as the saliency output of a metadata-only model (no training,
  no saliency runner): the restored run and the maps are fakes."""
  folder = os.path.join(workdir, "analysis", "saliency", "evaluation_test")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump({"step": 1}, f)
  run = types.SimpleNamespace(model=types.SimpleNamespace(modalities=("meta",)),
                              info=types.SimpleNamespace(class_names=["a", "b"],
                                                         multilabel=False))
  monkeypatch.setattr(runner, "restored_run", lambda config, workdir: (run, {}, 1))
  monkeypatch.setattr(runner, "saliency_maps", lambda config, workdir, ecfg, methods: (
      data, ml_collections.ConfigDict({"output_name": "evaluation_test",
                                       "checkpoint": "best"})))


def meta_only_data(n: int = 6) -> dict:
  """What the saliency runner gives for multimodal_ig of a metadata-only model (no image map),
  with ROI masks and a confounder flag."""
  label = np.arange(n) % 2
  return {"index": np.arange(n), "label": label, "targets": label, "logits": np.eye(2)[label],
          "confounder": np.array([0, 1, 0, 1, 1, 0])[:n], "roi_mask": np.ones((n, 4, 4), bool),
          "multimodal_ig.meta": np.ones((n, 3), np.float32)}


def evaluation(field: str = "confounder", **sections) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"data": {}, "model": {}, "evaluation": {
      "saliency_methods": ("multimodal_ig",), "bootstrap_resamples": 10,
      "confounder": {"field": field}, **sections}})


def test_methods_without_image_maps_are_skipped_by_the_image_map_stages(tmp_path, monkeypatch,
                                                                       capsys):
  # multimodal_ig passes `usable` on a metadata-only model but has no image map: ROI agreement,
  # the confounder examples and the cascading randomisation used to raise a KeyError.
  fake_evaluation(monkeypatch, str(tmp_path), meta_only_data())
  summary = runner.run_evaluation(evaluation(sanity={"methods": ("multimodal_ig",)}),
                                  str(tmp_path))
  out = capsys.readouterr().out
  assert "ROI agreement: skipped multimodal_ig (no normalized image maps" in out
  assert "confounder examples: skipped multimodal_ig" in out
  assert "cascading randomisation: skipped multimodal_ig" in out
  assert [m["method"] for m in summary["methods"]] == ["multimodal_ig"]
  assert summary["methods"][0]["dice"] is None and summary["confounder"]["affected_class"] == "b"
  analysis = tmp_path / "analysis"
  assert not (analysis / "roi_agreement" / "summary.csv").exists()
  with np.load(analysis / "confounder_examples.npz") as examples:
    assert "multimodal_ig.normalized" not in examples.files and len(examples["index"])


def test_a_rerun_without_a_finding_removes_the_older_one(tmp_path, monkeypatch):
  data = {k: v for k, v in meta_only_data().items() if k != "roi_mask"}
  data["multimodal_ig.normalized"] = np.ones((6, 4, 4), np.float32)  # as r3 of the audit
  fake_evaluation(monkeypatch, str(tmp_path), data)
  analysis = tmp_path / "analysis"
  no_sanity = {"num_examples": 0}
  runner.run_evaluation(evaluation(sanity=no_sanity), str(tmp_path))
  assert (analysis / "confounder.json").exists()
  assert (analysis / "confounder_examples.npz").exists()
  summary = runner.run_evaluation(evaluation("no_such_field", sanity=no_sanity), str(tmp_path))
  assert summary["confounder"] is None
  assert not (analysis / "confounder.json").exists()
  assert not (analysis / "confounder_examples.npz").exists()


def test_roi_agreement_without_an_roi_removes_the_older_combined_tables(tmp_path):
  roi_dir = tmp_path / "roi_agreement"
  roi_dir.mkdir()
  for name in ("summary.csv", "group_tests.csv", "agreement.json"):
    (roi_dir / name).write_text("older run")
  data = {k: v for k, v in meta_only_data().items() if k != "roi_mask"}
  data["gradcam.normalized"] = np.ones((6, 4, 4), np.float32)
  ecfg = runner.evaluation_config(evaluation())
  ecfg.saliency_methods = ("gradcam",)
  assert runner.roi_agreement(runner.UnitStore(str(tmp_path), {}), data, ecfg, ["a", "b"],
                              str(roi_dir)) == {}
  assert sorted(os.listdir(roi_dir)) == []


# ------------------------------------------------------------------ cascading randomisation

def test_sanity_rows_count_the_finite_similarities_and_name_the_others(monkeypatch):
  # A map with one NaN pixel used to drop out of the row's mean while the row said n = count.
  model = build_model({"num_classes": 3, "modalities": ("meta",)})
  batch = {"meta": jnp.ones((N, 5)), "image": jnp.asarray(
      np.random.default_rng(2).normal(size=(N, H, W)), jnp.float32)}
  variables = jax.jit(lambda key: model.init(key, batch, train=False))(jax.random.key(0))

  def compiled(method, builder, options, context):
    def fn(v, b, t, key):  # ranks of the image, scaled by the head's (randomised) bias
      scale = 1 + jnp.abs(v["params"]["head"]["logits"]["bias"]).sum()
      return {"raw": (b["image"] * scale).at[1, 0, 0].set(jnp.nan)}
    return fn

  monkeypatch.setattr(runner.methods_lib, "compiled", compiled)
  run = types.SimpleNamespace(model=model)
  scfg = types.SimpleNamespace(options={})
  with pytest.warns(RuntimeWarning, match=r"1 of 2 examples .*\(examples img_b\)"):
    rows = runner.sanity_method_rows(run, "gradcam", scfg, None, 0, N, variables, batch,
                                     jnp.zeros(N, jnp.int32), np.array(["img_a", "img_b"]))
  assert [r["layer"] for r in rows] == ["head/logits", "head/dense_1", "head/dense_0",
                                        "meta/dense_1", "meta/dense_0"]
  for row in rows:
    assert (row["method"], row["n"], row["n_abs"]) == ("gradcam", 1, 1)
    assert row["spearman"] == pytest.approx(1.0)


# ------------------------------------------------------------------ the randomisable model

def test_randomizable_film_draws_a_random_fresh_film_layer():
  # FiLM's Dense starts at zero for training; a zero "fresh" FiLM in the cascading
  # randomisation would be an ablation to the identity modulation, not a randomisation. (That
  # film_zero_init=False draws a random FiLM is tests/models/test_fusion.py's.)
  model = build_model({"num_classes": 3, "modalities": ("image", "meta"), "fusion": "film",
                       "image": {"encoder": "resnet_tiny"}})
  assert model.film_zero_init and model.image.zero_init_last_bn
  fresh = runner.randomizable(model)
  assert not fresh.film_zero_init and not fresh.image.zero_init_last_bn
  concat = build_model({"num_classes": 3, "modalities": ("image", "meta"),
                        "image": {"encoder": "resnet_tiny", "zero_init_last_bn": False}})
  assert runner.randomizable(concat) is concat
  # recorded with the sanity units, so a record from a zero "fresh" FiLM is recomputed
  assert runner.fresh_init(model) == {"zero_init_last_bn": False, "film_zero_init": False}
  assert runner.fresh_init(concat) == {"zero_init_last_bn": False, "film_zero_init": None}


def test_consistency_and_drop_rows_leave_out_undefined_fs_cams():
  """An example whose class has no principal features (absent from the reference split) has a
  NaN FS-CAM (ifa_dataset.without_undefined_fs_cams): it is left out of the FS rows and
  counted, not averaged in (average_increase counted it as "no increase")."""
  rng = np.random.default_rng(0)
  n, h = 6, 4
  raw = rng.uniform(0.1, 1, (n, h, h)).astype(np.float32)
  fs_raw = raw[None] * rng.uniform(0.5, 1, (1, n, h, h)).astype(np.float32)
  fs_raw[0, :2] = np.nan  # examples 0 and 1: their class has no principal features
  logits = rng.normal(size=(n, 3)).astype(np.float32)
  target = np.array([2, 2, 0, 1, 0, 1])
  probs = np.asarray(jax.nn.softmax(logits, -1))[np.arange(n), target]
  masked = np.stack([probs * 0.5, probs * 0.8]).astype(np.float32)
  masked[1, :2] = np.nan
  per = {"raw": raw, "fs_raw": fs_raw, "logits": logits, "target": target,
         "masked_probability": masked}
  selection = types.SimpleNamespace(fractions=(0.1,), alpha=np.ones(3, np.float32),
                                    beta=np.zeros(3, np.float32))
  rows = {r["variant"]: r for r in runner.consistency_rows("gradcam", per, selection, 0.05)}
  assert rows["cam"]["num_skipped"] == 0 and rows["s_cam"]["num_skipped"] == 0
  assert rows["fs_s_cam_top10"]["num_skipped"] == 2
  assert np.isfinite(rows["fs_s_cam_top10"]["r"])
  drops = {r["variant"]: r for r in runner.drop_rows("gradcam", per, selection)}
  assert drops["cam"]["num_skipped"] == 0 and drops["fs_cam_top10"]["num_skipped"] == 2
  assert drops["fs_cam_top10"]["average_drop"] == pytest.approx(20.0, rel=1e-5)
  assert drops["fs_cam_top10"]["average_increase"] == 0.0


def test_confounder_rate_of_the_other_classes_is_pooled_over_their_images():
  # mel: 10 of 10 images with the artefact; nv: 5 of 100; df: 2 of 2. The other classes'
  # share is 7 of 102 images, not the mean of their rates (0.525).
  labels = np.array([0] * 10 + [1] * 100 + [2] * 2)
  flags = np.zeros(112, np.int32)
  flags[:10], flags[10:15], flags[110:] = 1, 1, 1
  ecfg = ml_collections.ConfigDict({"confounder": {"field": "confounder", "method": "gradcam"},
                                    "saliency_methods": (), "maps": "normalized", "seed": 0,
                                    "alpha": 0.05})
  finding = runner.confounder_finding({"label": labels, "confounder": flags}, ecfg, 0,
                                      ["mel", "nv", "df"], {}, {})
  assert finding["other_rate"] == pytest.approx(7 / 102)
  assert "(confounder in 100% of its images, 7% of the other classes')" in (
      runner.confounder_lines(finding))


def test_headline_cases_count_the_cases_with_a_dice():
  """"cases" was the count of the last metric looped over (relevance mass), which is NaN for
  a map without a positive value: 2 cases shown next to a Dice mean over 3."""
  rows = [{"method": "gradcam", "stratification": "all", "metric": metric, "mean": 0.5,
           "ci_low": 0.4, "ci_high": 0.6, "n": n}
          for metric, n in (("dice", 3), ("spearman", 2), ("pointing_game", 3),
                            ("relevance_mass", 2))]
  result = {"roi": {"summaries": rows}, "faithfulness": [], "sanity": [], "ifa": {},
            "split": "test", "checkpoint_step": 1, "num_examples": 3}
  ecfg = ml_collections.ConfigDict({"saliency_methods": ["gradcam"]})
  (row,) = runner.headline(result, ecfg)["methods"]
  assert row["cases"] == 3 and row["dice"] == 0.5
  assert list(row)[:4] == ["method", "dice", "dice_ci", "cases"]
