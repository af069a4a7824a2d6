r"""Synthetic MIMIC-CXR-like chest X-rays + radiology reports, 14 CheXpert labels (paper 001).

Variants: image (grayscale ResNet-18), text (BERT-style encoder, [CLS]), joint (512 + text
embedding concatenated -> 2-layer head). `smoke` shrinks everything to seconds; `freeze` gives
each variant paper 001's frozen layers for that model: image freezes conv1, bn1, layer1 and
layer2 (ResNet stages <= 2), text the whole text encoder, joint nothing (the paper froze no
layer of its multimodal model).

Where this synthetic stand-in differs from paper 001 (configs/mimic_cxr.py is the paper's
preset): every variant uses the joint head (Dense 512 -> ReLU -> dropout 0.5 -> Dense), so the
image variant's classifier has a hidden layer where the paper's is one linear layer, and
head.hidden is unused; uncertain (-1) labels are left out of the loss (uncertain_policy
"ignore") where the paper clamps them to 0, because the generator draws only half of the
uncertain findings into the image, which makes -1 neither a positive nor a negative; pixels are
scaled to [-2, 2] (image_mean 0.5, image_std 0.25) where the paper scales to [0, 1]: kept as
the synthetic tests and earlier runs of this config were made (mimic_cxr.py uses [0, 1]).

  python -m jaxmm.main --config=configs/synthetic_cxr.py --workdir=runs/cxr --mode=pipeline
  python -m jaxmm.main --config=configs/synthetic_cxr.py:model=text --workdir=runs/cxr_text
  python -m jaxmm.main --config=configs/synthetic_cxr.py:model=joint,smoke --workdir=/tmp/s
"""
import ml_collections
from ml_collections import config_dict

from jaxmm import workflow
from jaxmm.train import config_lib

CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                   "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                   "Pneumothorax", "Support Devices")
# Paper 001 trains each model with its own frozen layers: the image-only ResNet-18 up to and
# including layer2, the text-only CXR-BERT whole ("as is"), the multimodal model none.
FROZEN_BY_PAPER_001 = {"image": ("image/(conv1|bn1|layer1|layer2)/",), "text": ("text/",),
                       "joint": ()}


def variants(freeze: bool) -> ml_collections.ConfigDict:
  """Each variant also sets optimizer.freeze (config_lib.select_variant): with `freeze`, paper
  001's frozen layers for that model (FROZEN_BY_PAPER_001), so `freeze` holds for every
  variant of the pipeline."""
  out = {"image": ("image",), "text": ("text",), "joint": ("image", "text")}
  return ml_collections.ConfigDict({
      name: {"modalities": modalities, "fusion": "joint",
             "freeze": FROZEN_BY_PAPER_001[name] if freeze else ()}
      for name, modalities in out.items()})


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "synthetic_cxr",
      "builder_config": "default",
      "builder_overrides": config_lib.builder_overrides(),  # num_examples, image_size, seed
      "data_dir": config_dict.placeholder(str),
      "prefetch_to_device": 2,  # batches copied to the devices ahead of the step
      "label_key": "label",
      "label_names": CHEXPERT_LABELS,
      "multilabel": True,
      "use_meta": False,
      "meta_fields": (),
      "use_text": True,
      "text_key": "report",
      "max_text_len": 96,
      "image_mean": (0.5,),
      "image_std": (0.25,),
      "batch_size": 32,
      "eval_batch_size": 128,
      "num_threads": 2,
      "keep_fields": (),
  })


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "modalities": ("image", "text"),
      "fusion": "joint",
      "num_classes": -1,
      "multilabel": True,
      "dtype": "float32",
      # init_from: local pretrained weights (jaxmm/train/pretrained.py); None = random init.
      "image": {"encoder": "resnet18", "in_channels": 1, "width": 64,
                "zero_init_last_bn": True, "dropout": 0.0,
                "init_from": config_dict.placeholder(str)},
      "text": {"encoder": "bert", "size": "tiny", "vocab_size": -1, "max_len": 128,
               "type_vocab_size": 2, "dropout": 0.1, "use_pooler": False,
               "init_from": config_dict.placeholder(str)},
      "head": {"hidden": (128, 64), "dropout": 0.5, "late_weights": None, "joint_hidden": 512},
  })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, model="joint", smoke=False, freeze=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.variants = variants(arg.freeze)
  config.data = data_config()
  config.model = model_config()
  config.optimizer = {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 1e-4,
                      "schedule": "cosine", "grad_clip_norm": 1.0,
                      "freeze": ()}
  config.train = config_lib.train_defaults()
  config.train.update({
      "num_epochs": 10.0, "warmup_epochs": 0.5, "log_every_steps": 20,
      "eval_every_epochs": 1.0, "checkpoint_every_epochs": 1.0,
      "class_weights": None, "uncertain_policy": "ignore",
      # patience: evaluations without improvement before stopping; 0 = no early stopping.
      "early_stopping": {"metric": "roc_auc", "mode": "max", "patience": 4, "min_delta": 0.0},
      "final_eval_splits": ("validation", "test"), "progress": True, "async_checkpoints": True,
  })
  config.eval = {"splits": ("test",)}
  config.pipeline = {"variants": ("image", "text", "joint"),
                     # the main job ends with saliency overlays of this variant's test images and
                     # the evaluation of its explanations (config.evaluation)
                     "evaluate_explanations": True,
                     "saliency_variant": "joint", "saliency_examples": 8,
                     # then scikit-learn baselines, SHAP, fairness tests and report.html
                     "baselines": False, "shap": True, "fairness": False, "report": True}
  workflow.add_analysis_sections(config)
  config_lib.select_variant(config, arg.model)
  if arg.smoke:
    workflow.shrink_analysis_sections(config)
    config.data.builder_config = "small"
    config.data.builder_overrides.update({"num_examples": 160, "image_size": 32})
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    config.data.max_text_len = 64
    config.model.image.encoder = "resnet_tiny"
    config_lib.apply_smoke_schedule(config.train, steps=3)
  return config
