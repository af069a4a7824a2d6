"""8 fake CPU devices give the same losses and parameters as 1 device for the same global batch."""
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = r"""
import json, sys
import jax, numpy as np
from jaxmm.train import config_lib, loop, sharding
from jaxmm.data import pipeline
config = config_lib.load_config_file(sys.argv[1])
config.data.data_dir = sys.argv[2]
# SGD: Adam's normalisation would blow reduction-order noise in near-zero gradients up to
# full-size updates, hiding what this test checks.
config.optimizer.name = "sgd"
config.optimizer.learning_rate = 0.05
run = loop.setup_run(config, sys.argv[3])
state = loop.create_state(run)
batches = pipeline.train_batches(run.builder.as_data_source("train"), run.preprocessor,
                                 global_batch_size=config.data.batch_size, seed=config.seed)
losses = []
for _ in range(3):
  batch = sharding.shard_batch({k: v for k, v in next(batches).items() if k in loop.TRAIN_KEYS},
                               run.mesh)
  state, m = run.train_fn(state, batch)
  losses.append(float(m["loss"]))
run.checkpointer.close()
leaves = [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(jax.device_get(
    (state.params, state.batch_stats)))]
print(json.dumps({"devices": jax.device_count(), "losses": losses, "leaves": leaves}))
"""


def run_worker(devices, data_dir, workdir):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  spec = os.path.join(REPO, "configs", "synthetic_derm.py") + ":model=concat,smoke"
  out = subprocess.run([sys.executable, "-c", WORKER, spec, data_dir, workdir], env=env,
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one(data_dir, tmp_path):
  one = run_worker(1, data_dir, str(tmp_path / "one"))
  eight = run_worker(8, data_dir, str(tmp_path / "eight"))
  assert one["devices"] == 1 and eight["devices"] == 8
  # The first loss is computed from identical parameters; later ones differ only by the order
  # of the cross-device reductions (a per-device BatchNorm or a wrong sharding would be off
  # by orders of magnitude more).
  np.testing.assert_allclose(eight["losses"][0], one["losses"][0], rtol=1e-6)
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
  for a, b in zip(one["leaves"], eight["leaves"]):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
