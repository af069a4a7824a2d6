"""Bad batches fail before the model sees them: images of the wrong size or channel count and
NaN / inf in float inputs raise errors naming the field, the examples (ids) and the shapes or
the count; the errors carry those as attributes so the training loop can add the step."""
import dataclasses
import pickle

import numpy as np
import pytest

from jaxmm.data import pipeline


@pytest.fixture
def derm(smoke_config):
  """(config, builder, preprocessor, raw batch of 4 training records) of the smoke synthetic
  derm dataset (32 px RGB, image_id per example; built once per session)."""
  config = smoke_config("synthetic_derm")
  builder = pipeline.load_builder(config.data)
  preprocessor = pipeline.fit_preprocessor(config.data, builder, None)
  fields = pipeline.raw_fields(config.data, preprocessor)
  source = builder.as_data_source("train")
  raw = pipeline.stack_examples([{k: source[i][k] for k in fields} for i in range(4)])
  return config, builder, preprocessor, raw


def test_preprocessor_knows_the_configured_image_shape_and_reads_ids(derm):
  config, _, preprocessor, raw = derm
  assert preprocessor.image_shape == (32, 32, 3)
  assert preprocessor.id_field == "image_id"
  assert "image_id" in pipeline.raw_fields(config.data, preprocessor)
  batch = preprocessor(raw)
  assert batch["image"].shape == (4, 32, 32, 3) and np.isfinite(batch["image"]).all()
  assert batch["meta"].shape == (4, preprocessor.meta_encoder.dim)


def test_image_of_the_wrong_size_names_examples_and_shapes(derm):
  _, _, preprocessor, raw = derm
  ids = [f"image_id {v}" for v in raw["image_id"]]
  bad = dict(raw, image=np.zeros((4, 450, 600, 3), np.uint8))
  with pytest.raises(pipeline.ImageShapeMismatch) as error:
    preprocessor(bad)
  assert str(error.value) == (
      f"images of examples 0 ({ids[0]}), 1 ({ids[1]}), 2 ({ids[2]}), 3 ({ids[3]}) of the "
      f"batch are 450x600x3, the config expects 32x32x3 (config.data.builder_overrides."
      f"image_size=32, 3 channel(s) in synthetic_derm)")
  assert error.value.field == "image" and error.value.positions == (0, 1, 2, 3)
  assert error.value.ids == tuple(ids)


def test_grayscale_image_in_an_rgb_task_is_refused(derm):
  _, _, preprocessor, raw = derm
  bad = dict(raw, image=np.zeros((4, 32, 32, 1), np.uint8))
  with pytest.raises(ValueError, match=r"are 32x32x1, the config expects 32x32x3"):
    preprocessor(bad)


def test_model_channels_are_checked_against_the_dataset_at_setup(derm):
  config, builder, _, _ = derm
  with pytest.raises(ValueError, match=r"config.model.image.in_channels is 1 but synthetic_derm's "
                                       r"images are 32x32x3 \(3 channel\(s\)\); set "
                                       r"--config.model.image.in_channels=3"):
    pipeline.fit_preprocessor(config.data, builder, None, image_channels=1)
  preprocessor = pipeline.fit_preprocessor(config.data, builder, None, image_channels=3)
  assert preprocessor.image_origin.endswith("config.model.image.in_channels=3")


def test_records_of_different_shapes_name_the_odd_one_when_stacked(derm):
  _, builder, _, raw = derm
  source = builder.as_data_source("train")
  records = [{"image": source[i]["image"], "image_id": source[i]["image_id"]} for i in range(3)]
  records[2]["image"] = np.zeros((450, 600, 3), np.uint8)
  with pytest.raises(pipeline.ImageShapeMismatch,
                     match=r"field 'image' of example 2 \(image_id " + raw["image_id"][2] +
                           r"\) of the batch is 450x600x3, while example 0 is 32x32x3"):
    pipeline.stack_examples(records)


def test_a_wrong_image_fails_the_training_batches_with_its_ids(derm):
  config, builder, preprocessor, _ = derm
  wrong = pipeline.Preprocessor(config.data, preprocessor.meta_encoder, None, (64, 64, 3),
                                "test", "image_id")
  batches = pipeline.train_batches(builder.as_data_source("train"), wrong, global_batch_size=4,
                                   seed=0, num_threads=1)
  with pytest.raises(pipeline.ImageShapeMismatch, match=r"are 32x32x3, the config expects "
                                                        r"64x64x3 \(test\)") as error:
    next(batches)
  assert len(error.value.ids) == 4 and error.value.ids[0].startswith("image_id ")


def test_nan_in_images_names_field_examples_and_count(derm):
  _, _, preprocessor, raw = derm
  image = raw["image"].astype(np.float32)
  image[2, 0, 0, 1] = np.nan
  image[3, 5, 5] = np.inf
  with pytest.raises(pipeline.NonFiniteInput) as error:
    preprocessor(dict(raw, image=image))
  ids = [f"image_id {v}" for v in raw["image_id"]]
  assert str(error.value).startswith(
      f"non-finite input 'image': 4 value(s) (1 NaN, 3 inf) in examples 2 ({ids[2]}), "
      f"3 ({ids[3]}) of the batch; check config.data.image_mean / image_std")
  assert (error.value.field, error.value.positions, error.value.count) == ("image", (2, 3), 4)
  assert error.value.ids == (ids[2], ids[3])


def test_nan_in_the_encoded_metadata_is_named(derm):
  config, _, preprocessor, raw = derm
  broken = dataclasses.replace(preprocessor.meta_encoder, age_mean=float("nan"))
  with pytest.raises(pipeline.NonFiniteInput, match=r"non-finite input 'meta': 4 value\(s\) "
                                                    r"\(4 NaN, 0 inf\) in examples 0 .*"
                                                    r"metadata_encoder.json") as error:
    pipeline.Preprocessor(config.data, broken, None)(raw)
  assert error.value.positions == (0, 1, 2, 3)


def test_bad_batch_errors_take_the_step_and_survive_pickling(derm):
  _, _, preprocessor, raw = derm
  image = raw["image"].astype(np.float32)
  image[1] = np.nan
  with pytest.raises(pipeline.NonFiniteInput) as caught:
    preprocessor(dict(raw, image=image))
  error = caught.value
  at_step = error.at("step 12")
  assert isinstance(at_step, pipeline.NonFiniteInput) and isinstance(at_step, ValueError)
  assert str(at_step) == f"step 12: {error}"
  assert (at_step.field, at_step.positions, at_step.ids, at_step.count) == (
      error.field, error.positions, error.ids, error.count) and error.count == 32 * 32 * 3
  copy = pickle.loads(pickle.dumps(at_step))
  assert type(copy) is pipeline.NonFiniteInput and str(copy) == str(at_step)
  assert copy.ids == error.ids and copy.count == error.count


def test_finite_check_is_silent_on_large_finite_values_and_integers():
  pipeline.check_finite(np.full((2, 3), 3e38, np.float32), "meta")  # the sum overflows
  pipeline.check_finite(np.array([[1, 2]], np.int32), "text_ids")
  with pytest.raises(pipeline.NonFiniteInput, match=r"'x': 1 value\(s\) \(0 NaN, 1 inf\) in "
                                                    r"example 1 of the batch$"):
    pipeline.check_finite(np.array([[0.0], [-np.inf]]), "x")


@pytest.mark.parametrize("key,value,message", [
    ("label_key", "lable", "config.data.label_key names 'lable', which is not a field of "
                           "synthetic_derm's records; its fields: ['age', "),
    ("label_key", "lable", "Did you mean 'label'?"),
    ("meta_fields", ("age", "sexe"), "config.data.meta_fields names 'sexe'"),
    ("keep_fields", ("roi_mask", "confounder_msk"), "Did you mean 'confounder_mask'?"),
])
def test_a_data_field_the_records_lack_fails_before_the_dataset_is_built(
    smoke_config, tmp_path, key, value, message):
  config = smoke_config("synthetic_derm")
  with config.data.unlocked():
    config.data[key] = value
    config.data.data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError) as error:
    pipeline.load_builder(config.data)
  assert message in str(error.value)
  assert not list((tmp_path / "data").rglob("*.array_record*"))  # nothing was prepared


def test_text_key_is_checked_only_when_text_is_used(smoke_config, tmp_path):
  config = smoke_config("synthetic_derm")
  with config.data.unlocked():
    config.data.text_key = "report"
    config.data.data_dir = str(tmp_path / "data")
  assert not config.data.use_text
  pipeline.check_fields(config.data, pipeline.configured_builder(config.data))
  with config.data.unlocked():
    config.data.use_text = True
  with pytest.raises(ValueError, match="config.data.text_key names 'report'"):
    pipeline.configured_builder(config.data)
