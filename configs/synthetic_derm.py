r"""Synthetic HAM10000-like dermoscopy images + clinical metadata (the embedded default).

The main job (README quickstart): builds the data, trains image-only, metadata-only and
concat-fusion models, evaluates them on test and prints a table like table 4 of paper 000:

  python -m jaxmm.main --config=configs/synthetic_derm.py --workdir=runs/derm --mode=pipeline

One model (variants: image, meta, concat, late, film; `smoke` shrinks everything to seconds,
`binary` switches to the malignant-vs-benign task):

  python -m jaxmm.main --config=configs/synthetic_derm.py:model=film --workdir=runs/derm_film
  python -m jaxmm.main --config=configs/synthetic_derm.py:model=late,smoke --workdir=/tmp/s
  python -m jaxmm.main --config=configs/synthetic_derm.py --config.optimizer.learning_rate=3e-3 \
      --workdir=runs/derm_lr
"""
import ml_collections
from ml_collections import config_dict

from jaxmm import workflow
from jaxmm.train import config_lib

HAM_MEAN = (0.485, 0.456, 0.406)
HAM_STD = (0.229, 0.224, 0.225)


def variants() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "image": {"modalities": ("image",), "fusion": "concat"},
      "meta": {"modalities": ("meta",), "fusion": "concat"},
      "concat": {"modalities": ("image", "meta"), "fusion": "concat"},
      "late": {"modalities": ("image", "meta"), "fusion": "late"},
      "film": {"modalities": ("image", "meta"), "fusion": "film"},
  })


def data_config(arg) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "synthetic_derm",
      "builder_config": "default",
      "builder_overrides": config_lib.builder_overrides(),  # num_examples, image_size, seed
      "data_dir": config_dict.placeholder(str),  # None: $JAXMM_DATA_DIR, else ~/jaxmm_datasets
      "prefetch_to_device": 2,  # batches copied to the devices ahead of the step
      "label_key": "malignant" if arg.binary else "label",
      "label_names": ("benign", "malignant") if arg.binary else (),
      "multilabel": False,
      "use_meta": True,
      "meta_fields": ("age", "sex", "localization", "dx_type"),
      "use_text": False,
      "text_key": "",
      "max_text_len": 0,
      "image_mean": HAM_MEAN,
      "image_std": HAM_STD,
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
      # init_from: local pretrained weights (jaxmm/train/pretrained.py); None = random init.
      "image": {"encoder": "resnet_tiny", "in_channels": 3, "width": config_dict.placeholder(int),
                "zero_init_last_bn": True, "dropout": 0.25,
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
  config.optimizer = {"name": "adam", "learning_rate": 2e-3, "weight_decay": 0.0,
                      "schedule": "cosine", "grad_clip_norm": 1.0, "freeze": ()}
  config.train = config_lib.train_defaults()
  config.train.update({
      "num_epochs": 12.0, "warmup_epochs": 1.0, "log_every_steps": 20,
      "eval_every_epochs": 1.0, "checkpoint_every_epochs": 1.0,
      "class_weights": "balanced", "uncertain_policy": "ignore",
      # patience: evaluations without improvement before stopping; 0 = no early stopping.
      "early_stopping": {"metric": "macro_f1", "mode": "max", "patience": 6, "min_delta": 0.0},
      "final_eval_splits": ("validation", "test"), "progress": True, "async_checkpoints": True,
  })
  config.eval = {"splits": ("test",)}
  config.pipeline = {"variants": ("image", "meta", "concat"),
                     # the main job ends with saliency overlays of this variant's test images and
                     # the evaluation of its explanations (config.evaluation)
                     "evaluate_explanations": True,
                     "saliency_variant": "concat", "saliency_examples": 8,
                     # then scikit-learn baselines, SHAP, fairness tests and report.html
                     "baselines": True, "baselines_variant": "image", "shap": True, "fairness": True,
                     "report": True}
  workflow.add_analysis_sections(config)
  # ResNetTiny's stage4 is 2x2 at 64 px: CAMs read the 8x8 stage2, fine enough to see the ruler.
  config.saliency.layer = "image/stage2"
  # The main job evaluates every test image within its budget: IG + SmoothGrad with 16 steps x
  # 4 samples (config.saliency's default is 50 x 10: paper 004's 50-step path from a black
  # baseline, and 10 SmoothGrad samples, a count the paper does not give;
  # --config.evaluation.saliency_options.ig_smoothgrad...), the integrated feature analysis
  # for Grad-CAM and HiResCAM (pixel-wise Grad-CAM).
  config.evaluation.saliency_options = {
      "ig_smoothgrad": {"steps": 16, "num_samples": 4, "path_chunk_size": 16}}
  config.evaluation.ifa.methods = ("gradcam", "hirescam")
  config.evaluation.sanity.methods = ("gradcam", "hirescam")
  config_lib.select_variant(config, arg.model)
  if arg.smoke:
    workflow.shrink_analysis_sections(config)
    config.data.builder_config = "small"
    config.data.builder_overrides.update({"num_examples": 160, "image_size": 32})
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    config_lib.apply_smoke_schedule(config.train, steps=3)
  return config
