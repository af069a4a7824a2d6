"""Labels outside the task fail at setup (training split) or per batch, naming the example."""
import numpy as np
import pytest

from jaxmm.data import pipeline
from jaxmm.train import loop


def test_multiclass_label_out_of_range_names_row_and_id():
  info = pipeline.TaskInfo(2, ["benign", "malignant"], False, {})
  pipeline.check_labels(np.array([0, 1, 1]), info, "here")
  with pytest.raises(ValueError, match=r"here: label 6 of example 2 \(lesion_id L7\) is outside "
                                       r"0\.\.1 \(the task has 2 classes"):
    pipeline.check_labels(np.array([0, 1, 6]), info, "here", ["lesion_id L1", "L2", "lesion_id L7"])


def test_multilabel_values_and_shape_are_checked():
  info = pipeline.TaskInfo(3, ["a", "b", "c"], True, {})
  pipeline.check_labels(np.array([[1, 0, -1], [-2, 1, 0]]), info, "here")
  with pytest.raises(ValueError, match=r"label \[1, 2, 0\] of example 1 is outside 1 / 0 / -1"):
    pipeline.check_labels(np.array([[1, 0, -1], [1, 2, 0]]), info, "here")
  with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \[N, 3\]"):
    pipeline.check_labels(np.array([[1, 0], [0, 1]]), info, "here")


def test_setup_refuses_labels_beyond_the_configured_classes(smoke_config, tmp_path):
  # A 0/1 label field with one class name configured: a config mistake that would otherwise
  # train on one-hot rows of zeros for every malignant example.
  config = smoke_config("synthetic_derm", "model=meta,binary")
  loop.setup_run(config, str(tmp_path / "ok"), record_run=False).checkpointer.close()
  config.data.label_names = ("benign",)
  with pytest.raises(ValueError, match=r"the training split of synthetic_derm: label 1 of "
                                       r"example \d+ is outside 0\.\.0"):
    loop.setup_run(config, str(tmp_path / "bad"), record_run=False)
