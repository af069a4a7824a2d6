"""Datasets (TF-free tfds builders), splits, metadata encoding, tokenization, input pipeline.

  builders     registry DATASETS, get_builder / prepare / load (manual_dir for real datasets)
  synthetic_derm, derm_rendering       HAM10000-shaped dermoscopy + metadata (paper 000)
  synthetic_cxr, cxr_reports, cxr_rendering   MIMIC-CXR-shaped radiographs + reports (paper 001)
  procedural   noise fields and pixel grids shared by the renderers
  splits       lesion/patient-grouped stratified 64/16/20 splits
  metadata     HAM10000 metadata encoder (median-imputed z-scored age, one-hot categories)
  tokenizer    report cleaning, WordPiece vocabulary, local BertTokenizerFast
  synthetic_base  shared config and plan -> split -> render generation of the synthetic builders
  ham10000, isic2020, mimic_cxr        the real releases (papers 000, 002, 001), read from a
                                       manual download in the official layout
  manual_base  shared config and two-pass build of the real-dataset builders
  manual_dir   where a manual download lives and the check of its layout
  release_csv  official CSV tables read with line numbers
  image_files  PIL decoding + resizing of release images and masks
  bad_rows     bad-row accounting: an error naming file and line, or counted skips
  saved_statistics  metadata statistics fitted on a dataset's train split, saved with it
  pipeline     grain input pipeline: preprocessing fitted on train, resumable training batches
  atomic       atomic text writes (temporary file, then rename)
"""
