"""SHAP explainers: exact field SHAP against hand values and shap's KernelExplainer, the field
code encoding, token SHAP on a toy report scorer, and the scikit-learn explainers (linear
values by hand through a pipeline's scaler, tree additivity, field summing)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import shap
from sklearn.decomposition import PCA
from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingRegressor,
                              RandomForestClassifier)
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge, TweedieRegressor
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jaxmm.baselines import shap_sklearn
from jaxmm.data import tokenizer as tokenizer_lib
from jaxmm.data.metadata import MetadataEncoder
from jaxmm.saliency import shap_explainers

RECORDS = {
    "age": [30, 55, None, 72, 41, 63, 18, 50],
    "sex": ["male", "female", "male", "", "female", "male", "female", "male"],
    "localization": ["back", "face", "trunk", "hand", "back", "lower extremity", "scalp", "ear"],
    "dx_type": ["histo", "follow_up", "histo", "consensus", "confocal", "histo", "", "weird"],
}


@pytest.fixture(scope="module")
def encoder():
  return MetadataEncoder.fit(RECORDS)


def replaced(x: np.ndarray, background: np.ndarray, field: int) -> np.ndarray:
  """[B, F]: x with field `field` taken from each background row."""
  rows = np.repeat(x[None], len(background), 0)
  rows[:, field] = background[:, field]
  return rows


def test_field_codes_encode_exactly_like_the_encoder_and_read_back(encoder):
  codes = shap_explainers.metadata_field_codes(encoder, RECORDS)
  assert codes.shape == (8, 4)
  assert codes[2, 0] == encoder.age_median  # missing age imputed in years
  assert codes[3, 1] == encoder.vocabularies["sex"].index("unknown")
  assert codes[7, 3] == encoder.vocabularies["dx_type"].index("unknown")  # out of vocabulary
  encode = shap_explainers.field_code_encoder(encoder)
  np.testing.assert_allclose(encode(codes), encoder.transform(RECORDS), atol=1e-6)
  display = shap_explainers.field_display_values(encoder, codes)
  assert display[0].tolist() == ["30", "male", "back", "histo"]
  bad = codes.copy()
  bad[5, 2] = 15
  with pytest.raises(ValueError, match="field 'localization' code 15.0 at row 5"):
    encode(bad)


def test_field_shap_of_a_model_linear_in_the_encoded_metadata_is_the_hand_value(encoder):
  codes = shap_explainers.metadata_field_codes(encoder, RECORDS)
  encode = shap_explainers.field_code_encoder(encoder)
  weights = np.random.default_rng(0).normal(size=(encoder.dim, 3))
  image_term = np.array([0.5, -1.0, 2.0])  # example i's fixed image adds i * image_term

  def predict(meta, i):
    return meta @ weights + i * image_term

  background = codes[4:]
  explanation = shap_explainers.metadata_field_shap(
      predict, codes[:3], background, encode, encoder.field_names, output_names=list("abc"))
  assert explanation.values.shape == (3, 4, 3) and explanation.base_values.shape == (3, 3)
  assert explanation.feature_names == list(encoder.field_names)
  for i in range(3):
    fx = predict(encode(codes[i:i + 1]), i)[0]
    for j in range(4):
      # additive over fields + independent masking: phi_j = f(x) - E_b f(x, field j from b)
      hand = fx - predict(encode(replaced(codes[i], background, j)), i).mean(0)
      np.testing.assert_allclose(explanation.values[i, j], hand, atol=1e-10)
    # efficiency: sum of field values = f(x) - E_b f(b) (with example i's image)
    np.testing.assert_allclose(explanation.values[i].sum(0),
                               fx - predict(encode(background), i).mean(0), atol=1e-10)
    np.testing.assert_allclose(explanation.base_values[i],
                               predict(encode(background), i).mean(0), atol=1e-10)


def test_field_shap_matches_shaps_exact_kernel_on_an_interacting_model(encoder):
  codes = shap_explainers.metadata_field_codes(encoder, RECORDS)
  encode = shap_explainers.field_code_encoder(encoder)
  weights = np.random.default_rng(1).normal(size=(encoder.dim, 2))

  def predict(meta, i):
    return np.tanh(meta @ weights) * (1.0 + meta[:, :1]) * meta[:, 1:2] + 0.1 * i

  explanation = shap_explainers.metadata_field_shap(predict, codes, codes[:5], encode,
                                                    encoder.field_names)
  for i in (0, 6):
    # KernelSHAP with every coalition enumerated (2^4 <= nsamples) is exact Shapley.
    kernel = shap.KernelExplainer(lambda c, i=i: predict(encode(c), i), codes[:5])
    expected = np.asarray(kernel.shap_values(codes[i:i + 1], nsamples=64, silent=True))[0]
    np.testing.assert_allclose(explanation.values[i], expected, atol=1e-10)


def test_a_jitted_model_compiles_once_and_gets_one_call_per_example(encoder):
  codes = shap_explainers.metadata_field_codes(encoder, RECORDS)
  traces, calls = [], []

  @jax.jit
  def model(meta):
    traces.append(meta.shape)
    return jax.nn.softmax(meta[:, :3] * 2.0, axis=-1)

  def predict(meta, i):
    calls.append(len(meta))
    return np.asarray(model(jnp.asarray(meta)))

  shap_explainers.metadata_field_shap(predict, codes[:3], codes[:6],
                                      shap_explainers.field_code_encoder(encoder),
                                      encoder.field_names)
  assert traces == [(16 * 6, 24)] and calls == [96, 96, 96]
  out = shap_explainers.padded_rows_call(lambda r: r * 2.0, np.arange(10.0)[:, None], 4)
  np.testing.assert_array_equal(out[:, 0], np.arange(10.0) * 2)


def test_bad_field_inputs_say_what_and_where(encoder):
  encode = shap_explainers.field_code_encoder(encoder)
  codes = shap_explainers.metadata_field_codes(encoder, RECORDS)
  with pytest.raises(ValueError, match=r"field_values must be \[rows >= 1, 4\]"):
    shap_explainers.metadata_field_shap(lambda m, i: m, codes[:, :3], codes, encode,
                                        encoder.field_names)
  nan = codes.copy()
  nan[2, 0] = np.nan
  with pytest.raises(ValueError, match="background row 2 has a non-finite code"):
    shap_explainers.metadata_field_shap(lambda m, i: m, codes, nan, encode, encoder.field_names)
  with pytest.raises(ValueError, match=r"predict_fn must return outputs \[M=128, K\]"):
    shap_explainers.metadata_field_shap(lambda m, i: m[:, 0], codes[:1], codes, encode,
                                        encoder.field_names)


REPORTS = ["no pleural effusion is seen the heart size is normal",
           "small left pleural effusion and mild cardiomegaly with edema"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("vocab"))
  tokenizer_lib.write_vocab(os.path.join(directory, "vocab.txt"),
                            tokenizer_lib.build_vocab(REPORTS))
  return tokenizer_lib.load_tokenizer(directory)


def word_scorer(texts, i):
  """Label 0 scores "effusion", label 1 "cardiomegaly", label 2 is constant, label 3 low."""
  out = np.zeros((len(texts), 4))
  for row, text in enumerate(texts):
    words = text.split()
    out[row] = [0.1 + 0.8 * ("effusion" in words), 0.2 + 0.5 * ("cardiomegaly" in words),
                0.3, 0.01 * len(words)]
  return out


def test_token_shap_credits_the_scored_word_for_the_top_k_labels_only(tokenizer):
  results = shap_explainers.token_shap(word_scorer, REPORTS, tokenizer, top_k=2, max_evals=100)
  first, second = results
  assert first.tokens == ["[CLS]"] + REPORTS[0].split() + ["[SEP]"]
  np.testing.assert_array_equal(first.labels, [0, 2])  # 0.9, 0.3 (label 1 at 0.2 not explained)
  np.testing.assert_array_equal(second.labels, [0, 1])
  assert first.values.shape == (2, len(first.tokens))
  for result in results:
    np.testing.assert_allclose(result.values.sum(1) + result.base_values, result.scores,
                               atol=1e-9)
  assert first.tokens[int(np.argmax(first.values[0]))] == "effusion"
  np.testing.assert_allclose(first.values[0].max(), 0.8, atol=1e-9)
  np.testing.assert_allclose(first.values[1], 0.0, atol=1e-12)  # a constant label
  assert second.tokens[int(np.argmax(second.values[1]))] == "cardiomegaly"
  np.testing.assert_allclose(second.scores, [0.9, 0.7])
  state = np.random.get_state()[1].copy()
  again = shap_explainers.token_shap(word_scorer, REPORTS[1:], tokenizer, top_k=2, max_evals=20,
                                     seed=3)
  np.testing.assert_array_equal(np.random.get_state()[1], state)  # the caller's RNG untouched
  np.testing.assert_allclose(again[0].values.sum(1) + again[0].base_values, again[0].scores,
                             atol=1e-9)  # exact with an early stop too ([CLS]/[SEP] kept)
  with pytest.raises(ValueError, match="top_k must be >= 1"):
    shap_explainers.token_shap(word_scorer, REPORTS, tokenizer, top_k=0)


def classification_data(num_classes: int):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(160, 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + [0.0, 5.0, -1.0, 0.0, 2.0]
  score = x[:, 0] + 0.3 * x[:, 1] - x[:, 3]
  y = np.digitize(score, np.quantile(score, np.linspace(0, 1, num_classes + 1)[1:-1]))
  return x, y, [f"f{j}" for j in range(5)]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_linear_pipeline_values_are_composed_coefficients_times_centred_inputs(num_classes):
  x, y, names = classification_data(num_classes)
  model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
  background, rows = x[:40], x[100:106]
  explanation = shap_sklearn.explain_sklearn(model, background, rows, names)
  scaler, lr = model[0], model[-1]
  coef = lr.coef_ / scaler.scale_  # [C, D] in the original feature space
  hand = (rows - background.mean(0))[:, :, None] * coef.T[None]
  assert explanation.explainer == "linear"
  np.testing.assert_allclose(explanation.values, hand, atol=1e-10)
  margin = model.decision_function(rows).reshape(len(rows), -1)
  np.testing.assert_allclose(explanation.base_values + explanation.values.sum(1), margin,
                             atol=1e-10)
  assert explanation.output_names == (["1"] if num_classes == 2 else ["0", "1", "2"])
  assert explanation.model_output == ("log_odds" if num_classes == 2 else "decision_function")
  np.testing.assert_array_equal(explanation.data, rows)  # original inputs, not scaled ones


def test_a_pca_pipeline_is_explained_in_the_original_features():
  x, y, names = classification_data(2)
  model = make_pipeline(StandardScaler(), PCA(3, whiten=True), LogisticRegression()).fit(x, y)
  explanation = shap_sklearn.explain_sklearn(model, x[:40], x[100:104], names)
  assert explanation.explainer == "linear" and explanation.values.shape == (4, 5, 1)
  np.testing.assert_allclose(explanation.base_values + explanation.values.sum(1),
                             model.decision_function(x[100:104])[:, None], atol=1e-9)


@pytest.mark.parametrize("estimator,output", [
    (GradientBoostingClassifier(n_estimators=15, random_state=0), "decision_function"),
    (RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0), "predict_proba")])
def test_tree_values_add_up_to_the_model_output(estimator, output):
  x, y, names = classification_data(2)
  model = make_pipeline(StandardScaler(), estimator).fit(x, y)
  explanation = shap_sklearn.explain_sklearn(model, x[:40], x[100:110], names)
  assert explanation.explainer == "tree"
  expected = getattr(model, output)(x[100:110]).reshape(10, -1)
  assert explanation.values.shape == (10, 5, expected.shape[1])
  np.testing.assert_allclose(explanation.base_values + explanation.values.sum(1), expected,
                             atol=1e-6)
  # a tree after a scaler splits on the original column: the values follow the original data
  np.testing.assert_array_equal(explanation.data, x[100:110])


@pytest.mark.parametrize("estimator,units", [
    (Ridge(), "prediction"), (PoissonRegressor(), "log_prediction"),
    (TweedieRegressor(power=1.5), "log_prediction"),
    (HistGradientBoostingRegressor(loss="poisson", max_iter=20), "log_prediction")])
def test_regressor_values_add_up_to_the_output_their_units_name(estimator, units):
  rng = np.random.RandomState(0)
  x = rng.randn(200, 4)
  y = rng.poisson(np.exp(0.5 * x[:, 0] + 0.3 * x[:, 1] + 1.0))
  model = estimator.fit(x, y)
  explanation = shap_sklearn.explain_sklearn(model, x[:50], x[190:194], list("abcd"))
  assert explanation.model_output == units
  prediction = model.predict(x[190:194])
  expected = np.log(prediction) if units == "log_prediction" else prediction
  np.testing.assert_allclose((explanation.base_values + explanation.values.sum(1))[:, 0],
                             expected, rtol=1e-5, atol=1e-6)


def test_one_hot_columns_are_summed_into_fields(encoder):
  x = encoder.transform(RECORDS)
  y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
  model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
  columns = shap_sklearn.explain_sklearn(model, x, x[:3], encoder.feature_names)
  fields = shap_sklearn.explain_sklearn(model, x, x[:3], encoder.feature_names,
                                        field_slices=encoder.fields)
  assert fields.feature_names == list(encoder.field_names) and fields.values.shape == (3, 4, 1)
  for j, (_, block) in enumerate(encoder.fields):
    np.testing.assert_allclose(fields.values[:, j], columns.values[:, block].sum(1), atol=1e-12)
  np.testing.assert_allclose(fields.values.sum(1), columns.values.sum(1), atol=1e-12)
  assert fields.display_data[0, 1:].tolist() == ["male", "back", "histo"]
  assert fields.data[0, 1] == encoder.vocabularies["sex"].index("male")
  with pytest.raises(ValueError, match="field 'sex' has slice"):
    shap_sklearn.explain_sklearn(model, x, x[:3], encoder.feature_names,
                                 field_slices=[("age", slice(0, 1)), ("sex", slice(2, 4))])


def test_other_models_get_the_model_agnostic_explainer_over_predict_proba():
  x, y, names = classification_data(3)
  model = make_pipeline(StandardScaler(), GaussianNB()).fit(x, y)
  explanation = shap_sklearn.explain_sklearn(model, x[:20], x[100:103], names)
  assert explanation.explainer == "model_agnostic" and explanation.model_output == "probability"
  np.testing.assert_allclose(explanation.base_values + explanation.values.sum(1),
                             model.predict_proba(x[100:103]), atol=1e-9)
  with pytest.raises(ValueError, match=r"X_explain must be \[rows >= 1, 5\]"):
    shap_sklearn.explain_sklearn(model, x[:20], x[:3, :4], names)
