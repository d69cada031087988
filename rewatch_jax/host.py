"""Settings of the host process that the launch scripts apply first: what they log
(`show_library_logs`), and transparent huge pages for malloc under XLA's CPU backend.

Each run of a compiled XLA CPU program allocates its temporary buffer (the demo's SFT step: 224-564
MB, one per bucket; a 75M model's fwd+bwd: GBs) with posix_memalign. A block that large is mmapped
and unmapped when freed, so every step faults its whole working set in again, 4 KB at a time (the
demo's SFT: 65M minor faults, 118 s of system time). `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes
malloc madvise its memory for transparent huge pages, so the same memory faults in 2 MB at a time.
On the demo that turns 65M minor faults into 1.9M and the run ~10% faster; a 75M model's fwd+bwd
runs 1.17x faster (benchmarks/RESULTS.md, "malloc for XLA's CPU backend"). Numerics are unaffected.

glibc reads tunables only when a process starts, so `reexec_if_cpu()` restarts the entry point
(`os.execve`, same pid and arguments) with GLIBC_TUNABLES extended, before anything else runs;
child processes inherit it. It does nothing where the tunable is already set, where the backend
will not be the CPU (JAX_PLATFORMS, else an installed TPU/GPU plugin), or with
REWATCH_CPU_MALLOC=0. Older glibc ignores the tunable; with THP set to `never` it has no effect.
The pytest process does not restart itself (tests are unaffected either way).
"""

from __future__ import annotations

import logging
import os
import pkgutil
import sys

from absl import logging as absl_logging

HUGETLB = "glibc.malloc.hugetlb=1"


def show_library_logs(verbosity_given: bool) -> None:
  """rewatch_jax's INFO lines and every library's warnings; other libraries' INFO chatter (Orbax,
  JAX, TFDS) stays hidden, it buries the progress bars. `--verbosity` (`-v`) given: absl's own
  setting, for every logger."""
  if not verbosity_given:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("rewatch_jax").setLevel(logging.INFO)


def cpu_backend_expected(environ=os.environ) -> bool:
  """Whether JAX will run on the CPU, decided without initialising a backend: the first entry of
  JAX_PLATFORMS if set, else True unless a TPU or GPU plugin (libtpu, jax_cuda*, jax_rocm*) is
  installed."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(m.name == "libtpu" or m.name.startswith(("jax_cuda", "jax_rocm"))
                 for m in pkgutil.iter_modules())


def cpu_environ(environ=os.environ) -> dict[str, str] | None:
  """`environ` with HUGETLB added to GLIBC_TUNABLES, or None where nothing should change (turned
  off, an accelerator backend, or a hugetlb tunable already set)."""
  setting = environ.get("REWATCH_CPU_MALLOC", "1")
  if setting not in ("0", "1"):
    raise ValueError(f"REWATCH_CPU_MALLOC must be 0 (glibc's defaults) or 1 (huge pages), got {setting!r}")
  tunables = environ.get("GLIBC_TUNABLES", "")
  if setting == "0" or "glibc.malloc.hugetlb" in tunables or not cpu_backend_expected(environ):
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGETLB]))}


def reexec_if_cpu() -> None:
  """Restarts this process with cpu_environ() when it changes something; call first in an entry
  point (before JAX, threads or output). Returns only when nothing needs to change."""
  env = cpu_environ()
  if env is not None and sys.executable:  # (no interpreter path to restart: keep glibc's defaults)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
