r"""Sweeps: one run per point of a grid of config overrides, then mean and t interval per row.

  python launch/sweep.py --config=configs/synthetic_derm.py --workdir=runs/fusion \
      --grid 'model.fusion=concat,late,film' 'seed=0,1,2'

An axis is a config path with comma-separated values (commas inside brackets or quotes do not
split: 'model.modalities=("image",),("image","meta")'), or `:name`, an argument of the config
file (':model=image,meta,concat,late' runs `configs/x.py:model=image`, ...). Every path and
value is read as `--config.path=value` will read it and checked against the loaded config
before anything runs, and each point's config is checked by building its model and optimizer
(check_values). The points are the cross product of the axes; point
`model.fusion=late,seed=1` runs, in `<workdir>/model.fusion=late,seed=1`,

  python -m jaxmm.main --config=... --workdir=<workdir>/model.fusion=late,seed=1 --mode=train \
      --config.model.fusion=late --config.seed=1

one point after the other; a point whose results.json exists is skipped, so rerunning the
command resumes the sweep. `--print` prints the commands instead, for a cluster; with
`--launcher='sbatch launch/slurm.sh'` they follow launch/*.sh's convention:
`sbatch launch/slurm.sh CONFIG WORKDIR --mode=train --config.model.fusion=late ...`.

The replicate axis (`seed`) is averaged over and the other axes make the rows of
`sweep_summary.{csv,json,md}`: per row and metric, n, mean, standard deviation and the
Student-t interval. `sweep_points.csv` holds every point's metrics, `sweep.json` the sweep itself
(what `--summarize` reads back), `sweep_status.json` each point's status in the last run of
each mode (a later `--summarize` leaves out the points that failed) and `logs/<point>.log` each
run's output. The metrics are those
the mode wrote: `--mode=train`'s results.json, `--mode=eval`'s eval_<split>.json; a point that
failed has none, and the points of other modes run without a summary.
"""
import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats
from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_path, tuple_parser

from jaxmm.data.atomic import write_text_atomic
from jaxmm.evaluation import stats
from jaxmm.train import config_lib
from jaxmm.train import metrics as metrics_lib

REPLICATE_AXIS = "seed"
DEFAULT_METRICS = ("test.accuracy", "test.macro_f1", "test.roc_auc")
RESULTS_FILE = "results.json"
# The file whose presence marks a point as finished, per mode; other modes always run.
DONE_FILE = {"train": RESULTS_FILE}
# What the summarised modes write in a point's folder (jaxmm.train.loop): train, results.json
# ({split: metrics} for config.train.final_eval_splits); eval, eval_<split>.json (that split's
# metrics) for each of config.eval.splits. Other modes' points run but are not summarised.
RESULTS_FILES = {"train": RESULTS_FILE, "eval": "eval_{split}.json"}
MANIFEST_FILE = "sweep.json"
# Each point's status in the last run of each mode ({mode: {point: record}}), written after
# every point, so a later --summarize leaves out the points that failed there.
STATUS_FILE = "sweep_status.json"
ARG = ":"  # an axis ":name" sets `name` in the config file's argument (configs/x.py:name=v)
# ml_collections' parsers for `--config.path=value`, by the type of the field (config_flags'
# _FIELD_TYPE_TO_PARSER), so a grid value is typed exactly as the run will type it.
PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(),
           float: flags.FloatParser(), str: flags.ArgumentParser(),
           tuple: tuple_parser.TupleParser()}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_BREAK = re.compile(rb"\r\n|\r|\n")
_MAX_NAME = 150


@dataclasses.dataclass(frozen=True)
class Axis:
  """One grid axis: a config path (or ":arg") and its values, as written and as typed."""
  path: str
  texts: tuple
  values: tuple


@dataclasses.dataclass(frozen=True)
class Point:
  """One run: its folder name and {axis path: value} as written and as typed."""
  name: str
  texts: dict
  values: dict


@dataclasses.dataclass(frozen=True)
class Plan:
  """A checked sweep: the config spec as given, its axes, the fixed `--set` (path, text)
  overrides and the points in grid order (the last axis varies fastest)."""
  config: str
  workdir: str
  axes: tuple
  fixed: tuple
  points: tuple


@dataclasses.dataclass(frozen=True)
class Options:
  """How points run and how the summary is made."""
  mode: str = "train"
  python: str = sys.executable
  module: str = "jaxmm.main"
  launcher: str = ""  # a launch/*.sh-style script: LAUNCHER CONFIG[:ARG] WORKDIR [flags]
  prefix: str = ""  # words before `python -m <module> ...` (srun, nice, env X=1)
  metrics: tuple = DEFAULT_METRICS
  confidence: float = 0.95
  replicate_axis: str = REPLICATE_AXIS


# ---------------------------------------------------------------------------------------------
# The grid: parsing and checking before anything runs.


def split_values(text: str) -> list[str]:
  """Splits "a, b,(1, 2)" at the commas outside brackets and quotes: ["a", "b", "(1, 2)"]."""
  parts, depth, quote, start = [], 0, None, 0
  for i, char in enumerate(text):
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [part.strip() for part in parts]


def split_assignment(text: str, where: str) -> tuple[str, str]:
  """"path=value" -> (path, value); raises naming `where` when there is no path or "="."""
  path, sep, value = text.partition("=")
  if not sep or not path.strip():
    raise ValueError(f"{where} {text!r}: expected PATH=VALUE, e.g. 'model.fusion=concat,late' "
                     f"or 'seed=0,1,2'")
  return path.strip(), value.strip()


def parse_axis(text: str) -> tuple[str, list[str]]:
  """"model.fusion=concat,late" -> ("model.fusion", ["concat", "late"]); an empty or repeated
  value raises naming the axis."""
  path, value = split_assignment(text, "--grid axis")
  texts = split_values(value)
  if "" in texts:
    raise ValueError(f"--grid axis {text!r}: empty value in {value!r}")
  repeated = sorted({t for t in texts if texts.count(t) > 1})
  if repeated:
    raise ValueError(f"--grid axis {text!r}: values {repeated} are given more than once")
  return path, texts


def spec_with_args(spec: str, args: dict) -> str:
  """`configs/x.py:smoke` with {"model": "late"} -> `configs/x.py:smoke,model=late`; a key
  already in the argument is replaced where it stands."""
  path, _, arg = spec.partition(":")
  tokens = [token.strip() for token in arg.split(",") if token.strip()]
  for key, value in args.items():
    keys = [token.partition("=")[0] for token in tokens]
    if key in keys:
      tokens[keys.index(key)] = f"{key}={value}"
    else:
      tokens.append(f"{key}={value}")
  return f"{path}:{','.join(tokens)}" if tokens else path


def load_variant(spec: str, args: dict):
  """The config of `spec` with `args` set in its argument; errors name the spec."""
  full = spec_with_args(spec, args)
  for key, value in args.items():
    if "=" in value or "," in value:
      raise ValueError(f"config argument {ARG}{key}={value!r}: a value of the config file's "
                       f"argument cannot hold ',' or '='")
  try:
    return config_lib.load_config_file(full)
  except ValueError as e:
    raise ValueError(f"--config={full}: {e}") from None


def typed_value(config, path: str, text: str) -> Any:
  """`text` read as `--config.<path>=<text>` reads it, by the type of the config's field;
  an unknown path raises with the valid keys there and the closest one."""
  config_lib.check_override_paths(config, [f"--config.{path}="])
  kind = config_path.get_type(path, config)
  if isinstance(kind, type) and issubclass(kind, config_dict.ConfigDict):
    keys = sorted(config_path.get_value(path, config).keys())
    raise ValueError(f"--config.{path} is a section, not a value; sweep one of its keys: {keys}")
  if kind not in PARSERS:
    raise ValueError(f"--config.{path}: a {kind.__name__} field cannot be set from the command "
                     f"line (types that can: {[t.__name__ for t in PARSERS]})")
  try:
    return PARSERS[kind].parse(text)
  except (ValueError, TypeError, SyntaxError) as e:
    raise ValueError(f"--config.{path}={text}: not a valid {kind.__name__} ({e})") from None


def check_metrics(configs, metrics: Sequence[str], mode: str = "train") -> None:
  """A "split.name" metric's split must be one that `mode` evaluates, so a misspelt split
  fails before the sweep runs: for train, one of `config.train.final_eval_splits`
  (results.json); for eval, one of `config.eval.splits` (eval_<split>.json, which hold no
  top-level numbers, so every metric names a split). Other modes are not summarised."""
  if mode not in RESULTS_FILES:
    return
  for config in configs:
    splits = mode_splits(config, mode)
    for metric in metrics:
      split, dot, _ = metric.partition(".")
      hint = config_lib.closest(split, splits)
      if mode == "eval" and not dot:
        raise ValueError(f"--metric {metric!r}: --mode=eval writes one eval_<split>.json per "
                         f"split; give SPLIT.NAME, e.g. 'test.accuracy'")
      if mode == "eval" and split not in splits:
        raise ValueError(f"--metric {metric!r}: --mode=eval writes no eval_{split}.json; it "
                         f"evaluates config.eval.splits: {list(splits)}.{hint}")
      if dot and splits and split not in splits:
        raise ValueError(f"--metric {metric!r}: results.json has no split {split!r}; splits: "
                         f"{list(splits)}.{hint}")


def mode_splits(config, mode: str) -> tuple:
  """The splits `mode` evaluates, with jaxmm.train.loop's defaults; () where train's config
  does not say (then any split is let through)."""
  if mode == "eval":
    return tuple(config.get("eval", {}).get("splits", ("test",)))
  return tuple(config.get("train", {}).get("final_eval_splits", ()))


def grid_points(axes: Sequence[Axis]) -> tuple:
  """The cross product of the axes as Points, last axis fastest; two points that would share
  a folder raise."""
  points, seen = [], {}
  for combo in itertools.product(*(range(len(axis.texts)) for axis in axes)):
    texts = {axis.path: axis.texts[i] for axis, i in zip(axes, combo)}
    values = {axis.path: axis.values[i] for axis, i in zip(axes, combo)}
    name = point_name(texts)
    if name in seen:
      raise ValueError(f"grid points {seen[name]} and {texts} would share the folder {name!r}; "
                       f"make their values differ in letters or digits")
    seen[name] = texts
    points.append(Point(name, texts, values))
  return tuple(points)


def point_name(texts: dict) -> str:
  """"model.fusion=late,seed=1": the point's folder; characters other than letters, digits
  and ._=,+- become "_", an argument axis ":model" is written "model", and a very long name
  ends with a hash of the whole."""
  name = _UNSAFE.sub("_", ",".join(f"{path.lstrip(ARG)}={text}" for path, text in texts.items()))
  if len(name) > _MAX_NAME:
    name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
  return name


def make_plan(config: str, workdir: str, grid: Sequence[str], sets: Sequence[str] = (),
              metrics: Sequence[str] = (), mode: str = "train") -> Plan:
  """Parses `--grid` axes and `--set` overrides and checks every path and value against the
  config, loaded once per combination of argument (":name") values; raises ValueError naming
  the bad axis, value (two texts of one value too) or metric split (of `mode`'s results)."""
  if not grid:
    raise ValueError("--grid: give at least one axis, e.g. --grid 'seed=0,1,2'")
  parsed = [parse_axis(text) for text in grid]
  fixed = [split_assignment(text, "--set") for text in sets]
  paths = [path for path, _ in parsed + fixed]
  repeated = sorted({path for path in paths if paths.count(path) > 1})
  if repeated:
    raise ValueError(f"{repeated} set more than once across --grid and --set")
  fixed_args = {path[1:]: text for path, text in fixed if path.startswith(ARG)}
  arg_axes = [(path[1:], texts) for path, texts in parsed if path.startswith(ARG)]
  configs = [load_variant(config, {**fixed_args, **dict(zip([k for k, _ in arg_axes], combo))})
             for combo in itertools.product(*(texts for _, texts in arg_axes))]
  for path, text in fixed:
    if not path.startswith(ARG):
      for variant in configs:
        typed_value(variant, path, text)
  axes = tuple(Axis(path, tuple(texts), tuple(axis_values(configs, path, texts)))
               for path, texts in parsed)
  for axis in axes:
    check_distinct(axis)
  check_metrics(configs, metrics, mode)
  points = grid_points(axes)
  for point in points:
    check_point(config, fixed, point)
  return Plan(config, workdir, axes, tuple(fixed), points)


def check_point(spec: str, fixed: Sequence[tuple[str, str]], point: Point) -> None:
  """The point's config (its arguments, then the `--set` and axis values) must pass
  check_values: a misspelt value (`model.fusion=lat`) fails here, before any point runs, not
  once per point."""
  args = {path[1:]: text for path, text in list(fixed) + list(point.texts.items())
          if path.startswith(ARG)}
  config = load_variant(spec, args)
  values = {path: typed_value(config, path, text) for path, text in fixed
            if not path.startswith(ARG)}
  values.update({path: v for path, v in point.values.items() if not path.startswith(ARG)})
  for path, value in values.items():
    config_path.set_value(path, config, value)
  try:
    check_values(config)
  except ValueError as e:
    raise ValueError(f"grid point {point.name}: {e}") from None


def check_values(config) -> None:
  """ValueError naming the first bad choice of the config, from the functions training runs:
  the dataset's builder is made, unprepared (name, builder config and overrides, and the
  fields the data config names), the model is built (modalities, fusion, dtype, encoders,
  head; num_classes, which the data fills in, set to 1), the optimizer and schedule are made
  (freeze patterns, which need the parameters, left out) and train.class_weights is checked.
  Imported here, so that the sweep module itself stays light."""
  from jaxmm.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxmm.models import build  # pylint: disable=g-import-not-at-top
  from jaxmm.train import loop, optimizers  # pylint: disable=g-import-not-at-top
  if config.get("data") and config.data.get("name"):
    pipeline.configured_builder(config.data)
  if config.get("model"):
    model = config.model.copy_and_resolve_references()
    with model.unlocked():
      model.num_classes = max(int(model.get("num_classes") or 1), 1)
    build.build_model(model)
  if config.get("optimizer"):
    opt = config.optimizer.copy_and_resolve_references()
    with opt.unlocked():
      opt.freeze = ()
    optimizers.make_optimizer(opt, {}, total_steps=2, warmup_steps=0)
  loop.check_class_weights(config.get("train", {}).get("class_weights"))


def axis_values(configs, path: str, texts: Sequence[str]) -> list:
  """The typed values of an axis, each checked against every config (the first one's type
  is kept); the values of an argument axis stay text, as the config file reads them."""
  if path.startswith(ARG):
    return list(texts)
  values = []
  for text in texts:
    typed = [typed_value(config, path, text) for config in configs]
    values.append(typed[0])
  return values


def check_distinct(axis: Axis) -> None:
  """Two texts of one value (`1e-3` and `0.001` of a float) would run the same config in two
  folders and make one row of the summary: raises naming both texts."""
  for (i, a), (j, b) in itertools.combinations(enumerate(axis.values), 2):
    if a == b or repr(a) == repr(b):
      raise ValueError(f"--grid axis {axis.path!r}: values {axis.texts[i]!r} and "
                       f"{axis.texts[j]!r} are the same value, {a!r}; give each value once")


# ---------------------------------------------------------------------------------------------
# Commands and running.


def point_workdir(plan: Plan, point: Point) -> str:
  return os.path.join(plan.workdir, point.name)


def point_command(plan: Plan, point: Point, options: Options) -> list[str]:
  """`[prefix] python -m <module> --config=C --workdir=W --mode=M --config.path=value ...`
  (one override per fixed --set and axis), or with a launcher, the launch/*.sh convention:
  `<launcher words> C W --mode=M --config.path=value ...`."""
  assignments = [*plan.fixed, *point.texts.items()]
  args = {path[1:]: text for path, text in assignments if path.startswith(ARG)}
  spec, workdir = spec_with_args(plan.config, args), point_workdir(plan, point)
  run_flags = [f"--mode={options.mode}", *(f"--config.{path}={text}" for path, text
                                           in assignments if not path.startswith(ARG))]
  if options.launcher:
    return [*shlex.split(options.launcher), spec, workdir, *run_flags]
  return [*shlex.split(options.prefix), options.python, "-m", options.module,
          f"--config={spec}", f"--workdir={workdir}", *run_flags]


def child_env() -> dict:
  """This environment with this checkout's jaxmm first on PYTHONPATH (so a point imports the
  same jaxmm from any working directory) and unbuffered output (so it streams)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
  return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def output_segments(stream):
  """Yields (text, end) for each piece of a child's output that ends in "\n" or "\r" (progress
  bars redraw with "\r"); "\r\n" counts as "\n", unterminated output at the end as a line."""
  pending = b""
  for chunk in iter(lambda: stream.read1(1 << 16), b""):
    pending += chunk
    start = 0
    for match in _BREAK.finditer(pending):
      if match.group() == b"\r" and match.end() == len(pending):
        break  # may be the first half of a "\r\n" still to come
      end = "\r" if match.group() == b"\r" else "\n"
      yield pending[start:match.start()].decode("utf-8", "replace"), end
      start = match.end()
    pending = pending[start:]
  if pending.strip(b"\r"):
    yield pending.strip(b"\r").decode("utf-8", "replace"), "\n"


def run_point(command: Sequence[str], prefix: str, log_path: str, out) -> int:
  """Runs `command`, copying its output (stdout and stderr) to `out` with `prefix` on every
  line (progress redraws, ending in "\r", only to a terminal); returns its exit status. The
  lines go to `log_path`, written when the point ends, however it ends."""
  lines = []
  redraw = getattr(out, "isatty", lambda: False)()  # a file or a pipe gets whole lines only
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=child_env())
  try:
    for text, end in output_segments(process.stdout):
      if end == "\n" or redraw:
        out.write(f"{prefix}{text}{end}")
        out.flush()
      if end == "\n":
        lines.append(f"{text}\n")
    return process.wait()
  finally:
    if process.poll() is None:  # interrupted: do not leave the run behind
      process.terminate()
      process.wait()
    write_text_atomic(log_path, "".join(lines))


def is_done(plan: Plan, point: Point, mode: str) -> bool:
  done_file = DONE_FILE.get(mode)
  return bool(done_file) and os.path.exists(os.path.join(point_workdir(plan, point), done_file))


def run_or_skip(plan: Plan, point: Point, options: Options, label: str, out) -> dict:
  """Runs one point unless it is done; returns its status record (status, returncode, log)."""
  if is_done(plan, point, options.mode):
    out.write(f"[{label}] skipped: {DONE_FILE[options.mode]} exists\n")
    return {"status": "skipped"}
  command = point_command(plan, point, options)
  log = os.path.join(plan.workdir, "logs", f"{point.name}.log")
  out.write(f"[{label}] $ {shlex.join(command)}\n")
  returncode = run_point(command, f"[{label}] ", log, out)
  if returncode == 0 and options.mode in RESULTS_FILES:  # a misspelt --metric fails now
    read_metrics(results_files(plan, point, options), options.metrics)
  return {"status": "done" if returncode == 0 else "failed", "returncode": returncode,
          "log": log}


def run_sweep(plan: Plan, options: Options, out=None) -> int:
  """Runs every point in order (a failing one is recorded and the sweep goes on), writes the
  summary (for a summarised mode; else says there is none), and returns 0, or 1 naming the
  failed points."""
  out = out or sys.stdout
  write_manifest(plan, options)
  summarised = options.mode in RESULTS_FILES
  if summarised:
    check_metric_names(plan, options)
  statuses = {}
  for index, point in enumerate(plan.points):
    label = f"{index + 1}/{len(plan.points)} {point.name}"
    statuses[point.name] = run_or_skip(plan, point, options, label, out)
    write_statuses(plan, options.mode, statuses)
  if summarised:
    summarize(plan, options, statuses, out)
  else:
    out.write(f"no summary: {not_summarised(options.mode)}\n")
  failed = {name: s for name, s in statuses.items() if s["status"] == "failed"}
  for name, status in failed.items():
    out.write(f"FAILED {name}: exit status {status['returncode']}, log {status['log']}\n")
  if failed:
    out.write(f"{len(failed)} of {len(plan.points)} points failed: {', '.join(failed)}\n")
  out.flush()
  return 1 if failed else 0


def print_commands(plan: Plan, options: Options, out=None, notes=None) -> int:
  """Prints one shell command per point that is not done (for a cluster's queue; the points
  skipped are named on `notes`, stderr) and records the sweep so that `--summarize` collects
  it once the runs are done: the printed points' status becomes "printed", so an earlier
  local run's "failed" no longer hides the results the cluster writes."""
  out, notes = out or sys.stdout, notes or sys.stderr
  write_manifest(plan, options)
  statuses = {}
  for point in plan.points:
    if is_done(plan, point, options.mode):
      notes.write(f"skipped {point.name}: {DONE_FILE[options.mode]} exists\n")
      statuses[point.name] = {"status": "skipped"}
    else:
      out.write(shlex.join(point_command(plan, point, options)) + "\n")
      statuses[point.name] = {"status": "printed"}
  write_statuses(plan, options.mode, statuses)
  out.flush()
  return 0


# ---------------------------------------------------------------------------------------------
# Collecting results and the summary.


def flat_metrics(results: dict) -> dict:
  """Every number of a results.json: "split.name" for each split's headline metrics, "name"
  for top-level ones; a null (NaN written as JSON) reads as NaN."""
  out = {}
  for key, value in results.items():
    if isinstance(value, dict):
      scalars = metrics_lib.headline(value)
      out.update({f"{key}.{name}": math.nan if item is None else float(item)
                  for name, item in value.items() if item is None or name in scalars})
    elif value is None or isinstance(value, (int, float)):
      out[key] = math.nan if value is None else float(value)
  return out


def not_summarised(mode: str) -> str:
  """Why the points of `mode` get no summary, and which modes do."""
  return (f"--mode={mode} writes no metrics the sweep reads; it summarises --mode=train "
          f"(results.json) and --mode=eval (eval_<split>.json)")


def results_files(plan: Plan, point: Point, options: Options) -> dict:
  """{split: path} of the files holding the point's results under `options.mode`:
  {"": results.json} for train (the splits are inside), one eval_<split>.json per split of
  the metrics for eval."""
  workdir = point_workdir(plan, point)
  if options.mode == "eval":
    splits = dict.fromkeys(metric.partition(".")[0] for metric in options.metrics)
    return {split: os.path.join(workdir, RESULTS_FILES["eval"].format(split=split))
            for split in splits}
  return {"": os.path.join(workdir, RESULTS_FILES[options.mode])}


def read_metrics(files: dict, metrics: Sequence[str]) -> dict | None:
  """{metric: value} from the results files (results_files) read as one results.json, None
  where none exists; a metric they lack raises KeyError with the valid names and the closest
  one."""
  found = {split: path for split, path in files.items() if os.path.exists(path)}
  if not found:
    return None
  results = {}
  for split, path in found.items():
    with open(path) as f:
      loaded = json.load(f)
    results.update({split: loaded} if split else loaded)
  available = flat_metrics(results)
  for metric in metrics:
    if metric not in available:
      raise KeyError(f"--metric {metric!r} is not in {', '.join(found.values())}; valid "
                     f"metrics: {sorted(available)}.{config_lib.closest(metric, available)}")
  return {metric: available[metric] for metric in metrics}


def check_metric_names(plan: Plan, options: Options) -> None:
  """Reads the first point that has results, so a misspelt --metric fails before running."""
  for point in plan.points:
    if read_metrics(results_files(plan, point, options), options.metrics) is not None:
      return


def collect(plan: Plan, options: Options, statuses: dict) -> list[dict | None]:
  """Per point (grid order), its metrics from the files `options.mode` writes, or None where
  there are none or the point failed in this sweep (its files are an earlier run's)."""
  return [None if statuses.get(point.name, {}).get("status") == "failed"
          else read_metrics(results_files(plan, point, options), options.metrics)
          for point in plan.points]


def t_summary(values, confidence: float) -> dict:
  """n, mean, standard deviation (ddof 1) and the two-sided Student-t interval
  mean -/+ t_{(1 + confidence) / 2, n - 1} * std / sqrt(n) of the finite values; NaN where
  undefined (no values; fewer than 2 for std and interval)."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  n = int(values.size)
  mean = float(values.mean()) if n else math.nan
  if n < 2:
    return {"n": n, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
  std = float(values.std(ddof=1))
  half = float(scipy.stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
  return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def row_axes(plan: Plan, replicate_axis: str) -> list[Axis]:
  return [axis for axis in plan.axes if axis.path != replicate_axis]


def summary_rows(plan: Plan, records: Sequence[dict | None], options: Options) -> list[dict]:
  """One row per (combination of the non-replicate axes' values, metric), in grid order:
  the axes' typed values, "metric" and t_summary over the points that have results."""
  paths = [axis.path for axis in row_axes(plan, options.replicate_axis)]
  groups = {}
  for point, record in zip(plan.points, records):
    key = tuple(point.texts[path] for path in paths)
    groups.setdefault(key, (point, []))[1].append(record)
  rows = []
  for point, members in groups.values():
    for metric in options.metrics:
      values = [record[metric] for record in members if record is not None]
      rows.append({**{path: point.values[path] for path in paths}, "metric": metric,
                   **t_summary(values, options.confidence)})
  return rows


def summary_cell(row: dict, n: int) -> str:
  """"0.712 ± 0.025 [0.650, 0.774]"; "0.712 [-]" without an interval (n = 1); "-" without
  values; "(n=k)" added where this metric has fewer values than its row."""
  if row["n"] == 0:
    return "-"
  if row["n"] < 2:
    cell = f"{row['mean']:.3f} [-]"
  else:
    cell = f"{row['mean']:.3f} ± {row['std']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
  return cell if row["n"] == n else f"{cell} (n={row['n']})"


def wide_rows(rows: Sequence[dict], axes: Sequence[Axis], metrics: Sequence[str]) -> list[dict]:
  """The long summary rows as one line per row of the table: the axes' values as their texts
  in --grid (a float cell would print 1e-4 as 0.000), n, one cell per metric."""
  lines = {}
  for row in rows:
    key = tuple(axis_text(axis, row[axis.path]) for axis in axes)
    lines.setdefault(key, []).append(row)
  out = []
  for key, members in lines.items():
    n = max(row["n"] for row in members)
    cells = {row["metric"]: summary_cell(row, n) for row in members}
    out.append({**{axis.path: text for axis, text in zip(axes, key)}, "n": n,
                **{metric: cells[metric] for metric in metrics}})
  return out


def axis_text(axis: Axis, value) -> str:
  """The text in --grid of one of the axis's typed values (one per value: check_distinct)."""
  return axis.texts[[repr(v) for v in axis.values].index(repr(value))]


def markdown_table(lines: Sequence[dict], columns: Sequence[str]) -> str:
  """A GitHub markdown table of `columns`."""
  def row(values) -> str:
    return "| " + " | ".join(str(value) for value in values) + " |"
  return "\n".join([row(columns), row(["---"] * len(columns))] +
                   [row([line[column] for column in columns]) for line in lines])


def summary_title(plan: Plan, options: Options) -> str:
  if any(axis.path == options.replicate_axis for axis in plan.axes):
    over = (f"mean ± sd [{stats.level_percent(options.confidence)} t interval] over "
            f"{options.replicate_axis}; n = runs with results")
  else:
    over = f"one run per row (no {options.replicate_axis!r} axis to average over)"
  mode = "" if options.mode == "train" else f", --mode={options.mode}"
  return f"Sweep {plan.workdir} ({plan.config}{mode}): {over}."


def point_rows(plan: Plan, records, statuses: dict) -> list[dict]:
  """sweep_points.csv: one line per point, its axis values, status and metric values."""
  rows = []
  for point, record in zip(plan.points, records):
    status = dict(statuses.get(point.name) or {"status": "done" if record else "missing"})
    rows.append({"point": point.name, **point.texts, **status,
                 "workdir": point_workdir(plan, point), **(record or {})})
  return rows


def read_statuses(plan: Plan, mode: str) -> dict:
  """{point: status record} of the last sweep run in `mode` (STATUS_FILE), {} if none."""
  path = os.path.join(plan.workdir, STATUS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f).get(mode, {})


def write_statuses(plan: Plan, mode: str, statuses: dict) -> None:
  """Records the points' statuses of this run (the points it has reached) under `mode`,
  keeping the earlier runs' records of the points it has not reached yet."""
  path = os.path.join(plan.workdir, STATUS_FILE)
  recorded = {}
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
  recorded[mode] = {**recorded.get(mode, {}), **statuses}
  write_text_atomic(path, json.dumps(recorded, indent=2) + "\n")


def summarize(plan: Plan, options: Options, statuses: dict | None = None, out=None) -> list:
  """Collects the points' results (none from a point that failed: `statuses`, by default the
  last run's, STATUS_FILE), writes sweep_points.csv and sweep_summary.{csv,json,md}
  (atomically) and prints the table; returns the long summary rows. A mode whose results the
  sweep does not read raises ValueError."""
  out = out or sys.stdout
  if options.mode not in RESULTS_FILES:
    raise ValueError(f"cannot summarise: {not_summarised(options.mode)}")
  if statuses is None:
    statuses = read_statuses(plan, options.mode)
  records = collect(plan, options, statuses)
  rows = summary_rows(plan, records, options)
  axes = row_axes(plan, options.replicate_axis)
  lines = wide_rows(rows, axes, options.metrics)
  columns = [*(axis.path for axis in axes), "n", *options.metrics]
  title = summary_title(plan, options)
  done = sum(record is not None for record in records)
  stats.write_table_csv(os.path.join(plan.workdir, "sweep_points.csv"),
                        point_rows(plan, records, statuses or {}))
  stats.write_table_csv(os.path.join(plan.workdir, "sweep_summary.csv"), rows)
  stats.write_json(os.path.join(plan.workdir, "sweep_summary.json"), {
      "config": plan.config, "mode": options.mode, "replicate_axis": options.replicate_axis,
      "confidence": options.confidence, "metrics": list(options.metrics),
      "points": len(plan.points), "points_with_results": done, "rows": rows})
  markdown = os.path.join(plan.workdir, "sweep_summary.md")
  write_text_atomic(markdown, f"{title}\n\n{markdown_table(lines, columns)}\n")
  out.write(f"\n{title}\n{stats.format_table(lines, columns)}\n{done} of {len(plan.points)} "
            f"points have results; wrote {markdown} (and .csv, .json), sweep_points.csv\n")
  out.flush()
  return rows


# ---------------------------------------------------------------------------------------------
# The sweep's record (sweep.json) and the command line.


def write_manifest(plan: Plan, options: Options) -> None:
  """`<workdir>/sweep.json`: the config, grid, fixed overrides and mode, for `--summarize`."""
  write_text_atomic(os.path.join(plan.workdir, MANIFEST_FILE), json.dumps({
      "config": plan.config, "grid": [f"{a.path}={','.join(a.texts)}" for a in plan.axes],
      "set": [f"{path}={text}" for path, text in plan.fixed], "mode": options.mode,
      "points": [point.name for point in plan.points]}, indent=2) + "\n")


def plan_from_manifest(workdir: str, metrics: Sequence[str] = (),
                       mode: str | None = None) -> tuple[Plan, str]:
  """The Plan recorded in `<workdir>/sweep.json` by an earlier run or --print, and the mode:
  `mode`, or else the recorded one (whose results --summarize then reads)."""
  path = os.path.join(workdir, MANIFEST_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run or --print the sweep first, or give "
                            f"--config and --grid")
  with open(path) as f:
    manifest = json.load(f)
  mode = mode or manifest.get("mode", "train")
  return make_plan(manifest["config"], workdir, manifest["grid"], manifest["set"], metrics,
                   mode), mode


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The sweep's flags; --config and --grid are needed except for a bare --summarize."""
  parser = argparse.ArgumentParser(
      prog="launch/sweep.py", description=__doc__.split("\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="config file[:arg], as for jaxmm.main")
  parser.add_argument("--workdir", required=True,
                      help="the sweep's folder; one subfolder per point")
  parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="PATH=V1,V2",
                      help="axes: a config path (or :arg) and comma-separated values")
  parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="PATH=VALUE",
                      help="overrides applied to every point")
  parser.add_argument("--mode", default=None,
                      help="jaxmm.main --mode of every point (default: train; for a bare "
                           "--summarize, the mode sweep.json records); train's and eval's "
                           "metrics are summarised")
  parser.add_argument("--print", action="store_true",
                      help="print the commands, one per line, instead of running them")
  parser.add_argument("--summarize", "--collect", action="store_true",
                      help="collect an existing sweep (from sweep.json) without running")
  parser.add_argument("--launcher", default="",
                      help="a launcher taking CONFIG WORKDIR [flags], as launch/*.sh do, e.g. "
                           "'sbatch --gpus-per-node=8 launch/slurm.sh'")
  parser.add_argument("--prefix", default="",
                      help="words put before `python -m jaxmm.main ...`, e.g. 'srun -n1'")
  parser.add_argument("--python", default=None,
                      help="interpreter (default: this one when running, 'python' when printing)")
  parser.add_argument("--module", default="jaxmm.main", help="module each point runs")
  parser.add_argument("--metric", nargs="+", action="extend", default=None, metavar="SPLIT.NAME",
                      help=f"results.json metrics to summarise (default: {list(DEFAULT_METRICS)})")
  parser.add_argument("--confidence", type=float, default=0.95, help="of the t interval")
  parser.add_argument("--replicate_axis", default=REPLICATE_AXIS,
                      help="the axis averaged over; the others make the rows")
  args = parser.parse_args(argv)
  if not 0 < args.confidence < 1:
    parser.error(f"--confidence must lie in (0, 1), got {args.confidence}")
  if args.launcher and args.prefix:
    parser.error("give --launcher (CONFIG WORKDIR [flags]) or --prefix (before python), not both")
  if not args.summarize and not (args.config and args.grid):
    parser.error("--config and --grid are required to run or --print a sweep")
  return args


def plan_and_options(args: argparse.Namespace) -> tuple[Plan, Options]:
  """The checked Plan (from the flags, or sweep.json for a bare --summarize) and the Options."""
  metrics = tuple(args.metric or DEFAULT_METRICS)
  if args.grid or args.config:
    if not (args.grid and args.config):
      raise ValueError("give both --config and --grid, or neither (to read sweep.json)")
    mode = args.mode or "train"
    plan = make_plan(args.config, args.workdir, args.grid, args.set, metrics, mode)
  else:
    plan, mode = plan_from_manifest(args.workdir, metrics, args.mode)
  axes = [axis.path for axis in plan.axes]
  if args.replicate_axis != REPLICATE_AXIS and args.replicate_axis not in axes:
    raise ValueError(f"--replicate_axis {args.replicate_axis!r} is not a grid axis; axes: "
                     f"{axes}.{config_lib.closest(args.replicate_axis, axes)}")
  python = args.python or ("python" if args.print else sys.executable)
  return plan, Options(mode, python, args.module, args.launcher, args.prefix, metrics,
                       args.confidence, args.replicate_axis)


def main(argv: Sequence[str], out=None) -> int:
  """The sweep command line; returns the exit status (2 for a bad grid, config or metric)."""
  args = parse_args(argv)
  try:
    plan, options = plan_and_options(args)
    if args.print:
      try:
        return print_commands(plan, options, out)
      except BrokenPipeError:  # `--print | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.summarize:
      summarize(plan, options, out=out)
      return 0
    return run_sweep(plan, options, out)
  except (ValueError, KeyError, FileNotFoundError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {message}", file=sys.stderr)
    return 2
