"""Host allocator settings for jaxmm's entry points (training, analysis, benchmarks).

XLA's CPU client allocates each execution's temporary buffer (483 MB for a ResNet-18 training
step at batch 16 and 224 px) with malloc from a worker thread, and glibc serves requests that
large with a fresh mmap that is unmapped again on free: every step then page-faults the whole
buffer in (118k faults, about 200 ms of a 750 ms step on a 2-core CPU). `keep_host_memory`
makes glibc serve every thread from its main heap and keep freed memory for reuse (no mmap per
allocation, no trimming), so a step faults nothing in unless the heap must grow: when smaller
allocations have split the hole a freed buffer left, the next buffer goes to the top of the heap
(a step or two early in a run, now and then later). The cost is that the process keeps its peak
heap until it exits, as PyTorch's and JAX's device allocators do.
"""
import ctypes
import os
import sys

ENV = "JAXMM_KEEP_HOST_MEMORY"  # 0: leave the allocator as it is
# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# mallopt takes an int but glibc keeps the trim threshold as a size_t: -1 is "never". (With
# 2**31 - 1, freeing ResNet-50's 2 GB temporary buffer at times left more than that free at the
# top of the heap, glibc gave it back, and the next step faulted 2 GB in again: 4-5 s steps.)
NEVER = -1
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER))


def keep_host_memory() -> bool:
  """Applies SETTINGS through glibc's mallopt; call it before JAX starts its backend (threads
  that already hold an arena keep it). Returns whether they were applied: False off Linux,
  without glibc, or with JAXMM_KEEP_HOST_MEMORY=0."""
  if os.environ.get(ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all([mallopt(param, value) == 1 for param, value in SETTINGS])
