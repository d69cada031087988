"""Settings of the host process for XLA's CPU backend.

Each run of a compiled XLA CPU program allocates its temporary buffer (the demo's SFT step: 224-564
MB, one per bucket) with posix_memalign from whichever glibc arena the worker thread is attached to.
In a thread arena a block that large cannot fit a heap (64 MB), so glibc mmaps it (whatever
M_MMAP_MAX says) and unmaps it when freed: every step faults its whole working set in again. The
demo's SFT: 7.3M minor faults and 25 s of system time in 90 steps. With one arena (the main one,
grown by sbrk), no mmap and no trimming, the block stays mapped and is reused: 0.45M faults, 8 s,
steps 565 -> 480-500 ms; the demo end to end 10:55 -> 10:04 (back to back, same VM). The price:
compiling is slower (the demo's 384-token step 11-13 s -> 12-17 s; the short end-to-end test 34-38 s
-> 48-50 s), and the peak RSS higher (freed memory is kept: 2.6 -> 2.8 GB). So `launch/train.py`
applies it (and the benchmarks' child processes, for both implementations); the pytest process does
not. A 75M model's step (benchmarks/model_forward.py) does not change: there compute dominates.
Numerics are unaffected (the demo's table is identical).

It must run before JAX starts its CPU client: threads that have allocated keep their arenas (set
after `jax.devices()` it changes nothing). `tune_if_cpu()` guesses the backend without starting
one (JAX_PLATFORMS, else whether an accelerator plugin is installed) and leaves accelerator hosts
on glibc's defaults. REWATCH_CPU_MALLOC=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pkgutil

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
CPU_MALLOC = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def tune_cpu_malloc() -> bool:
  """Applies CPU_MALLOC through mallopt; False (nothing changed) off glibc or when disabled."""
  setting = os.environ.get("REWATCH_CPU_MALLOC", "1")
  if setting not in ("0", "1"):
    raise ValueError(f"REWATCH_CPU_MALLOC must be 0 (glibc's defaults) or 1 (tuned), got {setting!r}")
  if setting == "0":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in CPU_MALLOC)


def cpu_backend_expected() -> bool:
  """Whether JAX will run on the CPU, decided without initialising a backend: the first entry of
  JAX_PLATFORMS if set, else True unless a TPU or GPU plugin (libtpu, jax_cuda*, jax_rocm*) is
  installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(m.name == "libtpu" or m.name.startswith(("jax_cuda", "jax_rocm"))
                 for m in pkgutil.iter_modules())


def tune_if_cpu() -> bool:
  """tune_cpu_malloc() where cpu_backend_expected(); call before anything starts JAX's backend."""
  return cpu_backend_expected() and tune_cpu_malloc()
