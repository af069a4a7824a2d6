"""Converters from outside checkpoint formats into jaxmm parameter trees (see README.md here).

  checkpoint_files  local .safetensors / .pth (weights_only) / Hugging Face directory reading
  resnet_torch      torchvision-format ResNet state dict -> jaxmm ResNet variables
  resnet_hf         Hugging Face ResNet directory -> jaxmm ResNet variables (via torchvision names)
  grayscale         RGB stem conv -> 1-channel stem conv (sum over the input channels)
  bert_hf           Hugging Face BERT-family directory -> jaxmm Bert params + its config fields

A layer between models and train: it knows jaxmm's model trees; training uses it through
jaxmm.train.pretrained (`model.image.init_from`, `model.text.init_from`).
"""
