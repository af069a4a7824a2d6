r"""MIMIC-CXR-JPG radiographs + reports, 14 CheXpert labels: paper 001's image, text, joint models.

The release needs credentialed PhysioNet access: put MIMIC-CXR-JPG 2.x (the three
mimic-cxr-2.0.0-*.csv files and files/) plus the reports of MIMIC-CXR (mimic-cxr-reports.zip,
unzipped into the same files/ tree) in one folder, as released (jaxmm/data/mimic_cxr.py), and
pass it as config.data.manual_dir (or put it in $JAXMM_MANUAL_DIR/mimic_cxr). It is read once,
when the dataset is first built:

  python -m jaxmm.main --config=configs/mimic_cxr.py --workdir=runs/mimic_joint \
      --config.data.manual_dir=~/physionet/mimic-cxr-jpg \
      --config.model.image.init_from=~/w/resnet18.pth \
      --config.model.text.init_from=~/w/BiomedVLP-CXR-BERT-specialized
  JAXMM_MANUAL_DIR=~/physionet python -m jaxmm.main --config=configs/mimic_cxr.py \
      --workdir=runs/mimic --mode=pipeline
  python -m jaxmm.main --config=configs/mimic_cxr.py:model=image,split=grouped \
      --workdir=runs/mimic_image --config.data.manual_dir=~/physionet/mimic-cxr-jpg

Paper 001's setup: images at 224 px with pixel values in [0, 1] (image_mean 0, image_std 1),
grayscale ResNet-18 (1-channel conv1); BERT-base-sized CXR-BERT whose [CLS] vector (768) is
concatenated with the image's 512 features -> 2-layer head (512 hidden, dropout 0.5); the
image-only model's classifier is one linear layer 512 -> 14 (`image`: concat fusion with no
hidden layer; its dropout 0.5, paper 001 sec. 4's "both models also used a dropout of 0.5", is
applied to the 512 features before that layer, fusion.FusionMLP), the text-only model's an MLP
on [CLS] (`text`: the same 2-layer head); masked BCE over the 14 labels (blank = -2 ignored;
uncertain -1 clamped to 0, as the paper's torch.clamp(targets, 0, 1)); AdamW 1e-5, batch 32,
10 epochs. Frozen parameters follow the paper per variant (`freeze`, default on): `image`
freezes conv1, bn1, layer1 and layer2 (the paper trains layer3, layer4 and the head); `text`
freezes the whole text encoder (CXR-BERT "used as is"; its head is trained); `joint` freezes
nothing (sec. 3: trained "under similar conditions to the ResNet-18 model, except no layers
were frozen"). freeze=false trains every parameter of every variant. `init_from` loads local
pretrained weights (None = random init); with a text `init_from` its Hugging Face directory's
tokenizer is used, otherwise a WordPiece vocabulary built from the training reports.
Arguments: `model=image|text|joint`, `freeze`, `split=official|grouped`, `smoke` (a few
steps, 32 px, tiny encoders).

Where jaxmm differs from paper 001: the paper split a random subsample of 10,850 datapoints
(image, report, labels) 70/20/10 into train / validation / test; here `split=official` uses
MIMIC-CXR-JPG's official split of the whole release and `split=grouped` a 64/16/20 split
grouped by subject, with no subsample. Keeping only frontal (PA/AP) images is jaxmm's
choice, not stated in the paper (--config.data.builder_overrides.views=... changes it).
Saliency explains the top-1 predicted label by default; the paper explains the top-3 labels
(--config.saliency.target=top_k --config.saliency.top_k=3). The test split is scored with
the best-validation-AUC checkpoint, not the one after epoch 10.
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
  """Each variant also sets optimizer.freeze (config_lib.select_variant): paper 001's frozen
  layers for that model (FROZEN_BY_PAPER_001), or none when freeze is off. Paper 001 (sec. 3)
  projects the image-only model's 512 features "to 14 outputs using a linear layer": concat
  fusion with head.hidden=() is that one Dense; its text-only model passes [CLS] "to a
  multi-layer perceptron classifier" and its multimodal model has a 2-layer head: the joint
  head."""
  out = {"image": (("image",), "concat"), "text": (("text",), "joint"),
         "joint": (("image", "text"), "joint")}
  return ml_collections.ConfigDict({
      name: {"modalities": modalities, "fusion": fusion,
             "freeze": FROZEN_BY_PAPER_001[name] if freeze else ()}
      for name, (modalities, fusion) in out.items()})


def builder_overrides() -> ml_collections.ConfigDict:
  """Unset (None) keeps the builder config's value (jaxmm.data.mimic_cxr.MimicCxrConfig)."""
  return ml_collections.ConfigDict({"image_size": config_dict.placeholder(int),
                                    "skip_bad_rows": config_dict.placeholder(bool),
                                    "seed": config_dict.placeholder(int),
                                    "split": config_dict.placeholder(str),
                                    "views": config_dict.placeholder(tuple)})


def data_config(arg) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "mimic_cxr",
      "builder_config": "grouped" if arg.split == "grouped" else "default",
      "builder_overrides": builder_overrides(),
      "data_dir": config_dict.placeholder(str),
      "prefetch_to_device": 2,  # batches copied to the devices ahead of the step
      # None: $JAXMM_MANUAL_DIR/mimic_cxr, else <data_dir>/manual/mimic_cxr
      "manual_dir": config_dict.placeholder(str),
      "label_key": "label",
      "label_names": CHEXPERT_LABELS,
      "multilabel": True,
      "use_meta": False,
      "meta_fields": (),
      "use_text": True,
      "text_key": "report",
      "max_text_len": 256,
      # paper 001 sec. 2: "normalized pixel values to [0, 1]"
      "image_mean": (0.0,),
      "image_std": (1.0,),
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
      "image": {"encoder": "resnet18", "in_channels": 1, "width": 64,
                "zero_init_last_bn": True, "dropout": 0.0,
                "init_from": config_dict.placeholder(str)},
      "text": {"encoder": "bert", "size": "base", "vocab_size": -1, "max_len": 512,
               "type_vocab_size": 2, "dropout": 0.1, "use_pooler": False,
               "init_from": config_dict.placeholder(str)},
      # hidden=(): concat fusion (the image variant) is a single Dense, paper 001's image-only
      # classifier, with dropout 0.5 on its input features (fusion.FusionMLP); the joint head
      # (text, joint variants) is Dense(joint_hidden) -> ReLU -> dropout 0.5 -> Dense.
      "head": {"hidden": (), "dropout": 0.5, "late_weights": None, "joint_hidden": 512},
  })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, model="joint", smoke=False, freeze=True, split="official")
  if arg.split not in ("official", "grouped"):
    raise ValueError(f"unknown split {arg.split!r}; valid: ['grouped', 'official']")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.variants = variants(arg.freeze)
  config.data = data_config(arg)
  config.model = model_config()
  config.optimizer = {"name": "adamw", "learning_rate": 1e-5, "weight_decay": 1e-2,
                      "schedule": "constant", "grad_clip_norm": config_dict.placeholder(float),
                      "freeze": ()}
  config.train = config_lib.train_defaults()
  config.train.update({
      "num_epochs": 10.0, "warmup_epochs": 0.0, "log_every_steps": 50,
      "eval_every_epochs": 1.0, "checkpoint_every_epochs": 1.0,
      "class_weights": None, "uncertain_policy": "zeros",
      # patience: evaluations without improvement before stopping; 0 = no early stopping
      # (the 10 epochs run to the end; the best validation checkpoint is still kept).
      "early_stopping": {"metric": "roc_auc", "mode": "max", "patience": 0, "min_delta": 0.0},
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
    config.data.builder_overrides.image_size = 32
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    config.data.max_text_len = 64
    config.model.image.encoder = "resnet_tiny"
    config.model.text.size = "tiny"
    config.model.text.max_len = 128
    config_lib.apply_smoke_schedule(config.train, steps=3)
  return config
