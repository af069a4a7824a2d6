"""Two real JAX processes of 2 CPU devices each (jax.distributed on localhost, CPU collectives
over gloo), started by launch/slurm.sh through a stand-in `srun`: training on the 4-device mesh
ends with the parameters of one single-device process fed the same global batches, and the
saliency runner writes every example exactly once. The stages after training (baselines,
explanation evaluation, SHAP, fairness, report) run with two processes as with one, and every
file but a saliency shard is written by process 0 alone."""
import collections
import csv
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxmm.baselines import runner as baselines_runner
from jaxmm.data import pipeline
from jaxmm.train import distributed, loop, sharding
from tests.conftest import load_smoke_config, xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(REPO, "configs", "synthetic_derm.py") + ":model=concat,smoke"
# SGD: Adam's normalisation would blow reduction-order noise in near-zero gradients up to
# full-size updates, hiding what this test checks.
OVERRIDES = ("--config.optimizer.name=sgd", "--config.train.progress=false",
             "--config.saliency.progress=false")


def free_slurm_job_id() -> int:
  """A SLURM_JOB_ID whose coordinator port (JAX: 61440 + id mod 4096) is free here."""
  for job_id in range(os.getpid() % 4096, os.getpid() % 4096 + 4096):
    port = 61440 + job_id % 4096
    with socket.socket() as s:
      try:
        s.bind(("localhost", port))
      except OSError:
        continue
    return job_id
  raise RuntimeError("no free port in 61440-65535")


def slurm_launch(workdir: str, data_dir: str, tmp_path, *flags) -> str:
  """launch/slurm.sh CONFIG WORKDIR FLAGS as a 2-task SLURM step on this machine."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  srun = bin_dir / "srun"
  if not srun.exists():
    srun.symlink_to(os.path.join(REPO, "tests", "train", "fake_srun.py"))
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NTASKS="2",
             SLURM_JOB_ID=str(free_slurm_job_id()), SLURM_SUBMIT_DIR=REPO,
             JAXMM_DATA_DIR=data_dir, JAX_PLATFORMS="cpu", PYTHON=sys.executable,
             XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"))
  env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "slurm.sh"), SPEC, workdir,
                        *OVERRIDES, *flags], env=env, capture_output=True, text=True,
                       timeout=600, cwd=str(tmp_path))
  # Each task's lines are labelled with its rank; how each task ended is printed last.
  assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-8000:]
  return out.stdout + out.stderr


def read_params(state_dir: str) -> dict:
  """A checkpoint's arrays as NumPy, whatever number of processes wrote it."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=args))
  return dict(jax.tree.leaves_with_path(restored))


def test_process_blocks_make_the_single_process_batches(data_dir):
  """Process p of P reads block p of each global batch: concatenated in process order they
  are the one-process batch, so results do not depend on the process count."""
  config = load_smoke_config(data_dir, "synthetic_derm", "model=concat")
  builder = pipeline.load_builder(config.data)
  preprocessor = pipeline.fit_preprocessor(config.data, builder, None)
  source = builder.as_data_source("train")
  stream = lambda p, n: pipeline.train_batches(source, preprocessor, global_batch_size=8,
                                               seed=3, start_step=5, process_index=p,
                                               process_count=n, num_threads=0)
  one, halves = stream(0, 1), (stream(0, 2), stream(1, 2))
  for _ in range(12):  # past an epoch boundary (train has < 96 examples)
    whole = next(one)
    parts = [next(h) for h in halves]
    assert len(parts[0]["label"]) == 4
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_gather_rows_is_identity_on_one_process():
  values = np.array(["a", "bé", ""], dtype=object)
  assert distributed.gather_rows(values) is not None
  np.testing.assert_array_equal(distributed.gather_rows(values), values)
  assert not distributed.wanted("auto", None, environ={})
  assert distributed.wanted("auto", 2, environ={})
  assert distributed.wanted("auto", None, environ={"SLURM_STEP_NUM_TASKS": "4"})
  assert not distributed.wanted("auto", None, environ={"SLURM_STEP_NUM_TASKS": "1"})
  with pytest.raises(ValueError, match="valid: \\['auto', 'on', 'off'\\]"):
    distributed.wanted("yes", None)


def test_explicit_flags_and_open_mpi_ask_to_join():
  """--coordinator_address or --process_id alone were ignored under --distributed=auto, and
  `mpirun -n 4` ran four separate trainings."""
  assert distributed.wanted("auto", None, environ={}, coordinator_address="10.0.0.1:1234")
  assert distributed.wanted("auto", None, environ={}, process_id=0)
  assert distributed.wanted("auto", None, environ={"OMPI_COMM_WORLD_SIZE": "4"})
  assert not distributed.wanted("auto", None, environ={"OMPI_COMM_WORLD_SIZE": "1"})
  assert not distributed.wanted("off", 2, environ={}, coordinator_address="10.0.0.1:1234")


STEP = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_LOCALID": "3", "SLURM_GPUS_ON_NODE": "8"}


@pytest.mark.parametrize("changes,ids", [
    ({}, [3]),  # a task per GPU, each seeing all 8: GPU SLURM_LOCALID, as JAX's default
    ({"SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_LOCALID": "0"}, list(range(8))),  # per node
    # without --ntasks-per-node SLURM sets no SLURM_NTASKS_PER_NODE; the step's layout counts
    ({"SLURM_STEP_TASKS_PER_NODE": "", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0"},
     list(range(8))),
    ({"SLURM_STEP_TASKS_PER_NODE": "2,4", "SLURM_NODEID": "0", "SLURM_LOCALID": "1"},
     [4, 5, 6, 7]),  # two tasks on this node share its 8 GPUs
    ({"CUDA_VISIBLE_DEVICES": "5"}, [0]),  # --gpus-per-task=1: the one GPU SLURM bound
    ({"CUDA_VISIBLE_DEVICES": "4,5"}, [0, 1]),
    ({"SLURM_GPUS_ON_NODE": "0"}, None),  # CPU nodes
    ({"JAX_LOCAL_DEVICE_IDS": "1"}, None),  # the user's choice stands
])
def test_each_slurm_task_drives_its_share_of_the_node_gpus(changes, ids):
  assert distributed.slurm_local_device_ids({**STEP, **changes}) == ids
  assert distributed.slurm_local_device_ids({"SLURM_GPUS_ON_NODE": "8"}) is None  # no step


def test_tasks_that_cannot_share_the_gpus_evenly_are_refused():
  with pytest.raises(ValueError, match="3 tasks cannot share its 8 GPUs evenly"):
    distributed.slurm_local_device_ids({**STEP, "SLURM_STEP_TASKS_PER_NODE": "3(x2)"})


@pytest.fixture(scope="module")
def one_process_run(data_dir, tmp_path_factory):
  """(config, workdir) of the smoke concat model trained in this process, as the two-process
  runs are (SGD)."""
  config = load_smoke_config(data_dir, "synthetic_derm", "model=concat")
  config.optimizer.name = "sgd"
  one = str(tmp_path_factory.mktemp("one_process") / "one")
  loop.train_and_evaluate(config, one)
  return config, one


@pytest.mark.usefixtures("late_barrier_processes")  # their 33 s wait overlaps this test
def test_two_processes_train_like_one_and_share_saliency(data_dir, tmp_path, one_process_run):
  two = str(tmp_path / "two")
  log = slurm_launch(two, data_dir, tmp_path)
  assert "process 1 of 2: 2 local / 4 global devices" in log

  one = one_process_run[1]

  step = max(int(os.path.basename(p)) for p in glob.glob(f"{two}/checkpoints/latest/*"))
  params_two = read_params(f"{two}/checkpoints/latest/{step}/state")
  params_one = read_params(f"{one}/checkpoints/latest/{step}/state")
  assert params_two.keys() == params_one.keys() and len(params_one) > 50
  for key, value in params_one.items():
    np.testing.assert_allclose(params_two[key], value, rtol=1e-4, atol=1e-6, err_msg=str(key))
  # Evaluation is split between the processes and gathered back in split order.
  for split in ("validation", "test"):
    a, b = np.load(f"{two}/predictions/{split}.npz"), np.load(f"{one}/predictions/{split}.npz")
    np.testing.assert_array_equal(a["index"], np.arange(len(b["index"])))
    np.testing.assert_array_equal(a["sex"], b["sex"])
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-5)
  with open(f"{two}/results.json") as f, open(f"{one}/results.json") as g:
    assert json.load(f)["test"]["accuracy"] == json.load(g)["test"]["accuracy"]

  # Saliency: 4 shards of 14 examples, 2 computed by each process (on its 2 devices), each
  # example once.
  slurm_launch(two, data_dir, tmp_path, "--mode=saliency", "--config.saliency.split=test",
               "--config.saliency.methods=('gradcam',)", "--config.saliency.shard_size=4",
               "--config.saliency.max_examples=14", "--config.saliency.batch_size=4")
  shards = sorted(glob.glob(f"{two}/analysis/saliency/test/shard_*.npz"))
  assert len(shards) == 4
  index = np.concatenate([np.load(s)["index"] for s in shards])
  np.testing.assert_array_equal(index, np.arange(14))
  logits = np.concatenate([np.load(s)["logits"] for s in shards])
  best = np.load(f"{two}/predictions/test.npz")["logits"][:14]
  np.testing.assert_allclose(logits, best, rtol=1e-4, atol=1e-5)


# The stages after training, cut to seconds: logistic-regression baselines of the binary task;
# Grad-CAM maps of 8 test examples in 2 shards (one per process) and their evaluation; SHAP
# of 2 examples.
STAGES = ("baselines", "evaluate_explanations", "shap", "fairness", "report")
BASELINE_MODELS = {"tasks": ("binary",), "pca": (),
                   "models": {fs: ("logreg",) for fs in ("image", "meta", "fusion", "late")}}
STAGE_FLAGS = (
    "--config.baselines.tasks=('binary',)", "--config.baselines.pca=()",
    *(f"--config.baselines.models.{fs}=('logreg',)" for fs in BASELINE_MODELS["models"]),
    "--config.saliency.shard_size=4", "--config.saliency.batch_size=4",
    "--config.evaluation.saliency_methods=('gradcam',)", "--config.evaluation.max_examples=8",
    "--config.evaluation.ifa.methods=('gradcam',)", "--config.evaluation.ifa.max_examples=8",
    "--config.shap.num_examples=2", "--config.shap.background_size=4")
SHARD = re.compile(r"analysis/saliency/[^/]+/shard_\d+\.npz")


def run_two_processes(workdir: str, data_dir: str, tmp_path, stages, flags) -> dict:
  """tests/train/two_process_stages.py as processes 0 and 1 on `workdir`; asserts both
  succeed. Returns {path under workdir: the processes that replaced or removed it}."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  log = str(tmp_path / "writes")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXMM_DATA_DIR=data_dir, WRITE_LOG=log,
             XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"))
  args = [sys.executable, os.path.join(REPO, "tests", "train", "two_process_stages.py"),
          f"--config={SPEC}", f"--workdir={workdir}", f"--stages={','.join(stages)}",
          f"--coordinator_address=localhost:{port}", "--num_processes=2", *OVERRIDES, *flags]
  outs = [open(tmp_path / f"process_{i}.log", "w+") for i in range(2)]
  procs = [subprocess.Popen(args + [f"--process_id={i}"], env=env, stdout=out,
                            stderr=subprocess.STDOUT, cwd=REPO) for i, out in enumerate(outs)]
  deadline = time.time() + 300
  # A failed process leaves the other waiting at a barrier: stop it then.
  while (any(p.poll() is None for p in procs) and time.time() < deadline
         and all(p.poll() in (None, 0) for p in procs)):
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
  for i, (p, out) in enumerate(zip(procs, outs)):
    p.wait()
    out.seek(0)
    assert p.returncode == 0, f"process {i} (rc {p.returncode}):\n{out.read()[-4000:]}"
  writers = collections.defaultdict(set)
  for i in range(2):
    with open(f"{log}.{i}") as f:
      for line in f:
        writers[os.path.relpath(line.rstrip("\n").split("\t")[1], workdir)].add(i)
  return writers


def table_rows(path: str) -> list:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_stages_after_training_run_with_two_processes_and_write_once(data_dir, tmp_path,
                                                                     one_process_run):
  """--mode=baselines crashed with two processes (each process's whole batch sharded as its
  share of a global one, then fetched whole); every other stage was computed and written by
  both processes, and figures were drawn from files process 0 had not yet written."""
  config, one = one_process_run
  two, single = str(tmp_path / "two"), str(tmp_path / "single")
  shutil.copytree(one, two)
  shutil.copytree(one, single)
  writers = run_two_processes(two, data_dir, tmp_path, STAGES, STAGE_FLAGS)

  assert [p for p, w in writers.items() if w != {0} and not SHARD.fullmatch(p)] == []
  assert [p for p, w in writers.items() if len(w) > 1] == []
  shards = sorted(p for p in writers if SHARD.fullmatch(p))
  assert [writers[p] for p in shards] == [{0}, {1}]  # the maps are still shared
  for path in ("baselines/embeddings/manifest.json", "baselines/binary/table.csv",
               "baselines/baselines.json", "analysis/explanation_evaluation.json",
               "analysis/ifa/gradcam/importance.npz", "analysis/shap/fields.npz",
               "figures/shap/fields_bar.png", "analysis/fairness/fairness.json", "report.html"):
    assert writers.get(path) == {0}, path

  cfg = config.copy_and_resolve_references()
  cfg.baselines.update({k: v for k, v in BASELINE_MODELS.items() if k != "models"})
  cfg.baselines.models.update(BASELINE_MODELS["models"])
  baselines_runner.run_baselines(cfg, single, print_fn=lambda _: None)
  got, expected = (table_rows(os.path.join(d, "baselines", "binary", "table.csv"))
                   for d in (two, single))
  assert [r["model"] for r in got] == [r["model"] for r in expected] and len(got) == 4
  for a, b in zip(got, expected):
    for key in baselines_runner.TABLE_METRICS:
      np.testing.assert_allclose(float(a[key]), float(b[key]), atol=1e-6, err_msg=key)


def test_two_processes_save_latest_and_best_at_the_same_step(tmp_path):
  """A step that is the best so far is saved by both checkpoint managers; orbax names its
  multi-process barriers by step, so the managers need their own barrier names (without them
  the two saves' barriers collided: 'Barrier _async_write_complete.1 is already ongoing',
  both processes aborted; before that, an intermittent hang or crash of the run above)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = os.path.join(REPO, "tests", "train", "two_process_saves.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
  procs = [subprocess.Popen([sys.executable, script, str(i), str(port), str(tmp_path), "12"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and "saved 12 steps" in out, f"process {i}:\n{out[-3000:]}"
  assert sorted(os.listdir(tmp_path / "checkpoints" / "best")) == ["12"]


@pytest.fixture(scope="module")
def late_barrier_processes():
  """The two processes of tests/train/two_process_barriers.py, process 0 coming 33 s late to
  the first barrier. Started by the first test that asks (the two-process training test
  does, so that the wait overlaps it), checked by the barrier test."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = os.path.join(REPO, "tests", "train", "two_process_barriers.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
  procs = [subprocess.Popen([sys.executable, script, str(i), str(port), "33"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.communicate()


def test_a_process_late_at_a_barrier_by_more_than_30_s_is_waited_for(late_barrier_processes):
  """Barriers were a device collective: its first run gave up when a process came more than
  30 s after the others (gloo's set-up, "DEADLINE_EXCEEDED ... cpu:gloo"), as process 0 does
  after a stage it works on alone. Barriers met under different names are an error."""
  procs = late_barrier_processes
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and "late barrier passed" in out, f"process {i}:\n{out[-3000:]}"
    assert ("mismatch: the processes met at barrier #2 under different names, so they run "
            "different code paths: process 0: 'path of process 0'; process 1: 'path of "
            "process 1'") in out, out[-3000:]


def test_prefetch_keeps_order_and_raises_at_the_bad_batch():
  mesh = sharding.make_mesh()
  n = mesh.devices.size

  def batches():
    for i in range(5):
      if i == 3:
        raise pipeline.BadBatch("batch 3 is bad", "image", [0])
      yield {"x": np.full((n, 2), i, np.float32), "name": np.array(["a"] * n, object)}

  got = sharding.prefetch_to_mesh(batches(), mesh, ("x",), size=2)
  for i in range(3):  # batch 3 was already read (it failed) when batch 1 was handed out
    batch = next(got)
    assert set(batch) == {"x"} and float(batch["x"][0, 0]) == i
  with pytest.raises(pipeline.BadBatch, match="batch 3 is bad"):
    next(got)


def test_joining_without_a_coordinator_names_the_flags():
  """JAX's own error ("coordinator_address should be defined.") names none of jaxmm's flags."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR"))}
  done = subprocess.run([sys.executable, "-c", "from jaxmm.train import distributed\n"
                         "distributed.initialize('on')"], env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode == 1
  assert ("--distributed=on: cannot join a multi-process run (coordinator_address should be "
          "defined.). Outside SLURM, Open MPI and Cloud TPU give every process "
          "--coordinator_address=HOST:PORT") in done.stderr
