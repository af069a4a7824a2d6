"""`--mode=shap` on smoke-config checkpoints: field SHAP of the derm concat model checked
against the model called directly (image held fixed, efficiency, background), token SHAP of the
CXR text model's top-3 labels, the files and figures, and config key checks.

The checkpoints hold initialised (untrained) weights saved as the best checkpoint: the runner
needs a checkpoint, not a good model, and training would triple this file's time."""
import json
import os

import numpy as np
import pytest

from jaxmm.data import pipeline
from jaxmm.models.fusion import class_probabilities
from jaxmm.report import shap_figures
from jaxmm.saliency import shap_explainers, shap_runner
from jaxmm.train import loop

PNG = b"\x89PNG\r\n\x1a\n"


def with_shap(config, **values):
  with config.unlocked():
    config.shap = shap_runner.default_config()
  config.shap.update(values)
  return config


@pytest.fixture(scope="module")
def derm(tmp_path_factory, data_dir):
  from tests.conftest import load_smoke_config
  config = load_smoke_config(data_dir, "synthetic_derm", "model=concat")
  config = with_shap(config, num_examples=3, background_size=6)
  workdir = str(tmp_path_factory.mktemp("shap_derm"))
  run, probabilities = checkpointed(config, workdir)
  summary = shap_runner.run_shap(config, workdir)
  return config, workdir, summary, run, probabilities


def checkpointed(config, workdir: str):
  """Saves the config's initialised state as the workdir's best checkpoint (step 1); returns
  the run and its class probabilities function, the model called directly."""
  run = loop.setup_run(config, workdir)
  try:
    state = loop.create_state(run, load_pretrained=False).replace(step=np.int32(1))
    run.checkpointer.save(1, state, {"best_value": None}, best=True)
    run.checkpointer.wait()
  finally:
    run.checkpointer.close()
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def probabilities(batch: dict) -> np.ndarray:
    logits, _ = run.model.apply(variables, batch, train=False)
    return np.asarray(class_probabilities(logits, run.info.multilabel))

  return run, probabilities


def test_field_shap_explains_the_models_own_probabilities(derm):
  _, _, summary, run, probabilities = derm
  fields = shap_runner.load_fields(summary["directory"])
  assert fields["values"].shape == (3, 4, 7) and fields["base_values"].shape == (3, 7)
  assert fields["field_names"].tolist() == ["age", "sex", "localization", "dx_type"]
  assert fields["background_index"].shape == (6,) and str(fields["output"]) == "probability"
  assert int(fields["checkpoint_step"]) == 1 and np.abs(fields["values"]).max() > 1e-4
  inputs, raw = shap_runner.read_split(run, "test", np.arange(3))
  probs = probabilities(inputs)
  # efficiency: base value + field values = the probabilities of an ordinary forward pass
  np.testing.assert_allclose(fields["outputs"], probs, atol=1e-5)
  np.testing.assert_allclose(fields["base_values"] + fields["values"].sum(1), probs, atol=1e-5)
  np.testing.assert_array_equal(fields["predicted"], probs.argmax(1))
  # the base value: example 1's image with each background example's metadata, averaged
  encoder = run.preprocessor.meta_encoder
  source = run.builder.as_data_source("train")
  background = pipeline.stack_examples([{f: source[int(i)][f] for f in encoder.field_names}
                                        for i in fields["background_index"]])
  meta = encoder.transform(background)
  image = np.repeat(inputs["image"][1:2], len(meta), 0)
  np.testing.assert_allclose(fields["base_values"][1],
                             probabilities({"image": image, "meta": meta}).mean(0), atol=1e-5)
  np.testing.assert_array_equal(fields["data"], shap_explainers.metadata_field_codes(encoder,
                                                                                      raw))


def test_a_rerun_gives_the_same_values_and_figures_are_pngs(derm, tmp_path):
  config, workdir, summary, _, _ = derm
  first = shap_runner.load_fields(summary["directory"])
  again = shap_runner.load_fields(shap_runner.run_shap(config, workdir)["directory"])
  for key in first:
    np.testing.assert_array_equal(first[key], again[key], err_msg=key)
  paths = shap_figures.shap_figures(summary["directory"], str(tmp_path), example=1)
  assert [os.path.basename(p) for p in paths] == [
      "fields_summary.png", "fields_bar.png", "fields_waterfall_1.png"]
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == PNG


def test_bad_shap_config_keys_and_models_without_meta_or_text_are_reported(derm, smoke_config,
                                                                           tmp_path):
  config, workdir, _, _, _ = derm
  bad = config.copy_and_resolve_references()
  with bad.shap.unlocked():
    bad.shap.num_exampels = 3
  with pytest.raises(ValueError, match="Did you mean 'num_examples'"):
    shap_runner.run_shap(bad, workdir)
  bad = config.copy_and_resolve_references()
  bad.shap.split = "tset"
  with pytest.raises(ValueError, match="unknown config.shap.split 'tset'"):
    shap_runner.run_shap(bad, workdir)
  image_only = with_shap(smoke_config("synthetic_derm", "model=image"))
  with pytest.raises(ValueError, match=r"modalities are \['image'\]"):
    shap_runner.run_shap(image_only, str(tmp_path))


def test_token_shap_of_the_text_models_top_3_labels(smoke_config, tmp_path):
  config = with_shap(smoke_config("synthetic_cxr", "model=text"), num_examples=2, max_evals=40,
                     text_batch_size=16)
  workdir = str(tmp_path / "run")
  run, probabilities = checkpointed(config, workdir)
  summary = shap_runner.run_shap(config, workdir)
  assert "fields" not in summary
  document = shap_runner.load_tokens(summary["directory"])
  assert document["top_k"] == 3 and len(document["class_names"]) == 14
  inputs, _ = shap_runner.read_split(run, "test", np.arange(2))
  probs = probabilities(inputs)
  for i, record in enumerate(document["examples"]):
    assert record["labels"] == np.argsort(-probs[i], kind="stable")[:3].tolist()
    assert record["label_names"] == [document["class_names"][k] for k in record["labels"]]
    np.testing.assert_allclose(record["scores"], probs[i, record["labels"]], atol=1e-5)
    values = np.asarray(record["values"])
    assert values.shape == (3, len(record["tokens"])) and len(record["tokens"]) > 3
    np.testing.assert_allclose(values.sum(1) + record["base_values"], record["scores"],
                               atol=1e-5)
    assert record["tokens"][0] == "[CLS]" and record["tokens"][-1] == "[SEP]"
    assert "".join(record["tokens"][1:-1]) == record["text"].replace(" ", "")
  paths = shap_figures.shap_figures(summary["directory"], str(tmp_path / "figures"))
  assert [os.path.basename(p) for p in paths] == ["tokens_0.png", "tokens_1.png"]
  with open(paths[0], "rb") as f:
    assert f.read(8) == PNG
  with open(os.path.join(summary["directory"], "tokens.json")) as f:
    assert json.load(f)["mask_token"] == ""
