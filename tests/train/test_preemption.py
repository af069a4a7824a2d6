"""Preemption: a training process killed with SIGKILL at a random step and started again with
the same command ends with exactly the parameters and metrics of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxmm.train import loop
from tests.conftest import load_smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 60
# The command: train the smoke concat model in WORKDIR (resuming whatever is there).
WORKER = """
import sys
from tests.conftest import load_smoke_config
from tests.train.test_preemption import configure
from jaxmm.train import loop
loop.train_and_evaluate(configure(load_smoke_config(sys.argv[1], "synthetic_derm",
                                                    "model=concat")), sys.argv[2])
"""


def configure(config):
  config.train.num_steps = STEPS
  config.train.checkpoint_every_steps = 4
  config.train.eval_every_steps = 10
  config.train.log_every_steps = 1
  return config


def logged_steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines()
  return [json.loads(line)["step"] for line in lines[:-1] if line]  # last may be partial


def command(data_dir: str, workdir: str) -> list[str]:
  return [sys.executable, "-c", WORKER, data_dir, workdir]


def environment() -> dict:
  return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))


def kill_at_step(data_dir: str, workdir: str, step: int) -> int:
  """Starts the command and SIGKILLs it once the metrics show `step`; the last logged step."""
  proc = subprocess.Popen(command(data_dir, workdir), env=environment(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if any(s >= step for s in logged_steps(workdir)):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.005)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, (
      f"the run ended ({proc.returncode}) before step {step} could be killed: "
      f"{err.decode()[-2000:]}")
  return max(logged_steps(workdir) or [0])


def final_params(workdir: str, config):
  run = loop.setup_run(config, workdir, record_run=False)
  try:
    return jax.device_get(run.checkpointer.restore(loop.abstract_state(run))[0])
  finally:
    run.checkpointer.close()


def metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def test_sigkill_at_a_random_step_then_the_same_command_ends_identically(data_dir, tmp_path):
  seed = int.from_bytes(os.urandom(4), "little")
  kill_step = int(np.random.default_rng(seed).integers(2, STEPS - 10))
  config = configure(load_smoke_config(data_dir, "synthetic_derm", "model=concat"))
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(config, straight)

  killed_at = kill_at_step(data_dir, resumed, kill_step)
  where = f"(killed at step {killed_at}, asked {kill_step}, seed {seed})"
  assert killed_at < STEPS, where
  done = subprocess.run(command(data_dir, resumed), env=environment(), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, f"{where}: {done.stderr[-3000:]}"

  a, b = final_params(straight, config), final_params(resumed, config)
  assert int(a.step) == int(b.step) == STEPS, where
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, err_msg=where), a, b)
  assert metrics(straight) == metrics(resumed), where
  with open(os.path.join(straight, "results.json")) as f, \
       open(os.path.join(resumed, "results.json")) as g:
    assert json.load(f)["test"] == json.load(g)["test"], where
