"""Saliency sharded over 8 fake CPU devices equals the single-device result."""
import json
import os
import subprocess
import sys

from tests.conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxmm.models import build_model
from jaxmm.saliency import methods, model_fns
model = build_model({"modalities": ("image",), "num_classes": 3,
                     "image": {"encoder": "resnet_tiny"}, "head": {"hidden": (8,)}})
x = {"image": jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))}
variables = model.init(jax.random.key(1), x, train=False)
variables = {k: v for k, v in variables.items() if k != "perturbations"}
context = methods.Context(layer="image/stage3")
targets = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
builder = lambda v: model_fns.linen_apply_fn(model, v, train=False)
out = {}
for name, options in (("ig_smoothgrad", {"steps": 8, "num_samples": 2, "path_chunk_size": 4}),
                      ("gradcam", {})):
  fn = methods.compiled(name, builder, options, context)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  sharded = fn(jax.device_put(variables, NamedSharding(mesh, P())),
               jax.device_put(x, NamedSharding(mesh, P("data"))), targets, jax.random.key(2))
  single = fn(jax.device_put(variables, jax.devices()[0]), jax.device_put(x, jax.devices()[0]),
              targets, jax.random.key(2))
  out[name] = {"devices": len(sharded["raw"].sharding.device_set),
               "max_diff": float(np.abs(np.asarray(sharded["raw"]) -
                                        np.asarray(single["raw"])).max()),
               "scale": float(np.abs(np.asarray(single["raw"])).max())}
print(json.dumps(out))
"""


def test_saliency_sharded_over_eight_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"),
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, r in result.items():
    assert r["devices"] == 8, name
    assert r["scale"] > 0 and r["max_diff"] <= 1e-5 * r["scale"] + 1e-7, (name, r)
