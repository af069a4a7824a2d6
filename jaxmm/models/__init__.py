"""Encoders (ResNet, small CNN, BERT, metadata MLP), fusion heads and the model builder.

Every encoder is a Linen module `__call__(x, *, train) -> (features, out)`; the model is
`build_model(config.model)`, a `MultimodalModel` whose `apply(variables, batch, train=...)`
returns `(logits, out)` with `out` a flat dict of named intermediates ("image/stage4", ...).
"""
from jaxmm.models.bert import BERT_SIZES, Bert
from jaxmm.models.build import DTYPES, ENCODERS, META_ENCODERS, TEXT_ENCODERS, build_model
from jaxmm.models.fusion import FUSIONS, MODALITIES, FiLM, FusionMLP, LateFusion, MultimodalModel
from jaxmm.models.resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNetTiny
from jaxmm.models.small_cnn import SmallCNN
from jaxmm.models.tabular import MetaMLP

__all__ = [
    "BERT_SIZES", "Bert",
    "DTYPES", "ENCODERS", "META_ENCODERS", "TEXT_ENCODERS", "build_model",
    "FUSIONS", "MODALITIES", "FiLM", "FusionMLP", "LateFusion", "MultimodalModel",
    "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNetTiny",
    "SmallCNN", "MetaMLP",
]
