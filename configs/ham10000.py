r"""HAM10000 (the real release, paper 000): image-only, metadata-only, concat and late fusion.

The release needs a manual download (terms of use): put it, in its official layout
(HAM10000_metadata.csv, HAM10000_images_part_1/, HAM10000_images_part_2/ and optionally
HAM10000_segmentations_lesion_tschandl/; see jaxmm/data/ham10000.py), in a folder and pass it
as config.data.manual_dir (or put it in $JAXMM_MANUAL_DIR/ham10000). It is read once, when the
dataset is first built into $JAXMM_DATA_DIR (default ~/jaxmm_datasets):

  python -m jaxmm.main --config=configs/ham10000.py --workdir=runs/ham_concat \
      --config.data.manual_dir=~/data/HAM10000
  JAXMM_MANUAL_DIR=~/data python -m jaxmm.main --config=configs/ham10000.py \
      --workdir=runs/ham --mode=pipeline
  python -m jaxmm.main --config=configs/ham10000.py:model=late,binary --workdir=runs/ham_late \
      --config.data.manual_dir=~/data/HAM10000 --config.model.image.init_from=~/w/resnet50.pth

Variants (`model=`): image, meta, concat (early fusion), late (decision-level fusion, below);
`binary` is malignant (mel, bcc, akiec) vs benign instead of the 7 classes; `smoke` runs a few
steps at 32 px with tiny encoders. Bad rows of the release stop the build with their CSV line;
skip and count them with --config.data.builder_overrides.skip_bad_rows=True.

What follows paper 000: ResNet-50 image encoder (`model.image.init_from`: local torchvision /
Hugging Face weights, the paper's are ImageNet's; None = random init), metadata as age
(training-median imputed, z-scored) + one-hot sex / localization / dx_type, fusion MLP 128-64
with dropout 0.3, class-weighted cross-entropy, Adam 1e-3, batch 64, 64/16/20 splits grouped
by lesion_id.

What does not: the paper extracts fixed ImageNet-pretrained ResNet-50 embeddings (2048-d,
classification head removed), compresses them with PCA (95 % of the variance) and trains its
FusionMLP on those embeddings concatenated with the encoded metadata, for 10 epochs, seed 42.
jaxmm's variants train end to end instead: the ResNet-50 is trained with the head at Adam 1e-3
(optimizer.freeze is empty), the metadata goes through a metadata MLP (64, 64; dropout 0.1)
before fusion (fused width 2048 + 64), with no PCA, for up to 30 epochs with early stopping
on validation macro-F1 (patience 6), seed 0. The paper's models on fixed embeddings (the
scikit-learn classifiers, raw and with PCA, and its late fusion) are what --mode=baselines fits
(jaxmm.baselines), on the embeddings of the `pipeline.baselines_variant` checkpoint (here the
image variant's ResNet-50 as trained by jaxmm, not the untouched ImageNet one).
`late` is a jointly trained decision-level fusion: one network, a Dense head per modality,
trained on the cross-entropy of the log of the mean of the heads' probabilities, so each head
learns alongside the other; the paper's late fusion averages the probabilities of two
separately trained unimodal models (its image and metadata logistic regressions), which is the
late-fusion row of --mode=baselines.
"""
import ml_collections
from ml_collections import config_dict

from jaxmm import workflow
from jaxmm.train import config_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def variants() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "image": {"modalities": ("image",), "fusion": "concat"},
      "meta": {"modalities": ("meta",), "fusion": "concat"},
      "concat": {"modalities": ("image", "meta"), "fusion": "concat"},
      "late": {"modalities": ("image", "meta"), "fusion": "late"},
  })


def builder_overrides() -> ml_collections.ConfigDict:
  """Unset (None) keeps the builder config's value (jaxmm.data.manual_base.ManualConfig)."""
  return ml_collections.ConfigDict({"image_size": config_dict.placeholder(int),
                                    "skip_bad_rows": config_dict.placeholder(bool),
                                    "seed": config_dict.placeholder(int)})


def data_config(arg) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "ham10000",
      "builder_config": "default",  # 224 px, strict
      "builder_overrides": builder_overrides(),
      "data_dir": config_dict.placeholder(str),  # None: $JAXMM_DATA_DIR, else ~/jaxmm_datasets
      "prefetch_to_device": 2,  # batches copied to the devices ahead of the step
      # None: $JAXMM_MANUAL_DIR/ham10000, else <data_dir>/manual/ham10000
      "manual_dir": config_dict.placeholder(str),
      "label_key": "malignant" if arg.binary else "label",
      "label_names": ("benign", "malignant") if arg.binary else (),
      "multilabel": False,
      "use_meta": True,
      "meta_fields": ("age", "sex", "localization", "dx_type"),
      "use_text": False,
      "text_key": "",
      "max_text_len": 0,
      "image_mean": IMAGENET_MEAN,
      "image_std": IMAGENET_STD,
      "batch_size": 64,
      "eval_batch_size": 256,
      "num_threads": 2,
      "keep_fields": (),
  })


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "modalities": ("image", "meta"),
      "fusion": "concat",
      "num_classes": -1,  # filled from the data
      "multilabel": False,
      "dtype": "float32",
      "image": {"encoder": "resnet50", "in_channels": 3, "width": config_dict.placeholder(int),
                "zero_init_last_bn": True, "dropout": 0.0,
                "init_from": config_dict.placeholder(str)},
      "meta": {"encoder": "mlp", "hidden": (64, 64), "dropout": 0.1},
      "head": {"hidden": (128, 64), "dropout": 0.3, "late_weights": None, "joint_hidden": 512},
  })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, model="concat", smoke=False, binary=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.variants = variants()
  config.data = data_config(arg)
  config.model = model_config()
  config.optimizer = {"name": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
                      "schedule": "constant", "grad_clip_norm": config_dict.placeholder(float),
                      "freeze": ()}
  config.train = config_lib.train_defaults()
  config.train.update({
      "num_epochs": 30.0, "warmup_epochs": 0.0, "log_every_steps": 50,
      "eval_every_epochs": 1.0, "checkpoint_every_epochs": 1.0,
      "class_weights": "balanced", "uncertain_policy": "ignore",
      # patience: evaluations without improvement before stopping; 0 = no early stopping.
      "early_stopping": {"metric": "macro_f1", "mode": "max", "patience": 6, "min_delta": 0.0},
      "final_eval_splits": ("validation", "test"), "progress": True, "async_checkpoints": True,
  })
  config.eval = {"splits": ("test",)}
  config.pipeline = {"variants": ("image", "meta", "concat", "late"),
                     # the main job ends with saliency overlays of this variant's test images and
                     # the evaluation of its explanations (config.evaluation)
                     "evaluate_explanations": True,
                     "saliency_variant": "concat", "saliency_examples": 8,
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
    config.model.image.encoder = "resnet_tiny"
    config_lib.apply_smoke_schedule(config.train, steps=3)
  return config
