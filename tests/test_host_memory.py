"""keep_host_memory: once the heap has room for them, XLA's large temporary buffers fault
nothing in."""
import json
import os
import subprocess
import sys

import pytest

from jaxmm import host_memory

# jaxmm's ResNet-18 training step (as the training benchmark compiles it) at 96 px, batch 16:
# XLA's temporary buffer for it is ~125 MB, above glibc's largest mmap threshold. Prints the
# minor page faults of each step after two warm-up steps.
SCRIPT = r"""
import json, resource, types
from jaxmm import host_memory
kept = host_memory.keep_host_memory()
from jaxmm import train_benchmark as tb
args = types.SimpleNamespace(image_size=96, seq_len=8)
spec = tb.model_spec("resnet18", args)
stepper, _ = tb.jaxmm_stepper(spec, tb.random_batch(spec, 16, args), "float32")
for _ in range(2):
  stepper.sync(stepper.step())
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  stepper.sync(stepper.step())
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""


# Page faults are counted in 4 KiB pages: transparent huge pages (a host with THP "always",
# or GLIBC_TUNABLES=glibc.malloc.hugetlb=1) fault a buffer in about 100x fewer, varying, times.
# The child turns them off for itself before anything is allocated.
THP_OFF = r"""
import ctypes
ctypes.CDLL("libc.so.6", use_errno=True).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
"""


def run(env_value, script=SCRIPT):
  """The JSON line `script` prints, run without transparent huge pages, MALLOC_* variables
  or GLIBC_TUNABLES, and with JAXMM_KEEP_HOST_MEMORY=env_value (None: unset)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", host_memory.ENV)}
  if env_value is not None:
    env[host_memory.ENV] = env_value
  out = subprocess.run([sys.executable, "-c", THP_OFF + script], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_host_memory_stops_per_call_page_faults():
  kept, default = run(None), run("0")
  assert kept["kept"] and not default["kept"]
  # Without the setting every step faults its temporary buffer in again (30.8k pages measured).
  assert min(default["faults"]) > 10_000, default
  # With it, a step faults nothing in unless the heap has to grow: when smaller allocations have
  # split the hole the last buffer left, the next one goes to the top of the heap (one buffer's
  # worth of faults, seen in 0-2 of the first 10 steps; the heap then keeps that hole too).
  quiet = sum(f < 1_000 for f in kept["faults"])
  assert quiet >= 5, kept


# A buffer larger than 2**31 bytes freed at the top of the heap: glibc trims the heap when the
# free top exceeds the trim threshold, so the next allocation of that size faults every page
# in again unless the threshold is "never" (ResNet-50's 2 GB temporary buffer did this).
BIG_SCRIPT = r"""
import ctypes, json, resource
from jaxmm import host_memory
kept = host_memory.keep_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 2**31 + 2**28
def touch():
  p = libc.malloc(size)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  ctypes.memset(p, 1, size)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  libc.free(p)
  return faults
first, again = touch(), touch()
print(json.dumps({"kept": kept, "first": first, "again": again}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_memory_above_2_gib_is_kept_too():
  result = run(None, BIG_SCRIPT)
  assert result["kept"] and result["first"] > 100_000, result  # 2.25 GiB of 4 KiB pages
  assert result["again"] < 1_000, result
