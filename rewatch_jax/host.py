"""Settings of the host process for XLA's CPU backend: transparent huge pages for malloc.

Each run of a compiled XLA CPU program allocates its temporary buffer (the demo's SFT step: 224-564
MB, one per bucket; a 75M model's fwd+bwd: GBs) with posix_memalign. A block that large is mmapped
and unmapped when freed, so every step faults its whole working set in again, 4 KB at a time (the
demo's SFT: 65M minor faults, 118 s of system time). `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes
malloc madvise its memory for transparent huge pages, so the same memory faults in 2 MB at a time.
Same 2-core AVX-512 VM, 2026-11-29 (the demo: 700 SFT steps and three evaluations, data prepared;
`benchmarks/model_forward.py`: a 75M model's fwd+bwd, our process only):

| malloc | demo wall / system s / minor faults / peak RSS | 75M fwd+bwd tokens/s / peak RSS |
|---|---|---|
| glibc's defaults | 3:55 / 118 / 65M / 2.6 GB | 363-376 / 4.1 GB (3 runs) |
| one arena, no mmap, no trimming (sessions 9-10) | 3:29 / 20 / 1.9M / 2.9 GB | 202-373 / 3.9-9.1 GB (4 runs) |
| `glibc.malloc.hugetlb=1` (this) | 3:34 / 68 / 1.9M / 2.6 GB | 434-439 / 4.1-4.2 GB (2 runs) |

The one-arena setting kept freed blocks in one sbrk heap; on the 75M step that heap fragmented in
2 of 4 runs (peak RSS 6.6 and 9.1 GB, the step up to 1.8x slower), and it slowed compilation. Huge
pages keep glibc's default layout (4.1-4.2 GB in every run) and speed up both. Numerics are
unaffected (the demo's table is identical).

glibc reads tunables only when a process starts, so `reexec_if_cpu()` restarts the entry point
(`os.execve`, same pid and arguments) with GLIBC_TUNABLES extended, before anything else runs;
child processes inherit it. It does nothing where the tunable is already set, where the backend
will not be the CPU (JAX_PLATFORMS, else an installed TPU/GPU plugin), or with
REWATCH_CPU_MALLOC=0. Older glibc ignores the tunable; with THP set to `never` it has no effect.
The pytest process does not restart itself (tests are unaffected either way).
"""

from __future__ import annotations

import os
import pkgutil
import sys

HUGETLB = "glibc.malloc.hugetlb=1"


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
