"""Every config file loads, every variant of it runs a smoke step; bad names list valid ones."""
import glob
import os
import subprocess
import sys

import ml_collections
import pytest

import fixture_trees
from jaxmm.train import config_lib, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
# Configs of the real (manually downloaded) datasets run on generated fixture trees.
FIXTURE_TREES = {
    "ham10000": lambda root: fixture_trees.make_ham10000(root, n=60),
    "isic2020": lambda root: fixture_trees.make_isic2020(root, n=60),
    "mimic_cxr": lambda root: fixture_trees.make_mimic_cxr(root, n_subjects=24),
}
# A real-dataset config runs a full smoke step for the variants that exercise each of its
# encoders and its fusion once; its other variants (the same modules, run here or by the
# synthetic configs) are set up on the fixture tree without training (data, model shapes,
# optimizer), which keeps the suite's time budget (a full smoke step compiles for ~13 s).
FULL_SMOKE = {"ham10000": ("meta", "concat"), "isic2020": ("image",),
              "mimic_cxr": ("text", "joint")}


@pytest.fixture(scope="module")
def manual_dirs(tmp_path_factory):
  """Factory: the fixture tree of a real dataset config (written once per module), or None."""
  made = {}

  def get(name: str):
    if name in FIXTURE_TREES and name not in made:
      made[name] = str(tmp_path_factory.mktemp(f"manual_{name}"))
      FIXTURE_TREES[name](made[name])
    return made.get(name)
  return get


def all_variants():
  for path in CONFIG_FILES:
    config = config_lib.load_config_file(path)
    for variant in config.variants:
      yield os.path.basename(path)[:-3], variant


def test_there_are_configs_for_both_datasets():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  assert {"synthetic_derm", "synthetic_cxr"} <= names
  assert set(FIXTURE_TREES) <= names  # the papers' real datasets


@pytest.mark.parametrize("name,variant", list(all_variants()))
def test_config_variant_runs_a_smoke_step(smoke_config, manual_dirs, tmp_path, name, variant):
  config = smoke_config(name, f"model={variant}")
  if name in FIXTURE_TREES:
    config.data.manual_dir = manual_dirs(name)
    if variant not in FULL_SMOKE[name]:
      assert_sets_up(config, str(tmp_path))
      return
  config.train.num_steps = 1
  config.train.eval_every_steps = 1
  config.train.checkpoint_every_steps = 1
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["final_step"] == 1
  headline = "roc_auc" if config.data.multilabel else "macro_f1"
  assert headline in results["test"]


def assert_sets_up(config, workdir: str) -> None:
  """Data, preprocessing, model (abstract init) and optimizer of `config` set up."""
  from jaxmm.models.fusion import BATCH_KEYS
  run = loop.setup_run(config, workdir, record_run=False)
  try:
    assert run.info.split_sizes["train"] >= config.data.batch_size
    batch = loop.sample_batch(run.preprocessor, run.builder)
    assert {k for m in config.model.modalities for k in BATCH_KEYS[m]} <= set(batch)
    shapes = loop.init_variables_shape(run.model, batch)
    assert set(config.model.modalities) <= set(shapes["params"])
  finally:
    run.checkpointer.close()


def test_isic_resnet_encoder_sets_up(smoke_config, manual_dirs, tmp_path):
  config = smoke_config("isic2020", "encoder=resnet")
  config.data.manual_dir = manual_dirs("isic2020")
  assert (config.model.image.encoder, config.data.builder_config) == ("resnet_tiny", "default")
  assert_sets_up(config, str(tmp_path))


def test_config_docstrings_hold_a_command():
  for path in CONFIG_FILES:
    with open(path) as f:
      assert "python -m jaxmm.main --config=configs/" in f.read(), path


def test_unknown_variant_lists_valid_ones():
  with pytest.raises(ValueError, match=r"valid variants: \['concat', 'film', 'image', 'late', 'meta'\]"):
    config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_derm.py") + ":model=concatt")


def test_a_variant_whose_modalities_are_a_string_is_refused():
  """tuple("image") split it into letters, failing later with "unknown modality 'i'"."""
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_derm.py"))
  with config.unlocked():  # as a config file that writes the string would build it
    config.variants = ml_collections.ConfigDict({"image": {"modalities": "image",
                                                           "fusion": "concat"}})
  with pytest.raises(ValueError, match=r"config.variants.image.modalities must be a tuple of "
                                       r"names, e.g. \('image',\), got the string 'image'"):
    config_lib.select_variant(config, "image")


def test_unknown_config_argument_suggests_closest():
  with pytest.raises(ValueError, match="Did you mean 'smoke'"):
    config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_derm.py") + ":smok")


def main_cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxmm.main", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=300)


def test_cli_misspelt_override_lists_valid_keys(tmp_path):
  out = main_cli("--config=configs/synthetic_derm.py:smoke", f"--workdir={tmp_path}",
                 "--config.model.fusionn=late")
  assert out.returncode != 0
  assert "config.model has no key 'fusionn'" in out.stderr
  assert "Did you mean 'fusion'?" in out.stderr and "'modalities'" in out.stderr


def test_cli_unknown_mode_lists_valid_modes(tmp_path):
  out = main_cli("--config=configs/synthetic_derm.py:smoke", f"--workdir={tmp_path}",
                 "--mode=trian")
  assert out.returncode != 0 and "pipeline" in out.stderr and "train" in out.stderr


def test_cxr_freeze_keeps_paper_001_layers_fixed(smoke_config, tmp_path):
  # The image-only model is the one whose ResNet paper 001 froze up to layer2 (its joint model
  # froze nothing: test_cxr_variants_freeze_what_paper_001_froze_for_each_model).
  import jax
  import numpy as np
  from jaxmm.train import checkpointing
  config = smoke_config("synthetic_cxr", "model=image,freeze")
  config.model.image.encoder = "resnet18"
  config.model.image.width = 8
  config.train.num_steps = 2
  run = loop.setup_run(config, str(tmp_path))
  try:
    start = jax.device_get(loop.create_state(run).params)
  finally:
    run.checkpointer.close()
  loop.train_and_evaluate(config, str(tmp_path))
  run = loop.setup_run(config, str(tmp_path))
  try:
    end = jax.device_get(run.checkpointer.restore(
        checkpointing.abstract_like(loop.create_state(run)))[0].params)
  finally:
    run.checkpointer.close()
  assert "text" not in start
  for name in ("conv1", "bn1", "layer1", "layer2"):
    jax.tree.map(np.testing.assert_array_equal, start["image"][name], end["image"][name])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         start["image"]["layer3"], end["image"]["layer3"]))
  assert any(changed)


def test_real_dataset_configs_follow_their_papers():
  load = lambda spec: config_lib.load_config_file(os.path.join(REPO, "configs", spec))
  ham = load("ham10000.py:model=late,binary")
  assert (ham.model.image.encoder, ham.optimizer.name, ham.optimizer.learning_rate,
          ham.data.batch_size, ham.train.class_weights) == ("resnet50", "adam", 1e-3, 64,
                                                             "balanced")
  assert (ham.model.fusion, ham.data.label_key, ham.model.head.hidden) == ("late", "malignant",
                                                                           (128, 64))
  isic = load("isic2020.py")
  assert (isic.model.image.encoder, isic.data.builder_config) == ("small_cnn", "px32")
  assert (isic.train.early_stopping.metric, isic.train.early_stopping.mode) == ("loss", "min")
  assert load("isic2020.py:encoder=resnet").model.image.encoder == "resnet50"
  mimic = load("mimic_cxr.py")
  assert (mimic.model.image.encoder, mimic.model.image.in_channels, mimic.model.text.size,
          mimic.model.head.joint_hidden, mimic.model.head.dropout) == ("resnet18", 1, "base",
                                                                       512, 0.5)
  assert (mimic.optimizer.name, mimic.optimizer.learning_rate, mimic.data.batch_size,
          mimic.train.num_epochs, mimic.train.uncertain_policy) == ("adamw", 1e-5, 32, 10.0,
                                                                    "zeros")
  # paper 001 sec. 2: "normalized pixel values to [0, 1]" (it was [-2, 2]: mean 0.5, std 0.25)
  assert (mimic.data.image_mean, mimic.data.image_std) == ((0.0,), (1.0,))
  for config in (ham, isic, mimic):
    assert config.data.manual_dir is None
    assert config.model.image.init_from is None
  assert mimic.model.text.init_from is None


@pytest.mark.parametrize("spec", ["mimic_cxr.py", "synthetic_cxr.py:freeze"])
def test_cxr_variants_freeze_what_paper_001_froze_for_each_model(spec):
  # Paper 001 froze the image-only ResNet-18 up to layer2 and used CXR-BERT as is, but trained
  # its multimodal model "except no layers were frozen" (sec. 3): the joint variant (the
  # default) froze 91 % of the model before. synthetic_cxr's variants had no freeze entry once:
  # --mode=pipeline with `freeze` gave its image variant the text patterns too.
  from jaxmm import workflow
  config = config_lib.load_config_file(os.path.join(REPO, "configs", spec))
  assert config.variant == "joint" and config.optimizer.freeze == ()
  assert workflow.variant_config(config, "joint").optimizer.freeze == ()
  assert workflow.variant_config(config, "image").optimizer.freeze == (
      "image/(conv1|bn1|layer1|layer2)/",)
  assert workflow.variant_config(config, "text").optimizer.freeze == ("text/",)
  unfrozen = config_lib.load_config_file(os.path.join(REPO, "configs", spec.split(":")[0]) +
                                         ":freeze=false")
  for variant in ("image", "text", "joint"):
    assert workflow.variant_config(unfrozen, variant).optimizer.freeze == ()


def abstract_variables(config: ml_collections.ConfigDict, num_classes: int, batch: dict):
  """build_model(config.model) with num_classes, and its variables' shapes for `batch`."""
  import functools
  import jax
  from jaxmm.models import build
  config.model.num_classes = num_classes
  model = build.build_model(config.model)
  return model, jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               batch)


def test_isic_cnn_is_paper_002s_292002_parameter_model():
  # Paper 002 sec. 6.2: flatten (2048) -> dense_1 Dense(2), "Trainable number of parameters:
  # 292,002". The concat head added an MLP 2048 -> 128 -> 64 -> 2: 558,562 parameters.
  import jax
  import numpy as np
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "isic2020.py"))
  _, shapes = abstract_variables(config, 2, {"image": np.zeros((2, 32, 32, 3), np.float32)})
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == 292_002
  assert shapes["params"]["head"]["logits"]["kernel"].shape == (2048, 2)
  assert (config.model.head.hidden, config.model.head.dropout) == ((), 0.0)
  assert config.model.image.dropout == 0.25  # the table's dropout_1..3, inside the encoder
  resnet = config_lib.load_config_file(os.path.join(REPO, "configs", "isic2020.py:encoder=resnet"))
  assert (resnet.model.head.hidden, resnet.model.head.dropout) == ((128, 64), 0.3)


def test_mimic_image_variant_uses_paper_001s_dropout_in_training_only():
  # Paper 001 sec. 4: "Both models also used a dropout of 0.5". The image-only model's linear
  # head (head.hidden=()) never applied head.dropout: train-mode logits did not depend on the
  # dropout key.
  import jax
  import numpy as np
  config = config_lib.load_config_file(os.path.join(REPO, "configs",
                                                    "mimic_cxr.py:model=image,smoke"))
  assert (config.model.fusion, config.model.head.hidden, config.model.head.dropout) == (
      "concat", (), 0.5)
  batch = {"image": np.random.RandomState(0).uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)}
  model, _ = abstract_variables(config, 14, batch)
  variables = jax.jit(lambda key: model.init(key, batch, train=False))(jax.random.key(0))
  train = jax.jit(lambda key: model.apply(variables, batch, train=True, rngs={"dropout": key},
                                          mutable=["batch_stats"])[0][0])
  a, b = train(jax.random.key(1)), train(jax.random.key(2))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
  np.testing.assert_array_equal(a, train(jax.random.key(1)))
  evaluate = lambda key: model.apply(variables, batch, train=False, rngs={"dropout": key})[0]
  np.testing.assert_array_equal(evaluate(jax.random.key(1)), evaluate(jax.random.key(2)))


def test_early_stopping_on_validation_loss_keeps_the_lowest():
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "isic2020.py"))
  config.train.early_stopping.patience = 2
  record = {"best_value": None, "best_step": None, "bad_evals": 0, "stopped": False}
  improved = []
  for step, loss in enumerate((0.9, 0.7, 0.8, 0.6, 0.65, 0.61), 1):
    record, better = loop.early_stopping_update(config, record, loss, step)
    improved.append(better)
  assert improved == [True, True, False, True, False, False]
  assert (record["best_value"], record["best_step"], record["stopped"]) == (0.6, 4, True)


def parsed(spec: str, *overrides: str) -> ml_collections.ConfigDict:
  """The config absl builds from `--config=configs/<spec>` and `--config.x=y` overrides, as
  jaxmm.main defines the flag."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["main", f"--config={os.path.join(REPO, 'configs', spec)}", *overrides]
  values = flags.FlagValues()
  # The override flags are defined from the argv at definition time.
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("spec", ["synthetic_derm.py", "synthetic_derm.py:smoke",
                                  "mimic_cxr.py", "synthetic_cxr.py:smoke"])
def test_patience_is_an_int_the_command_line_sets_and_zero_turns_off(spec):
  assert parsed(spec, "--config.train.early_stopping.patience=3").train.early_stopping.patience == 3
  off = parsed(spec, "--config.train.early_stopping.patience=0").train.early_stopping
  assert off.patience == 0
  assert not loop.early_stopping_update(ml_collections.ConfigDict({"train": {
      "early_stopping": off}}), {"best_value": 0.9, "best_step": 1, "bad_evals": 99,
                                 "stopped": False}, 0.1, 2)[0]["stopped"]


def test_none_for_patience_on_the_command_line_says_to_pass_zero():
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_derm.py"))
  with pytest.raises(ValueError, match=r"patience is an int field and cannot be None \(0 turns "
                                       r"early stopping off\)"):
    config_lib.check_override_paths(config, ["--config.train.early_stopping.patience=None"])


@pytest.mark.parametrize("text", ["None", "none"])
def test_class_weights_none_on_the_command_line_turns_weighting_off(text):
  import types
  config = parsed("synthetic_derm.py:smoke", f"--config.train.class_weights={text}")
  assert config.train.class_weights == text  # absl types it by the field's value, a string
  loop.check_class_weights(config.train.class_weights)
  info = types.SimpleNamespace(multilabel=False, num_classes=7)
  # Unweighted: the train split's labels (read for 'balanced' weights) are never asked for.
  loop.make_loss(config, info, lambda: pytest.fail("class weights were computed"))


def test_preflight_reads_the_config_given_with_a_space(tmp_path):
  from jaxmm import main
  spec = os.path.join(REPO, "configs", "synthetic_derm.py") + ":smoke"
  for argv in (["main", f"--config={spec}"], ["main", "--config", spec]):
    with pytest.raises(ValueError, match="config.optimizer has no key 'learning_rat'"):
      main.preflight(argv + [f"--workdir={tmp_path}", "--config.optimizer.learning_rat=1e-3"])


def test_preflight_refuses_a_config_file_that_does_not_exist(tmp_path):
  # ml_collections reads the file at the config's first use: --mode=report (which reads the
  # workdir's own config) ended with rc 0, other modes with a traceback after start-up.
  from jaxmm import main
  for overrides in ([], ["--config.seed=1"]):
    with pytest.raises(ValueError, match=r"--config: no config file 'configs/nope.py' \(paths "
                                         r"are relative to the current directory"):
      main.preflight(["main", "--config=configs/nope.py:smoke", f"--workdir={tmp_path}",
                      "--mode=report", *overrides])


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_a_main_job_variant_resumes_under_its_model_argument(path):
  # --mode=pipeline trains DIR/<variant> with variant_config; the README then runs single
  # modes on DIR/<variant> with `:model=<variant>`: the trained-model settings must agree, or
  # a training run there would be refused as another model.
  import json
  from jaxmm import workflow
  # The caches of its outputs (saliency shards, evaluation units, embeddings) are keyed on
  # the same settings, so single modes there reuse what the main job computed.
  from jaxmm.train import checkpointing
  settings = lambda config: config_lib.model_settings(json.loads(config.to_json_best_effort()))
  for smoke in ("", ",smoke"):
    main_job = config_lib.load_config_file(path + (":smoke" if smoke else ""))
    for variant in main_job.variants:
      single = config_lib.load_config_file(f"{path}:model={variant}{smoke}")
      trained = workflow.variant_config(main_job, variant)
      assert settings(trained) == settings(single), variant
      assert checkpointing.config_hash(trained) == checkpointing.config_hash(single), variant
