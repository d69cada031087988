"""rewatch_jax/host.py: the CPU malloc settings take effect, and only where they should."""

import os
import platform
import subprocess
import sys

import pytest

from rewatch_jax import host

# Allocates a 64 MB block, frees it, allocates 8 MB in a second thread; prints tune_if_cpu()'s
# answer, the blocks it mmapped while the 64 MB one lived, the main heap's size after it was freed,
# and (stderr, malloc_stats) one "Arena N:" section per arena.
_CHILD = """
import ctypes, threading
import numpy as np
from rewatch_jax import host
tuned = host.tune_if_cpu()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
a = np.ones(8 << 20)
mmapped = libc.mallinfo2().hblks - before
del a
heap = libc.mallinfo2().arena
t = threading.Thread(target=lambda: np.ones(1 << 20).sum())
t.start(); t.join()
libc.malloc_stats()
print(tuned, mmapped, heap)
"""


def _child(**env):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": root, **env})
  tuned, mmapped, heap = out.stdout.split()
  return tuned == "True", int(mmapped), int(heap), out.stderr.count("Arena ")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt, mallinfo2")
def test_cpu_malloc_keeps_freed_blocks_in_one_heap():
  # glibc's defaults: the 64 MB block is mmapped (and unmapped when freed); the thread gets an arena
  tuned, mmapped, heap, arenas = _child(JAX_PLATFORMS="cpu", REWATCH_CPU_MALLOC="0")
  assert (tuned, arenas) == (False, 2) and mmapped >= 1 and heap < 64 << 20
  # tuned: no mmap, the freed block stays in the main heap, the thread allocates from that heap
  tuned, mmapped, heap, arenas = _child(JAX_PLATFORMS="cpu")
  assert (tuned, mmapped, arenas) == (True, 0, 1) and heap >= 64 << 20


def test_backend_guess_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
  assert not host.cpu_backend_expected() and not host.tune_if_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host.cpu_backend_expected()


def test_a_bad_setting_is_named(monkeypatch):
  monkeypatch.setenv("REWATCH_CPU_MALLOC", "off")
  with pytest.raises(ValueError, match="REWATCH_CPU_MALLOC must be 0"):
    host.tune_cpu_malloc()
