"""SHAP for metadata fields and report tokens, over plain prediction functions.

Two explainers (section 7 of paper 000_e8883a90876d02cb.txt: SHAP over clinical metadata; paper
001_02ed271d6d235282.txt: token SHAP of the top-3 labels of a report model):

  metadata_field_shap  exact Shapley values with a metadata FIELD (age, sex, localization,
                       dx_type) as the player, not a one-hot column. The explained rows hold raw
                       field codes (age in years, a categorical field as the index of its
                       category), `encode_fn` turns them into the model's encoded vectors.
                       Fields absent from a coalition S take their values from each background
                       row b in turn (as shap's Independent masker does):
                         v(S) = mean_b f(x_S, b_rest),
                         phi_j = sum_{S without j} |S|! (F - |S| - 1)! / F! [v(S + j) - v(S)].
  token_shap           shap's Partition explainer with `shap.maskers.Text(tokenizer)`: Owen
                       values over the tokenizer's tokens, for each example's top-k labels.

A prediction function is called per explained example i as `predict_fn(inputs, i)`: i lets a
fused model hold example i's other modalities (its image) fixed while one modality is masked;
a unimodal model ignores it. Field SHAP draws no random numbers; the Partition explainer breaks
ties in its priority queue with the global NumPy RNG, which token_shap seeds from its `seed`
for the call and restores afterwards, so both are functions of their inputs and seed.
"""
import contextlib
import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import shap

from jaxmm.data import metadata

FieldPredictFn = Callable[[np.ndarray, int], np.ndarray]  # (encoded [M, D], i) -> [M, K]
TextPredictFn = Callable[[list, int], np.ndarray]          # (texts [M], i) -> [M, K]
# The most fields the exact explainer enumerates (2^F coalitions x background rows).
MAX_EXACT_FIELDS = 12


def metadata_field_codes(encoder, records) -> np.ndarray:
  """Raw metadata records -> field codes float64 [N, F] in `encoder.field_names` order.

  Age is in years with missing values imputed by the training median (what the model sees);
  each categorical field is the index of its category in `encoder.vocabularies[field]` (with
  the encoder's unknown handling). `records` is a dict of arrays or a list of row dicts.
  """
  columns = {}
  for field in encoder.field_names:
    if isinstance(records, Mapping):
      if field not in records:
        raise ValueError(f"metadata records lack field {field!r}; expected "
                         f"{list(encoder.field_names)}")
      columns[field] = list(np.asarray(records[field], dtype=object).reshape(-1))
    else:
      columns[field] = [row.get(field) for row in records]
  ages = np.array([metadata.parse_age(v, row)
                   for row, v in enumerate(columns[metadata.AGE_FIELD])])
  codes = np.zeros((len(ages), len(encoder.field_names)), np.float64)
  codes[:, 0] = np.where(np.isnan(ages), encoder.age_median, ages)
  for j, field in enumerate(encoder.field_names[1:], start=1):
    if len(columns[field]) != len(ages):
      raise ValueError(f"metadata field {field!r} has {len(columns[field])} values, age has "
                       f"{len(ages)}")
    codes[:, j] = [encoder.category_index(field, v, row) for row, v in enumerate(columns[field])]
  return codes


def field_code_encoder(encoder) -> Callable[[np.ndarray], np.ndarray]:
  """encode_fn(codes [M, F]) -> encoded metadata float32 [M, D], as `encoder.transform` would
  encode the records the codes stand for (z-scored age, one-hot categories)."""
  def encode(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, np.float64)
    if codes.ndim != 2 or codes.shape[1] != len(encoder.fields):
      raise ValueError(f"field codes must be [M, {len(encoder.fields)}] "
                       f"({list(encoder.field_names)}), got shape {codes.shape}")
    out = np.zeros((len(codes), encoder.dim), np.float32)
    out[:, 0] = (codes[:, 0] - encoder.age_mean) / encoder.age_std
    rows = np.arange(len(codes))
    for j, (field, block) in enumerate(encoder.fields[1:], start=1):
      index = codes[:, j].astype(np.int64)
      size = block.stop - block.start
      bad = np.flatnonzero((index != codes[:, j]) | (index < 0) | (index >= size))
      if bad.size:
        raise ValueError(f"field {field!r} code {float(codes[bad[0], j])!r} at row {bad[0]} is "
                         f"not a category index in [0, {size})")
      out[rows, block.start + index] = 1.0
    return out
  return encode


def field_display_values(encoder, codes: np.ndarray) -> np.ndarray:
  """Readable values of field codes, str [N, F]: the age in years, the category names."""
  codes = np.asarray(codes)
  out = np.empty(codes.shape, dtype=object)
  out[:, 0] = [f"{a:.0f}" for a in codes[:, 0]]
  for j, field in enumerate(encoder.field_names[1:], start=1):
    vocab = encoder.vocabularies[field]
    out[:, j] = [vocab[int(c)] for c in codes[:, j]]
  return out.astype(str)


def padded_rows_call(fn: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
                     size: int) -> np.ndarray:
  """fn over `rows` in chunks of exactly `size` rows (the last padded with copies of row 0 and
  its outputs dropped), so a jitted fn compiles for one shape. rows [M, ...] -> [M, K]."""
  rows = np.asarray(rows)
  outputs = []
  for start in range(0, len(rows), size):
    chunk = rows[start:start + size]
    keep = len(chunk)
    if keep < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - keep, axis=0)])
    outputs.append(check_outputs(fn(chunk), size, "predict_fn")[:keep])
  return np.concatenate(outputs)


def check_outputs(outputs, rows: int, where: str) -> np.ndarray:
  outputs = np.asarray(outputs, np.float64)
  if outputs.ndim != 2 or outputs.shape[0] != rows:
    raise ValueError(f"{where} must return outputs [M={rows}, K], got shape {outputs.shape}")
  return outputs


def coalitions(num_players: int) -> np.ndarray:
  """Every subset of the players as a mask, bool [2^F, F]; row m holds player j iff bit j
  of m is set (row 0 is the empty coalition, the last row all players)."""
  m = np.arange(2 ** num_players)[:, None]
  return (m >> np.arange(num_players)[None, :]) & 1 == 1


def shapley_matrix(num_players: int) -> np.ndarray:
  """W [F, 2^F] with phi = W @ v for coalition values v [2^F, ...] in `coalitions` order:
  phi_j = sum_{S not j} |S|! (F - |S| - 1)! / F! * (v(S + j) - v(S))."""
  masks = coalitions(num_players)
  sizes = masks.sum(1)
  weight = np.array([math.factorial(s) * math.factorial(num_players - s - 1) /
                     math.factorial(num_players) for s in range(num_players)])
  out = np.zeros((num_players, len(masks)))
  for j in range(num_players):
    without = np.flatnonzero(~masks[:, j])
    out[j, without | (1 << j)] += weight[sizes[without]]
    out[j, without] -= weight[sizes[without]]
  return out


def check_field_codes(name: str, array, num_fields: int, field_names) -> np.ndarray:
  array = np.asarray(array, np.float64)
  if array.ndim != 2 or array.shape[1] != num_fields or not len(array):
    raise ValueError(f"{name} must be [rows >= 1, {num_fields}] for fields {list(field_names)}, "
                     f"got shape {array.shape}")
  bad = ~np.isfinite(array).all(1)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{name} row {row} has a non-finite code {array[row].tolist()}; impute "
                     f"missing ages first (metadata_field_codes does)")
  return array


def metadata_field_shap(predict_fn: FieldPredictFn, field_values: np.ndarray,
                        background: np.ndarray, encode_fn: Callable[[np.ndarray], np.ndarray],
                        field_names: Sequence[str], *, output_names: Sequence[str] | None = None,
                        display_data: np.ndarray | None = None,
                        chunk_rows: int | None = None) -> shap.Explanation:
  """Exact field-level SHAP values of `predict_fn` for each explained example.

  The masked rows of all 2^F coalitions x B background rows of one example go to the model
  together (shap's ExactExplainer with an Independent masker computes the same values, but
  compiles numba kernels for ~10 s per process; with F = 4 fields enumeration is cheaper).

  Args:
    predict_fn: (encoded metadata [M, D], i) -> outputs [M, K] for example i (e.g. class
      probabilities with example i's image held fixed).
    field_values: the explained examples' field codes [N, F] (see metadata_field_codes).
    background: field codes [B, F]; a field absent from a coalition takes each background row's
      value in turn (the caller picks them, e.g. a seeded sample of the training split).
    encode_fn: field codes [M, F] -> encoded metadata [M, D] (see field_code_encoder).
    field_names: the F field names.
    output_names: the K output names (class names), stored on the Explanation.
    display_data: readable field values [N, F] (str) for plots; default the codes.
    chunk_rows: rows per model call (padded, so a jitted model compiles once); default
      2^F * B: one call per example.

  Returns:
    shap.Explanation with values [N, F, K], base_values [N, K] (the mean output over the
    background rows, example i's other inputs fixed) and data [N, F] (the codes); by
    efficiency values[i].sum(0) + base_values[i] == predict_fn(encode_fn(field_values[i:i+1]),
    i)[0].
  """
  num_fields = len(field_names)
  if not 1 <= num_fields <= MAX_EXACT_FIELDS:
    raise ValueError(f"{num_fields} fields {list(field_names)}: the exact explainer takes 1 to "
                     f"{MAX_EXACT_FIELDS} (2^F coalitions per example)")
  field_values = check_field_codes("field_values", field_values, num_fields, field_names)
  background = check_field_codes("background", background, num_fields, field_names)
  masks = coalitions(num_fields)
  weights = shapley_matrix(num_fields)
  size = chunk_rows or len(masks) * len(background)
  values, base_values = [], []
  for i, x in enumerate(field_values):
    rows = np.where(masks[:, None, :], x[None, None, :], background[None, :, :])
    outputs = padded_rows_call(lambda c, i=i: predict_fn(encode_fn(c), i),
                               rows.reshape(-1, num_fields), size)
    v = outputs.reshape(len(masks), len(background), -1).mean(1)  # [2^F, K]
    values.append(weights @ v)
    base_values.append(v[0])
  return shap.Explanation(
      values=np.stack(values), base_values=np.stack(base_values), data=field_values,
      display_data=display_data, feature_names=list(field_names),
      output_names=list(output_names) if output_names is not None else None)


@dataclasses.dataclass
class TokenShap:
  """Token SHAP of one text for its top-k outputs.

  tokens: the T token strings: the tokenizer's pieces as substrings of the text (stripped),
    and its special tokens ([CLS], [SEP]) by name. Those are never masked: their values are
    the share of credit the Partition explainer spreads onto them when `max_evals` stops its
    recursion early (0 when it expands fully); keeping them keeps the sum exact.
  labels: int [k], the explained outputs, highest score first.
  scores: [k], the outputs on the whole text.
  base_values: [k], the outputs on the fully masked text.
  values: [k, T], one SHAP value per token and label; values[j].sum() + base_values[j] ==
    scores[j] (up to float rounding).
  """
  tokens: list
  labels: np.ndarray
  scores: np.ndarray
  base_values: np.ndarray
  values: np.ndarray


def top_k_outputs(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest scores, largest first (ties: lower index first). [K] -> [k]."""
  return np.argsort(-np.asarray(scores), kind="stable")[:k]


@contextlib.contextmanager
def seeded_global_numpy_rng(seed: int):
  """Seeds NumPy's global RNG for the block and restores the caller's state afterwards (for
  library code that draws from it: shap's Partition explainer's tie-breaks)."""
  state = np.random.get_state()
  np.random.seed(seed)
  try:
    yield
  finally:
    np.random.set_state(state)


def token_names(masker: shap.maskers.Text, tokenizer, text: str, segments) -> list[str]:
  """Display strings of the masker's T tokens: the stripped text pieces, and the special
  tokens the masker always keeps ([CLS], [SEP]) by name when the tokenizer can name them."""
  names = [str(s).strip() for s in segments]
  special = list(range(masker.keep_prefix)) + list(
      range(len(names) - masker.keep_suffix, len(names)))
  if special and hasattr(tokenizer, "convert_ids_to_tokens"):
    ids = tokenizer(text)["input_ids"]
    if len(ids) == len(names):
      for position in special:
        names[position] = tokenizer.convert_ids_to_tokens(int(ids[position]))
  return names


def text_masker(tokenizer, mask_token: str | None = "") -> shap.maskers.Text:
  """shap's Text masker over a Hugging Face *Fast* tokenizer (it needs offset_mapping).

  mask_token "" deletes masked tokens (a shorter report: what a model trained without [MASK]
  has seen); None uses the tokenizer's mask token ("[MASK]", shap's default, sensible for a
  pretrained masked-language encoder); any other string replaces each masked run of tokens.
  """
  if not callable(tokenizer):
    raise TypeError(f"the tokenizer must be callable like a transformers tokenizer, got "
                    f"{type(tokenizer).__name__}")
  return shap.maskers.Text(tokenizer, mask_token=mask_token)


def token_shap(predict_fn: TextPredictFn, texts: Sequence[str], tokenizer, *, top_k: int = 3,
               max_evals: int = 300, batch_size: int = 32, mask_token: str | None = "",
               seed: int = 0) -> list[TokenShap]:
  """Token-level SHAP of each text for its top-k outputs (paper 001's top-3 labels).

  Args:
    predict_fn: (texts list[str] of M, i) -> outputs [M, K] for example i, e.g. sigmoid
      probabilities of a multilabel report model (the values are then in probability units),
      with example i's image held fixed in a fused model.
    texts: the N texts as the model reads them (already cleaned).
    tokenizer: a transformers Fast tokenizer (jaxmm.data.tokenizer.load_tokenizer's).
    top_k: how many of each text's highest outputs to explain.
    max_evals: model evaluations per text for the Partition explainer (cost bound; a 30-token
      report is well explained by a few hundred).
    batch_size: masked texts per model call.
    mask_token: see text_masker.
    seed: seeds the Partition explainer's tie-breaks (see the module docstring).

  Returns:
    one TokenShap per text.
  """
  if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  masker = text_masker(tokenizer, mask_token)
  out = []
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    def model(batch, i=i):
      return check_outputs(predict_fn([str(t) for t in batch], i), len(batch), "predict_fn")

    scores = model([text])[0]
    labels = top_k_outputs(scores, min(top_k, len(scores)))
    explainer = shap.explainers.Partition(model, masker)
    with seeded_global_numpy_rng(seed):
      row = explainer([text], max_evals=max_evals, batch_size=batch_size, outputs=labels,
                      silent=True)
    values = np.asarray(row.values[0]).T.reshape(len(labels), -1)
    out.append(TokenShap(tokens=token_names(masker, tokenizer, text, row.data[0]),
                         labels=labels, scores=scores[labels],
                         base_values=np.asarray(row.base_values[0]), values=values))
  return out
