"""scikit-learn baselines on a trained checkpoint's embeddings and metadata (paper 000 sec. 5).

  embeddings  per-example encoder features, encoded metadata, labels and groups of every
              split, from the best checkpoint, cached in the workdir
  pipelines   the classifier registry, StandardScaler (+ PCA 95%) pipelines, validation
              tuning, late fusion, metrics and the fusion-vs-unimodal deltas (table 15)
  runner      `--mode=baselines`: tables 4, 5 and 15 per task, predictions and figures
"""
