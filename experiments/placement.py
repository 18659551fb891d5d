"""Where a grid's runs go on an accelerator host, and how a run that ran out of memory is told
from other failures: pure functions (the grid's parent process never imports JAX).

  devices   `--devices=0,1,2,3` (CUDA_VISIBLE_DEVICES entries: ids as nvidia-smi numbers them, or
            UUIDs) or `auto`: the parent's CUDA_VISIBLE_DEVICES if set (a scheduler's
            allocation), else the GPUs `nvidia-smi` lists; none found (a CPU host): placement
            is off. The devices are cut into groups of `--devices_per_run`; each child gets one
            group as its CUDA_VISIBLE_DEVICES, the group with the fewest running children.
  memory    with K children on a device (K = --jobs / groups, rounded up; with no --devices,
            every child sees every GPU: K = --jobs), `--gpu_memory` sets each child's share:
            fraction: XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/K (preallocated);
            grow: XLA_PYTHON_CLIENT_PREALLOCATE=false (allocate on demand);
            auto: fraction when K > 1, else JAX's default (75% preallocated), and never when
            the parent's environment already sets either variable (the user's choice).
            On a CPU host (no GPU found and no --devices) nothing is set.
  oom       a failed run whose log (the part this attempt wrote) says RESOURCE_EXHAUSTED,
            out of memory / OUT_OF_MEMORY, OOM, or a Python MemoryError.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from typing import Callable, Mapping, Optional, Sequence

MEMORY_MODES = ("auto", "fraction", "grow")
MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
# Of a device's memory, the share given to the children on it together (the rest: the CUDA
# context of each child and the driver).
TOTAL_FRACTION = 0.9


class PlacementError(ValueError):
  """A --devices / --devices_per_run / --gpu_memory that cannot be honoured."""


# ----------------------------------------------------------------------------- devices

def nvidia_smi_gpus(timeout: float = 20.0) -> list[str]:
  """The GPU indices `nvidia-smi` lists; [] where there is no nvidia-smi or it fails."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=timeout, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in out.splitlines() if line.strip()]


def visible_gpus(environ: Mapping[str, str],
                 list_gpus: Callable[[], list[str]] = nvidia_smi_gpus) -> list[str]:
  """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries if it is set (empty or -1:
  none), else `list_gpus()`."""
  cvd = environ.get("CUDA_VISIBLE_DEVICES")
  if cvd is None:
    return list(list_gpus())
  entries = [e.strip() for e in cvd.split(",") if e.strip()]
  if not entries or entries[0] in ("-1", "NoDevFiles"):
    return []
  return entries


def parse_devices(text: str, environ: Mapping[str, str],
                  list_gpus: Callable[[], list[str]] = nvidia_smi_gpus) -> list[str]:
  """--devices: "" (placement off), "auto" (`visible_gpus`), or a list "0,1,2,3"."""
  text = text.strip()
  if not text:
    return []
  if text == "auto":
    return visible_gpus(environ, list_gpus)
  devices = [d.strip() for d in text.split(",")]
  if any(not d for d in devices):
    raise PlacementError(f"--devices={text!r}: an empty entry")
  dup = sorted({d for d in devices if devices.count(d) > 1})
  if dup:
    raise PlacementError(f"--devices={text!r}: {', '.join(dup)} given twice")
  return devices


def device_groups(devices: Sequence[str], per_run: int) -> list[tuple[str, ...]]:
  """The devices cut into groups of `per_run` (one group per running child)."""
  if per_run < 1:
    raise PlacementError(f"--devices_per_run={per_run}: must be >= 1")
  if len(devices) % per_run:
    raise PlacementError(f"--devices_per_run={per_run} does not divide the {len(devices)} "
                         f"devices {','.join(devices)}")
  return [tuple(devices[i:i + per_run]) for i in range(0, len(devices), per_run)]


# ----------------------------------------------------------------------------- child environment

def child_env(*, devices: Optional[Sequence[str]], sharing: int, memory: str,
              environ: Mapping[str, str] = {}) -> dict[str, str]:
  """What to add to a child's environment: its CUDA_VISIBLE_DEVICES (`devices`, None: as the
  parent's) and its memory share when `sharing` children run on each of its devices."""
  if memory not in MEMORY_MODES:
    raise PlacementError(f"--gpu_memory={memory!r}; valid: {', '.join(MEMORY_MODES)}")
  if sharing < 1:
    raise PlacementError(f"children per device must be >= 1, got {sharing}")
  env = {}
  if devices is not None:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
  if memory == "auto":
    if sharing == 1 or MEM_FRACTION in environ or PREALLOCATE in environ:
      return env
    memory = "fraction"
  if memory == "fraction":
    share = math.floor(1000 * TOTAL_FRACTION / sharing) / 1000       # rounded down: sums <= 0.9
    env[MEM_FRACTION] = f"{share:.3f}"
  else:
    env[PREALLOCATE] = "false"
  return env


@dataclasses.dataclass
class Placement:
  """The children's slots: `groups` of devices (empty: every child sees what the parent sees),
  each run by at most `sharing` children at a time; `gpu`: a GPU host (else no env is set)."""
  groups: list[tuple[str, ...]]
  num_jobs: int
  memory: str = "auto"
  gpu: bool = False
  environ: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.running = [0] * len(self.groups)

  @property
  def sharing(self) -> int:
    return math.ceil(self.num_jobs / len(self.groups)) if self.groups else self.num_jobs

  def acquire(self) -> tuple[Optional[int], dict[str, str]]:
    """(slot, env additions) for a child about to start: the group with the fewest running
    children (ties: the first)."""
    if not self.gpu:
      return None, {}
    if not self.groups:
      return None, child_env(devices=None, sharing=self.sharing, memory=self.memory,
                             environ=self.environ)
    slot = min(range(len(self.groups)), key=lambda g: (self.running[g], g))
    self.running[slot] += 1
    return slot, child_env(devices=self.groups[slot], sharing=self.sharing, memory=self.memory,
                           environ=self.environ)

  def release(self, slot: Optional[int]) -> None:
    if slot is not None:
      self.running[slot] -= 1

  def describe(self) -> str:
    if not self.gpu:
      return "no GPU found: --devices and --gpu_memory change nothing"
    where = (", ".join(",".join(g) for g in self.groups) if self.groups
             else "every visible GPU")
    return f"GPUs: {where}; up to {self.sharing} run(s) per device, --gpu_memory={self.memory}"


def make_placement(*, devices: str, devices_per_run: int, num_jobs: int, memory: str,
                   environ: Mapping[str, str],
                   list_gpus: Callable[[], list[str]] = nvidia_smi_gpus) -> Placement:
  """The placement of the command line. A CPU host (no --devices list and no GPU found) gets one
  that sets nothing; `nvidia-smi` is only asked when it matters (--devices=auto, or --jobs > 1
  without --devices and without CUDA_VISIBLE_DEVICES)."""
  if memory not in MEMORY_MODES:
    raise PlacementError(f"--gpu_memory={memory!r}; valid: {', '.join(MEMORY_MODES)}")
  listed = parse_devices(devices, environ, list_gpus)
  groups = device_groups(listed, devices_per_run) if listed else []
  if groups:
    gpu = True
  elif devices.strip() == "auto":
    gpu = False                                      # looked, found none
  else:
    gpu = (num_jobs > 1 or memory != "auto") and bool(visible_gpus(environ, list_gpus))
  return Placement(groups, num_jobs, memory, gpu, dict(environ))


# ----------------------------------------------------------------------------- out of memory

OOM_PATTERN = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|OUT_OF_MEMORY|\bOOM\b|"
                         r"\bMemoryError\b")


def is_oom(log_text: str) -> bool:
  """Whether a failed run's log says it ran out of (device or host) memory."""
  return OOM_PATTERN.search(log_text) is not None


def classify_failure(exit_code: int, log_text: str) -> str:
  """"oom" or "failed" for a run that did not finish (exit code 0 but unfinished: "failed")."""
  return "oom" if exit_code != 0 and is_oom(log_text) else "failed"
