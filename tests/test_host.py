"""rewatch_jax/host.py: the CPU malloc setting takes effect, and only where it should."""

import os
import platform
import re
import subprocess
import sys

import pytest

from rewatch_jax import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Restarts itself through reexec_if_cpu(), then mallocs and touches a 128 MB block (not numpy: it
# madvises its own large arrays) and prints its pid, GLIBC_TUNABLES and the huge pages it holds.
_CHILD = """
import ctypes, os, re, sys
print("start", os.getpid(), flush=True)
sys.path.insert(0, os.getcwd())
from rewatch_jax import host
host.reexec_if_cpu()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(128 << 20)
ctypes.memset(block, 1, 128 << 20)
huge = sum(int(k) for k in re.findall(r"AnonHugePages:\\s+(\\d+) kB", open("/proc/self/smaps_rollup").read()))
print("ran", os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"), huge, sys.argv[1:])
"""


def _child(**env):
  out = subprocess.run([sys.executable, "-c", _CHILD, "--flag=1"], capture_output=True, text=True, check=True,
                       cwd=ROOT, env={**os.environ, **env})
  starts = re.findall(r"start (\d+)", out.stdout)
  pid, tunables, huge, argv = re.search(r"ran (\d+) (\S+) (\d+) (.*)", out.stdout).groups()
  assert set(starts) == {pid} and argv == "['--flag=1']"  # same process, same arguments
  return len(starts), tunables, int(huge)


def _thp_mode() -> str:
  try:
    return re.search(r"\[(\w+)\]", open("/sys/kernel/mm/transparent_hugepage/enabled").read()).group(1)
  except OSError:
    return "unknown"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/smaps_rollup"),
                    reason="glibc tunables, Linux /proc")
def test_cpu_run_restarts_once_with_huge_pages():
  runs, tunables, huge = _child(JAX_PLATFORMS="cpu", GLIBC_TUNABLES="glibc.malloc.check=0")
  assert runs == 2 and tunables == f"glibc.malloc.check=0:{host.HUGETLB}"  # kept what was set
  runs_off, tunables_off, huge_off = _child(JAX_PLATFORMS="cpu", REWATCH_CPU_MALLOC="0")
  assert runs_off == 1 and tunables_off == "-"
  assert _child(JAX_PLATFORMS="tpu,cpu")[:2] == (1, "-")  # an accelerator run is left alone
  glibc = tuple(int(x) for x in platform.libc_ver()[1].split("."))
  if _thp_mode() == "madvise" and glibc >= (2, 35):  # the tunable is what gives the block huge pages
    assert huge >= 64 << 10 and huge_off == 0, (huge, huge_off)


def test_backend_guess_follows_jax_platforms():
  assert not host.cpu_backend_expected({"JAX_PLATFORMS": "tpu,cpu"})
  assert host.cpu_backend_expected({"JAX_PLATFORMS": "cpu"})
  assert host.cpu_environ({"JAX_PLATFORMS": "cuda"}) is None


def test_a_bad_setting_is_named():
  with pytest.raises(ValueError, match="REWATCH_CPU_MALLOC must be 0"):
    host.cpu_environ({"REWATCH_CPU_MALLOC": "off", "JAX_PLATFORMS": "cpu"})
