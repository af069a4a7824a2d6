"""Saliency engine: gradient methods, the CAM family and multimodal attribution in pure JAX.

  targets     which output is explained (predicted / true / top-k) and its score
  chunking    bounded-memory sums over path points and noise samples (scan over vmapped chunks)
  gradients   vanilla gradient, gradient x input, Integrated Gradients, completeness
  smoothgrad  SmoothGrad / SmoothGrad^2 / VarGrad around any gradient method; IG + SmoothGrad
  cams        Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Score-CAM
  normalize   channel reduction, [-1, 1] / [0, 1] scalings, upsampling (separate steps)
  model_fns   Linen model -> the functions the methods differentiate (`perturb`-based)
  multimodal  joint IG over image, text tokens and metadata fields of a fused model
  methods     the registry the dataset runner calls
  runner      `--mode=saliency`: maps for a checkpoint's split, in resumable shards
"""
