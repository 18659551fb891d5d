"""Multi-process start-up with `jax.distributed` (multi-host training).

Either the config names the coordinator (`config.distributed.coordinator_address`,
`num_processes`, `process_id`), or `config.distributed.auto=True` lets JAX read them from the
environment of a managed cluster (SLURM, Open MPI, Kubernetes, TPU pods, ...), as
`jax.distributed.initialize()` does; `JAX_COORDINATOR_ADDRESS` in the environment implies `auto`,
and outside a managed cluster `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` give the other two. A single
process needs none of this.

After it, `jax.devices()` lists the devices of every process: the trainer's mesh spans them all,
each process feeds its own slice of every global batch (`pipeline.train_batches(process_index,
process_count)`), only process 0 writes results, and Orbax writes checkpoints in the multi-host
way. On CPU the processes' collectives go through Gloo.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import jax


def initialize(config) -> None:
  """Starts `jax.distributed` as `config.distributed` (or the environment) says; else nothing."""
  d = config.distributed
  if d.coordinator_address:
    num_processes, process_id = int(d.num_processes), int(d.process_id)
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError("config.distributed.num_processes (>= 1) and config.distributed.process_id "
                       f"(0 <= id < num_processes) are required with a coordinator address; got "
                       f"{d.num_processes}, {d.process_id}")
    _cpu_collectives()
    jax.distributed.initialize(d.coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif d.get("auto", False) or "JAX_COORDINATOR_ADDRESS" in os.environ:
    _cpu_collectives()
    n, i = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    if n is not None and i is not None:
      jax.distributed.initialize(num_processes=int(n), process_id=int(i))
    else:
      jax.distributed.initialize()


def _cpu_collectives() -> None:
  """Gloo for collectives between processes on CPU (the default of recent jax; made explicit)."""
  try:
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:        # a jax without the option
    pass


def retain_host_memory() -> bool:
  """Keeps the memory the process frees instead of returning it to the OS (glibc only).

  XLA:CPU allocates a step's temporaries afresh at every step (about 2 GB at the Ali-CCP shape,
  `benchmarks/throughput.py`), and glibc hands blocks that large back to the OS when they are
  freed (mmap, trim): every step then page-faults them in again (~450,000 faults, ~0.9 s of system
  time per step there, a quarter of the step's CPU time). One arena, no mmap, no trim: after the
  first step the same pages are reused. The process keeps its peak memory. Call it before the
  first JAX computation (before XLA's threads start). Returns False where it cannot (no glibc).
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
  return all(mallopt(opt, value) == 1 for opt, value in (
      (m_arena_max, 1), (m_mmap_max, 0),
      (m_trim_threshold, -1),            # an int -1 is SIZE_MAX for glibc: never trim
      (m_top_pad, 64 << 20)))
