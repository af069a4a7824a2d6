"""Datasets (TF-free tfds builders), splits, metadata encoding, tokenization, input pipeline.

  builders     registry DATASETS, get_builder / prepare / load
  synthetic_derm, derm_rendering       HAM10000-shaped dermoscopy + metadata (paper 000)
  synthetic_cxr, cxr_reports, cxr_rendering   MIMIC-CXR-shaped radiographs + reports (paper 001)
  procedural   noise fields and pixel grids shared by the renderers
  splits       lesion/patient-grouped stratified 64/16/20 splits
  metadata     HAM10000 metadata encoder (median-imputed z-scored age, one-hot categories)
  tokenizer    report cleaning, WordPiece vocabulary, local BertTokenizerFast
  synthetic_base  shared config and plan -> split -> render generation of the synthetic builders
  pipeline     grain input pipeline: preprocessing fitted on train, resumable training batches
  atomic       atomic text writes (temporary file, then rename)
"""
