"""The training loop: setup, train epochs, evaluations, early stopping and checkpoints.

`train_and_evaluate(config, workdir)` is resumable: run the same command on the same workdir
and it continues from the latest checkpoint (step, params, optimizer state, batch stats, rng,
data position = step, early-stopping state) and ends as an uninterrupted run would. A workdir
whose config.json was written by a config that trains another model (config_lib.model_settings:
seed, model, data, optimizer, train, less paths and speed settings) is refused before anything
is built or written (WorkdirConfigMismatch lists the differing keys); config.json and
env_info.json are written only once the checkpoint is restored, so a refused run leaves the
workdir as it was.

config.train.early_stopping: `metric` (a validation metric of the task, or "loss"), `mode`
("max" or "min"), `patience` (evaluations without an improvement larger than `min_delta`
before stopping; 0, or None, means no early stopping; negative is refused). All are checked
before the first step. The best checkpoint is kept whatever the patience.
"""
import dataclasses
import functools
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxmm.data import pipeline
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.models import build as model_build
from jaxmm.train import checkpointing, config_lib, distributed, losses, metrics as metrics_lib
from jaxmm.train import optimizers
from jaxmm.train import sharding, writer
from jaxmm.train import pretrained
from jaxmm.train.steps import TrainState, eval_step, train_step

TRAIN_KEYS = pipeline.MODEL_KEYS + ("label",)


@dataclasses.dataclass
class Run:
  """Everything set up for one run: data, model, step functions and bookkeeping."""
  config: Any
  workdir: str
  builder: Any
  preprocessor: pipeline.Preprocessor
  info: pipeline.TaskInfo
  model: Any
  mesh: Any
  tx: Any
  schedule: Any
  steps_per_epoch: int
  total_steps: int
  train_fn: Any
  eval_fn: Any
  loss_fn: Any
  checkpointer: checkpointing.Checkpointer
  writer: writer.MetricsWriter


def model_config_for(model_config, info: pipeline.TaskInfo) -> ml_collections.ConfigDict:
  """Fills the data-dependent model fields (classes, vocabulary, task type)."""
  cfg = ml_collections.ConfigDict(model_config.to_dict())
  cfg.num_classes = info.num_classes
  cfg.multilabel = info.multilabel
  if "text" in cfg and info.vocab_size:
    cfg.text.vocab_size = info.vocab_size
  return pretrained.text_config_from_checkpoint(cfg, info.vocab_size)


def steps_from(config, steps_per_epoch: int, name: str, default: int = 0) -> int:
  """Turns `train.<name>_steps` or `train.<name>_epochs` into steps (steps win if both)."""
  steps = config.train.get(f"{name}_steps")
  if steps is not None:
    return int(steps)
  epochs = config.train.get(f"{name}_epochs")
  return default if epochs is None else int(round(float(epochs) * steps_per_epoch))


CLASS_WEIGHTS = (None, "balanced")


def check_class_weights(choice) -> None:
  """ValueError unless `config.train.class_weights` is one of CLASS_WEIGHTS ("None" / "none"
  count as None)."""
  if config_lib.class_weights_choice(choice) not in CLASS_WEIGHTS:
    raise ValueError(f"config.train.class_weights={choice!r}; valid values: {list(CLASS_WEIGHTS)}"
                     f" (None: unweighted, also 'none' on the command line; 'balanced': inverse "
                     f"class frequency of the train split)")


def make_loss(config, info, train_columns) -> Any:
  """The task's loss; `balanced` class weights come from `train_columns()`' labels."""
  class_weights = None
  choice = config_lib.class_weights_choice(config.train.get("class_weights"))
  check_class_weights(choice)
  if choice == "balanced" and info.multilabel:
    raise ValueError("config.train.class_weights='balanced' is for single-label tasks; "
                     f"{config.data.name} is multilabel (set it to None)")
  if choice == "balanced":
    labels = train_columns()
    class_weights = losses.balanced_class_weights(
        labels[config.data.label_key].astype(np.int64), info.num_classes)
  return losses.make_loss_fn(info.multilabel, class_weights,
                             config.train.get("uncertain_policy", "ignore"))


def setup_run(config, workdir: str, record_run: bool = True) -> Run:
  """Builds data, model, optimizer, jitted steps and the checkpointer for `config`.

  `record_run`: a training run, whose records train_and_evaluate writes (write_run_records).
  It first checks that the workdir's config.json, if any, trains the same model
  (check_workdir_config) and config.train.early_stopping (its metric once the task is known).
  Evaluating an existing workdir (False) checks neither and leaves the training run's records
  alone (setup_trained_run: of a trained workdir).
  """
  if record_run:
    check_workdir_config(config, workdir)
    check_early_stopping(config.train.early_stopping)  # the metric once the task is known
  os.makedirs(workdir, exist_ok=True)
  builder = distributed.process_zero_first(lambda: pipeline.load_builder(config.data),
                                           "dataset prepared")
  # One pass over the training split serves the metadata statistics and the class weights.
  train_columns = functools.cache(lambda: pipeline.read_fields(
      builder.as_data_source("train"), pipeline.statistics_fields(config.data)))
  image_section = config.model.get("image", None) if "image" in config.model.get(
      "modalities", ("image",)) else None
  preprocessor = pipeline.fit_preprocessor(
      config.data, builder, workdir, train_columns, pretrained.init_from(config.model, "text"),
      image_channels=image_section.get("in_channels", None) if image_section else None)
  info = pipeline.task_info(config.data, builder, preprocessor)
  train_labels = train_columns()[config.data.label_key]
  pipeline.check_labels(np.stack([np.asarray(v) for v in train_labels]), info,
                        f"the training split of {config.data.name}")
  preprocessor.task = info
  if record_run:
    check_early_stopping(config.train.early_stopping, metric_names(info, config))
  model = model_build.build_model(model_config_for(config.model, info))
  mesh = sharding.make_mesh()
  batch_size = config.data.batch_size
  sharding.check_batch_size(batch_size, mesh, "config.data.batch_size")
  steps_per_epoch = info.split_sizes["train"] // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"training split has {info.split_sizes['train']} examples, fewer than one "
                     f"batch of {batch_size}; lower config.data.batch_size")
  total_steps = steps_from(config, steps_per_epoch, "num", None) or 1
  warmup = steps_from(config, steps_per_epoch, "warmup", 0)
  params_shape = init_variables_shape(model, sample_batch(preprocessor, builder))
  tx, schedule = optimizers.make_optimizer(config.optimizer, params_shape["params"],
                                           total_steps, warmup)
  loss_fn = make_loss(config, info, train_columns)
  train_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn),
                     donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(eval_step, model=model))
  checkpointer = checkpointing.Checkpointer(
      workdir, async_save=config.train.get("async_checkpoints", True))
  return Run(config, workdir, builder, preprocessor, info, model, mesh, tx, schedule,
             steps_per_epoch, total_steps, train_fn, eval_fn, loss_fn, checkpointer,
             writer.MetricsWriter(workdir, enabled=jax.process_index() == 0))


class WorkdirConfigMismatch(ValueError):
  """A workdir trained (config.json) with a config that trains another model."""


def check_workdir_config(config, workdir: str) -> None:
  """WorkdirConfigMismatch listing the differing keys (old -> new) when `workdir` holds a
  config.json whose trained-model settings differ from `config`'s; nothing without one. Keys
  only one side has are named in a warning, not refused (a config of another jaxmm version)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirConfigMismatch(f"{path} is unreadable ({e}); use a new --workdir, or delete "
                                f"{workdir} to train from scratch") from e
  new = json.loads(config.to_json_best_effort())
  diffs = config_lib.differences(config_lib.model_settings(old),
                                   config_lib.model_settings(new))
  # A key only one side has is a setting added or removed by another jaxmm version, not a
  # changed one: it is named, and the run resumes.
  one_sided = [key for key, a, b in diffs if config_lib.MISSING in (a, b)]
  if one_sided and jax.process_index() == 0:
    warnings.warn(f"{path} and this run's config differ in keys only one of them has (another "
                  f"jaxmm version?): {one_sided}; resuming", RuntimeWarning, stacklevel=2)
  diffs = [d for d in diffs if d[0] not in one_sided]
  if diffs:
    listed = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in diffs)
    raise WorkdirConfigMismatch(
        f"{workdir} was trained with another config ({path}); resuming would mix two models. "
        f"Differing keys (workdir -> this run): {listed}. Use a new --workdir for this config, "
        f"or delete {workdir} to train it from scratch (or rerun with the workdir's config).")


ES_MODES = ("max", "min")


def metric_names(info: pipeline.TaskInfo, config) -> list[str]:
  """The names train.early_stopping.metric may take for the task: the scalar metrics of its
  metrics function (of two dummy rows, so the list cannot drift from what validation
  returns; num_examples is a count) and "loss"."""
  k = info.num_classes
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if info.multilabel:
      values = metrics_lib.masked_multilabel_metrics(
          np.zeros((2, k)), np.zeros((2, k), np.int64), info.class_names,
          config.train.get("uncertain_policy", "ignore"))
    else:
      values = metrics_lib.multiclass_metrics(np.zeros((2, k)), np.arange(2) % k,
                                              info.class_names)
  return sorted(set(metrics_lib.headline(values)) - {"num_examples"}) + ["loss"]


def check_early_stopping(es, valid_metrics=None) -> None:
  """ValueError, before any step, for a config.train.early_stopping whose mode is not in
  ES_MODES, whose patience is negative or whose metric is not in `valid_metrics` (unchecked
  when None: metric_names needs the task)."""
  mode, metric, patience = es.get("mode", "max"), es.get("metric"), es.get("patience")
  if mode not in ES_MODES:
    raise ValueError(f"config.train.early_stopping.mode={mode!r}; valid: {list(ES_MODES)}."
                     f"{config_lib.closest(str(mode), ES_MODES)}")
  if valid_metrics is not None and metric not in valid_metrics:
    raise ValueError(f"config.train.early_stopping.metric={metric!r} is not a validation metric "
                     f"of this task; valid: {list(valid_metrics)}."
                     f"{config_lib.closest(str(metric), valid_metrics)}")
  if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int)
                               or patience < 0):
    raise ValueError(f"config.train.early_stopping.patience={patience!r}; give an int >= 0 "
                     f"(0 = no early stopping)")


def sample_batch(preprocessor, builder, size: int = 2) -> dict:
  """A tiny real batch (model inputs only) used to initialise parameters."""
  try:
    batch = next(pipeline.eval_batches(builder.as_data_source("train"), preprocessor,
                                       batch_size=size))
  except pipeline.BadBatch as e:
    raise e.at(f"the first {size} training examples (read to initialise the model)") from e
  return {k: v for k, v in batch.items() if k in pipeline.MODEL_KEYS}


def init_variables_shape(model, batch: dict) -> dict:
  """Shapes and dtypes of the model's variables, without computing them."""
  return jax.eval_shape(functools.partial(model.init, train=False),
                        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)


def create_state(run: Run, load_pretrained: bool = True) -> TrainState:
  """Initialises parameters from `config.seed` and replicates the state over the mesh.

  With `load_pretrained`, encoders with a `model.<m>.init_from` start from those weights
  (pretrained.load_pretrained); a restore template does not need them.
  """
  key = jax.random.key(run.config.seed)
  init_key, dropout_key, step_key = jax.random.split(key, 3)
  batch = sample_batch(run.preprocessor, run.builder)
  variables = jax.jit(functools.partial(run.model.init, train=False))(
      {"params": init_key, "dropout": dropout_key}, batch)
  if load_pretrained:
    variables = pretrained.load_pretrained(run.config.model, variables)
  params = variables["params"]
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=run.tx.init(params), rng=jax.random.key_data(step_key))
  return sharding.replicate(state, run.mesh)


def restore_or_init(run: Run) -> tuple[TrainState, dict]:
  """The latest checkpoint if there is one (loop record too), else a fresh state.

  Best checkpoints newer than the restored step (the newer latest ones damaged, or never
  committed) are set aside: the resumed run trains those steps again and saves their best anew.
  """
  state = create_state(run, load_pretrained=run.checkpointer.latest_step() is None)
  restored = run.checkpointer.restore(checkpointing.abstract_like(state))
  if restored is None:  # a run killed before its first checkpoint starts over: drop its log
    run.checkpointer.set_aside_best_after(0)
    run.writer.truncate_after(0)
    return state, {"best_value": None, "best_step": None, "bad_evals": 0, "stopped": False}
  state, record = restored
  run.checkpointer.set_aside_best_after(int(state.step))
  run.writer.truncate_after(int(state.step))
  repair_best(run, state, record)
  return state, record


def write_run_records(run: Run) -> None:
  """config.json, env_info.json and requirements.lock of a training run (process 0); written
  after the checks and the restore, so a refused run leaves the workdir's records as they were."""
  if jax.process_index() == 0:
    writer.write_run_info(run.workdir, run.config.to_json_best_effort(indent=2), run.config.seed)


def repair_best(run: Run, state: TrainState, record: dict) -> None:
  """Re-saves the best checkpoint when a run was killed between saving an improved step as the
  latest checkpoint and as the best one: the record restored with that step names it best_step,
  and the restored state is that best state."""
  best_step = record.get("best_step")
  if best_step is None or run.checkpointer.latest_step("best") == best_step:
    return
  if best_step == int(state.step):
    run.checkpointer.save_best(best_step, state, record)
    run.checkpointer.wait()


def predict(run: Run, state: TrainState, split: str, extra_fields: tuple = ()) -> dict:
  """Logits, labels and example indices for a whole split (padding removed), on every process.

  Each process reads its share of every global batch (pipeline.eval_batches); the rows of all
  processes are gathered back, so the result is in split order everywhere.
  """
  source = run.builder.as_data_source(split)
  batch_size = run.config.data.get("eval_batch_size", run.config.data.batch_size)
  sharding.check_batch_size(batch_size, run.mesh, "config.data.eval_batch_size")
  if not len(source):
    raise ValueError(f"the {split} split of {run.config.data.name} is empty")
  count = jax.process_count()
  batches = pipeline.eval_batches(source, run.preprocessor, batch_size=batch_size // count,
                                  extra_fields=extra_fields, process_index=jax.process_index(),
                                  process_count=count)
  outs = {"logits": [], "label": [], "index": []}
  outs.update({f: [] for f in extra_fields})
  bar = tqdm(total=-(-len(source) // batch_size), desc=f"predict {split}", leave=False,
             disable=not run.config.train.get("progress", True) or jax.process_index() != 0)
  try:
    for batch in batches:
      device_batch = sharding.shard_batch(
          {k: v for k, v in batch.items() if k in pipeline.MODEL_KEYS}, run.mesh)
      logits = run.eval_fn(state, device_batch)
      host = {k: batch[k] for k in ("label", "index", "weight") + tuple(extra_fields)}
      host["logits"] = logits if count > 1 else jax.device_get(logits)
      host = {k: distributed.gather_rows(v) for k, v in host.items()}
      keep = host.pop("weight") > 0
      for key in outs:
        outs[key].append(np.asarray(host[key])[keep])
      bar.update(1)
  except pipeline.BadBatch as e:
    raise e.at(f"the {split} split") from e
  finally:
    bar.close()
  order = np.argsort(np.concatenate(outs["index"]), kind="stable")
  return {k: np.concatenate(v)[order] for k, v in outs.items()}


def compute_metrics(run: Run, logits: np.ndarray, labels: np.ndarray,
                    where: str = "metrics") -> dict:
  """The task's metrics; a non-finite logit row is a ValueError naming `where` and the rows."""
  if run.info.multilabel:
    return metrics_lib.masked_multilabel_metrics(
        logits, labels, run.info.class_names, run.config.train.get("uncertain_policy", "ignore"),
        where=where)
  return metrics_lib.multiclass_metrics(logits, labels, run.info.class_names, where=where)


def write_predictions(run: Run, split: str, pred: dict) -> str:
  """`<workdir>/predictions/<split>.npz`: logits, label, index and the group fields (text as
  str arrays, so the file loads without pickle); process 0 only, atomically."""
  path = os.path.join(run.workdir, "predictions", f"{split}.npz")
  if jax.process_index() == 0:
    arrays = {k: (v.astype(str) if v.dtype == object else v) for k, v in pred.items()}
    write_npz_atomic(path, arrays)
  return path


def evaluate_split(run: Run, state: TrainState, split: str) -> dict:
  """Loss and metrics of the model on a split; its predictions go to predictions/<split>.npz
  once its logits are found finite (a diverged model's replaced the last good ones, which
  fairness and the report read; the ValueError names the step)."""
  pred = predict(run, state, split, pipeline.group_fields(run.config.data, run.builder))
  result = compute_metrics(run, pred["logits"], pred["label"],
                           f"{run.workdir}: the {split} split's logits of the model at step "
                           f"{int(state.step)} (predictions/{split}.npz is left as it was)")
  result["loss"] = float(run.loss_fn(jnp.asarray(pred["logits"]), jnp.asarray(pred["label"])))
  write_predictions(run, split, pred)
  return result


def log_train_metrics(run: Run, pending: list, first_step: int) -> None:
  """Fetches the pending per-step metrics (the only host sync), checks them, logs the mean."""
  values = jax.device_get(pending)
  for offset, m in enumerate(values):
    if not bool(m["finite"]):
      index = first_step + offset  # 0-based position of the batch in the training stream
      raise FloatingPointError(
          f"non-finite loss ({float(m['loss'])}), gradient norm ({float(m['grad_norm'])}) or "
          f"updated parameters at step {index + 1} (training batch index {index}, epoch "
          f"{index // run.steps_per_epoch}); the checkpoints in "
          f"{os.path.join(run.workdir, 'checkpoints')}, of earlier steps, are kept")
  step = first_step + len(values)
  run.writer.write(step, "train", {
      "loss": float(np.mean([m["loss"] for m in values])),
      "grad_norm": float(np.mean([m["grad_norm"] for m in values])),
      "learning_rate": float(run.schedule(step - 1)),
      "epoch": step / run.steps_per_epoch})


def early_stopping_update(config, record: dict, value: float, step: int) -> tuple[dict, bool]:
  """Updates the early-stopping record with a validation value; returns (record, improved).

  The run stops after `patience` evaluations in a row without improvement; patience 0 or None
  never stops (the best step is still tracked)."""
  es = config.train.early_stopping
  sign = 1.0 if es.get("mode", "max") == "max" else -1.0
  best = record["best_value"]
  improved = value == value and (best is None or
                                 sign * (value - best) > float(es.get("min_delta", 0.0)))
  record = dict(record)
  if improved:
    record.update(best_value=float(value), best_step=int(step), bad_evals=0)
  else:
    record["bad_evals"] += 1
  patience = es.get("patience", None) or 0
  record["stopped"] = bool(patience > 0 and record["bad_evals"] >= patience)
  return record, improved


def run_validation(run: Run, state: TrainState, record: dict) -> tuple[dict, bool]:
  step = int(state.step)
  val = evaluate_split(run, state, "validation")
  run.writer.write(step, "validation", metrics_lib.headline(val))
  metric = run.config.train.early_stopping.metric
  if metric not in val:
    raise KeyError(f"train.early_stopping.metric {metric!r} is not a validation metric; "
                   f"valid: {sorted(metrics_lib.headline(val))}")
  return early_stopping_update(run.config, record, val[metric], step)


def is_eval_step(run: Run, step: int) -> bool:
  every = steps_from(run.config, run.steps_per_epoch, "eval_every", run.steps_per_epoch)
  return step == run.total_steps or (every > 0 and step % every == 0)


def is_checkpoint_step(run: Run, step: int) -> bool:
  every = steps_from(run.config, run.steps_per_epoch, "checkpoint_every", run.steps_per_epoch)
  return step == run.total_steps or (every > 0 and step % every == 0)


def train_loop(run: Run, state: TrainState, record: dict) -> tuple[TrainState, dict]:
  """Runs steps from `state.step` to the end (or early stop), evaluating and checkpointing."""
  start = int(state.step)
  if record.get("stopped") or start >= run.total_steps:
    return state, record
  batches = pipeline.train_batches(
      run.builder.as_data_source("train"), run.preprocessor,
      global_batch_size=run.config.data.batch_size, seed=run.config.seed, start_step=start,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=run.config.data.get("num_threads", 2))
  # Host-to-device copies run ahead of the steps; the only host sync is at logging intervals.
  batches = sharding.prefetch_to_mesh(batches, run.mesh, TRAIN_KEYS,
                                      run.config.data.get("prefetch_to_device", 2))
  log_every = int(run.config.train.get("log_every_steps", 50))
  pending, first = [], start
  with tqdm(total=run.total_steps, initial=start, desc=f"train {os.path.basename(run.workdir)}",
            disable=not run.config.train.get("progress", True), leave=False) as bar:
    for step in range(start + 1, run.total_steps + 1):
      try:
        batch = next(batches)
      except pipeline.BadBatch as e:  # names the examples; the step says where in the run
        raise e.at(f"training step {step} (batch index {step - 1}, epoch "
                   f"{(step - 1) // run.steps_per_epoch})") from e
      state, m = run.train_fn(state, batch)
      pending.append(m)
      bar.update(1)
      eval_now, ckpt_now = is_eval_step(run, step), is_checkpoint_step(run, step)
      if step % log_every == 0 or eval_now or ckpt_now:
        log_train_metrics(run, pending, first)
        pending, first = [], step
      improved = False
      if eval_now:
        record, improved = run_validation(run, state, record)
      if ckpt_now or improved or record["stopped"]:
        run.checkpointer.save(step, state, record, best=improved)
      if record["stopped"]:
        break
  run.checkpointer.wait()
  return state, record


def final_evaluation(run: Run, state: TrainState, record: dict) -> dict:
  """Evaluates the best checkpoint (or, with none, the final state) on validation and test.

  results.json's `evaluated_step` is the step of the state evaluated. A best checkpoint that is
  not the record's best step (set aside as unreadable, or deleted) is not evaluated under the
  best step's name: the run warns and evaluates the final state.
  """
  best_step, saved_best = record.get("best_step"), run.checkpointer.latest_step("best")
  restored = None
  if best_step is not None and saved_best == best_step:
    restored = run.checkpointer.restore(checkpointing.abstract_like(state), which="best")
  elif best_step is not None:
    warnings.warn(f"{run.workdir}: the best checkpoint (step {best_step}) is missing from "
                  f"checkpoints/best (which holds step {saved_best});"
                  f" evaluating the final state (step {int(state.step)}) instead",
                  RuntimeWarning, stacklevel=2)
  best_state = restored[0] if restored is not None else state
  results = {"best_step": best_step, "final_step": int(state.step),
             "evaluated_step": int(best_state.step),
             "early_stopped": bool(record.get("stopped")),
             "task": pipeline.to_jsonable(run.info)}
  for split in run.config.train.get("final_eval_splits", ("validation", "test")):
    results[split] = evaluate_split(run, best_state, split)
    run.writer.write(int(state.step), f"{writer.FINAL_PREFIX}{split}",
                     metrics_lib.headline(results[split]))
  if jax.process_index() == 0:
    write_text_atomic(os.path.join(run.workdir, "results.json"),
                               writer.dumps(results))
    which = ("best" if restored is not None else "final") + f" step {results['evaluated_step']}"
    for split in run.config.train.get("final_eval_splits", ("validation", "test")):
      print_headline(f"{run.workdir} {which}, {split}", results[split])
  return results


def print_headline(label: str, metrics: dict) -> None:
  shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics_lib.headline(metrics).items()
                    if k != "num_examples")
  print(f"{label}: {shown}", flush=True)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if possible), then evaluates the best checkpoint."""
  run = setup_run(config, workdir)
  try:
    state, record = restore_or_init(run)
    write_run_records(run)
    state, record = train_loop(run, state, record)
    return final_evaluation(run, state, record)
  finally:
    run.checkpointer.close()


def abstract_state(run: Run) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the run's state, from `jax.eval_shape`: a
  restore target that initialises and compiles nothing (about 20 s less on 2 CPU cores)."""
  template = jax.eval_shape(functools.partial(create_state, run, load_pretrained=False))
  replicated = sharding.replicated(run.mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      template)


def setup_trained_run(config, workdir: str) -> Run:
  """setup_run of a trained workdir, for the modes that use its checkpoint (eval, saliency,
  evaluate_explanations, baselines, shap); FileNotFoundError, before the dataset is prepared
  or anything is written, when it holds none (an analysis run had created the workdir and
  written it a metadata encoder, which a later training run there then used)."""
  if not checkpointing.has_checkpoint(workdir):
    raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}; train "
                            f"first with --mode=train (or give the --workdir of a trained run)")
  return setup_run(config, workdir, record_run=False)


def restore_checkpoint(run: Run, which: str = "best") -> TrainState:
  """The `which` ("best" / "latest") checkpoint of a trained workdir; FileNotFoundError if none."""
  restored = run.checkpointer.restore(abstract_state(run), which=which)
  if restored is None:
    raise FileNotFoundError(f"no {which} checkpoint under "
                            f"{os.path.join(run.workdir, 'checkpoints')}; train first with "
                            f"--mode=train")
  return restored[0]


def evaluate(config, workdir: str, which: str = "best") -> dict:
  """Evaluates a trained workdir's checkpoint on `config.eval.splits`; writes eval_<split>.json."""
  run = setup_trained_run(config, workdir)
  try:
    state = restore_checkpoint(run, which)
    out = {}
    for split in config.get("eval", {}).get("splits", ("test",)):
      out[split] = evaluate_split(run, state, split)
      write_text_atomic(os.path.join(workdir, f"eval_{split}.json"),
                                 writer.dumps(out[split]))
      print_headline(f"{workdir} {which} checkpoint (step {int(state.step)}), {split}",
                     out[split])
    return out
  finally:
    run.checkpointer.close()
