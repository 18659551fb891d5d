"""Multi-process start-up with `jax.distributed` (multi-host training).

Either the config names the coordinator (`config.distributed.coordinator_address`,
`num_processes`, `process_id`), or `config.distributed.auto=True` lets JAX read them from the
environment of a managed cluster (SLURM, TPU pods, ...), as `jax.distributed.initialize()` does;
`JAX_COORDINATOR_ADDRESS` in the environment implies `auto`. A single process needs neither.
"""

from __future__ import annotations

import os

import jax



def initialize(config) -> None:
  d = config.distributed
  if d.coordinator_address:
    if d.num_processes < 1 or d.process_id < 0:
      raise ValueError("config.distributed.num_processes (>= 1) and config.distributed.process_id "
                       f"(>= 0) are required with a coordinator address; got {d.num_processes}, "
                       f"{d.process_id}")
    jax.distributed.initialize(d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id)
  elif d.get("auto", False) or "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize()
