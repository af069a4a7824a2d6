r"""ISIC 2020 melanoma, benign vs malignant (paper 002): its small CNN, or a ResNet-50.

The challenge's training set needs a manual download: put train.csv and jpeg/train/ (see
jaxmm/data/isic2020.py) in a folder and pass it as config.data.manual_dir (or put it in
$JAXMM_MANUAL_DIR/isic2020). It is read once, when the dataset is first built:

  python -m jaxmm.main --config=configs/isic2020.py --workdir=runs/isic_cnn \
      --config.data.manual_dir=~/data/isic2020
  python -m jaxmm.main --config=configs/isic2020.py:encoder=resnet --workdir=runs/isic_resnet \
      --config.data.manual_dir=~/data/isic2020 --config.model.image.init_from=~/w/resnet50.pth

Paper 002's setup: the six-conv CNN (`small_cnn` with dropout 0.25 after each block, then
flatten -> one Dense(2): head.hidden=(), 292,002 trainable parameters as the paper's table) on
32 x 32 RGB images in [0, 1], binary softmax, early stopping on the validation loss
(train.early_stopping metric "loss", mode "min"); `encoder=resnet` swaps in a ResNet-50 at
224 px with ImageNet normalisation and the fusion MLP head 128-64, dropout 0.3
(`model.image.init_from`: local pretrained weights, None = random init). The
paper balanced its subsample by drawing; on the full, 1.8 % malignant release the loss is
class-weighted ("balanced") instead. Splits are 64/16/20 grouped by patient_id. `smoke` runs a
few steps at 32 px with tiny encoders.
"""
import ml_collections
from ml_collections import config_dict

from jaxmm import workflow
from jaxmm.train import config_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODERS = {  # arg -> (image encoder, builder config, image mean, image std)
    "cnn": ("small_cnn", "px32", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "resnet": ("resnet50", "default", IMAGENET_MEAN, IMAGENET_STD),
}


def variants() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"image": {"modalities": ("image",), "fusion": "concat"}})


def builder_overrides() -> ml_collections.ConfigDict:
  """Unset (None) keeps the builder config's value (jaxmm.data.manual_base.ManualConfig)."""
  return ml_collections.ConfigDict({"image_size": config_dict.placeholder(int),
                                    "skip_bad_rows": config_dict.placeholder(bool),
                                    "seed": config_dict.placeholder(int)})


def data_config(encoder: str) -> ml_collections.ConfigDict:
  _, builder_config, mean, std = ENCODERS[encoder]
  return ml_collections.ConfigDict({
      "name": "isic2020",
      "builder_config": builder_config,
      "builder_overrides": builder_overrides(),
      "data_dir": config_dict.placeholder(str),
      "prefetch_to_device": 2,  # batches copied to the devices ahead of the step
      # None: $JAXMM_MANUAL_DIR/isic2020, else <data_dir>/manual/isic2020
      "manual_dir": config_dict.placeholder(str),
      "label_key": "label",
      "label_names": (),
      "multilabel": False,
      "use_meta": False,
      "meta_fields": ("age", "sex", "localization"),
      "use_text": False,
      "text_key": "",
      "max_text_len": 0,
      "image_mean": mean,
      "image_std": std,
      "batch_size": 32,
      "eval_batch_size": 256,
      "num_threads": 2,
      "keep_fields": (),
  })


def head_config(encoder: str) -> dict:
  """The classifier on the encoder's features (fusion.FusionMLP).

  cnn: paper 002's table ends flatten (2048) -> dense_1 Dense(2), 292,002 trainable parameters
  in all: hidden=() is that one Dense. Its dropout layers (dropout_1..3, `model.image.dropout`)
  sit inside the encoder, the last before the flatten, so the linear head drops nothing
  (dropout 0; a nonzero one would drop the flattened features). resnet: paper 000's fusion MLP.
  """
  if encoder == "cnn":
    return {"hidden": (), "dropout": 0.0, "late_weights": None, "joint_hidden": 512}
  return {"hidden": (128, 64), "dropout": 0.3, "late_weights": None, "joint_hidden": 512}


def model_config(encoder: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "modalities": ("image",),
      "fusion": "concat",
      "num_classes": -1,  # filled from the data
      "multilabel": False,
      "dtype": "float32",
      "image": {"encoder": ENCODERS[encoder][0], "in_channels": 3,
                "width": config_dict.placeholder(int), "zero_init_last_bn": True,
                "dropout": 0.25, "init_from": config_dict.placeholder(str)},
      "head": head_config(encoder),
  })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, model="image", encoder="cnn", smoke=False)
  if arg.encoder not in ENCODERS:
    raise ValueError(f"unknown encoder {arg.encoder!r}; valid: {sorted(ENCODERS)}."
                     f"{config_lib.closest(arg.encoder, ENCODERS)}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.variants = variants()
  config.data = data_config(arg.encoder)
  config.model = model_config(arg.encoder)
  config.optimizer = {"name": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
                      "schedule": "constant", "grad_clip_norm": config_dict.placeholder(float),
                      "freeze": ()}
  config.train = config_lib.train_defaults()
  config.train.update({
      "num_epochs": 500.0, "warmup_epochs": 0.0, "log_every_steps": 50,
      "eval_every_epochs": 1.0, "checkpoint_every_epochs": 1.0,
      "class_weights": "balanced", "uncertain_policy": "ignore",
      # patience: evaluations without improvement before stopping; 0 = no early stopping.
      "early_stopping": {"metric": "loss", "mode": "min", "patience": 10, "min_delta": 0.0},
      "final_eval_splits": ("validation", "test"), "progress": True, "async_checkpoints": True,
  })
  config.eval = {"splits": ("test",)}
  config.pipeline = {"variants": ("image",),
                     # the main job ends with saliency overlays of this variant's test images and
                     # the evaluation of its explanations (config.evaluation)
                     "evaluate_explanations": True,
                     "saliency_variant": "image", "saliency_examples": 8,
                     # then scikit-learn baselines, SHAP, fairness tests and report.html
                     "baselines": True, "baselines_variant": "image", "shap": True, "fairness": True,
                     "report": True}
  workflow.add_analysis_sections(config)
  config_lib.select_variant(config, arg.model)
  if arg.smoke:
    workflow.shrink_analysis_sections(config)
    config.data.builder_overrides.image_size = 32
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    if arg.encoder == "resnet":
      config.model.image.encoder = "resnet_tiny"
    config_lib.apply_smoke_schedule(config.train, steps=3)
  return config
