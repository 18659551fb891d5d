"""The run folder: what keeps a run's outputs whole through crashes, kills and second starts.

A run folder (`launch.py --workdir`) holds `config.json`, `metrics.jsonl`, `checkpoints/`,
`predictions.parquet` and `results.json`. The rules, all here:

  * Every output file is written to a temporary name in the same folder and renamed into place
    (`write_atomic`): a reader sees the old file or the new one, never half of one.
  * `results.json` is written last and lists the other outputs (`outputs`); it is the only
    completion marker (`unfinished_reason`): a run counts as finished only when it parses and
    every output it lists exists and reads back.
  * `metrics.jsonl` holds each step once: on resume it is cut back to the restored step
    (`truncate_metrics`), so replayed steps do not add a second record.
  * One trainer at a time: the trainer holds an exclusive lock on `<workdir>/.lock`
    (`WorkdirLock`, `fcntl.flock`) for the whole run; a second one on the same folder stops
    with a `RunDirError`.
  * A folder is resumed only by the same run (`check_resume`): a new config may differ from the
    saved `config.json` only in the keys of `RESUMABLE_KEYS` (how long, how fast, how verbose).
  * A child started by the grid dies with it (`die_with_parent`, Linux `PR_SET_PDEATHSIG`).

No JAX here: the grid runner and the report import this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
import threading
from typing import Any, Callable, Sequence

RESULTS = "results.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
RUN_INFO = "run.json"          # the grid runner's record of a run (experiments.run_grid)
PREDICTIONS = "predictions.parquet"
LOCK = ".lock"

# Config keys in which a resumed run may differ from the run that started the folder: they
# change how long it trains, how it reports or how fast it reads, never what a step computes.
# A longer run (num_epochs, max_steps) continues from the checkpoint; distributed.* describe
# the processes, not the run (each reads its slice of the same global batches).
RESUMABLE_KEYS = (
    "train.num_epochs", "train.max_steps", "train.progress", "train.eval_batch_size",
    "train.log_every_steps", "train.sync_every_steps", "train.export_predictions",
    "train.tuned",            # how launch.py filled the config in; the values are recorded
    "data.prefetch", "data.cache_dir", "mscan.coattention_tile",
    "mscan.coattention_backward",
    "distributed.coordinator_address", "distributed.num_processes", "distributed.process_id",
    "distributed.auto",
)


class RunDirError(ValueError):
  """A run folder that cannot be used as asked (in use, or holding another run)."""


# ----------------------------------------------------------------------------- atomic writes

def write_atomic(path: str, write: Callable[[str], None]) -> None:
  """Calls `write(tmp_path)` for a temporary file in `path`'s folder, then renames it to `path`.

  A crash leaves the old `path` (or none) and at most a `.tmp-*` file, never a partial `path`.
  """
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=folder)
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, "rb") as f:       # on disk before the rename makes it visible
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  def write(tmp: str) -> None:
    with open(tmp, "w") as f:
      f.write(text)
  write_atomic(path, write)


def write_json_atomic(path: str, obj: Any, default: Callable[[Any], Any] | None = None) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, default=default) + "\n")


def copy_small_files(src_dir: str, dest_dir: str, names: Sequence[str]) -> int:
  """Copies each of `names` that exists in `src_dir` to `dest_dir`, atomically, where the copy
  is missing or differs (a record to commit while the source keeps growing). Returns the number
  of files written."""
  written = 0
  for name in names:
    src, dest = os.path.join(src_dir, name), os.path.join(dest_dir, name)
    if not os.path.exists(src):
      continue
    with open(src, "rb") as f:
      data = f.read()
    if os.path.exists(dest):
      with open(dest, "rb") as f:
        if f.read() == data:
          continue
    os.makedirs(dest_dir, exist_ok=True)

    def write(tmp: str, data=data) -> None:
      with open(tmp, "wb") as f:
        f.write(data)
    write_atomic(dest, write)
    written += 1
  return written


# ----------------------------------------------------------------------------- completion

def _readable(path: str) -> str | None:
  """None if the output file at `path` reads back, else why not."""
  if not os.path.isfile(path):
    return f"{os.path.basename(path)} is missing"
  try:
    if path.endswith(".json"):
      with open(path) as f:
        json.load(f)
    elif path.endswith(".parquet"):
      import pyarrow.parquet as pq
      pq.read_metadata(path)       # the footer: a truncated file has none
    else:
      with open(path, "rb") as f:
        f.read(1)
  except Exception as e:  # noqa: BLE001 -- any failure to read means "not finished"
    return f"{os.path.basename(path)} cannot be read ({first_line(e)})"
  return None


def unfinished_reason(workdir: str) -> str | None:
  """None if the run in `workdir` finished, else why it did not.

  Finished: `results.json` parses as a non-empty object, and each file of its `outputs` list
  exists and reads back (JSON parses, Parquet has its footer). A results.json written before
  the list existed counts `config.json` and, where that config exported them,
  `predictions.parquet` as its outputs.
  """
  path = os.path.join(workdir, RESULTS)
  if not os.path.exists(path):
    return f"no {RESULTS}"
  if os.path.getsize(path) == 0:
    return f"{RESULTS} is empty"
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    return f"{RESULTS} cannot be read ({first_line(e)})"
  if not isinstance(results, dict) or not results:
    return f"{RESULTS} is empty"
  outputs = results.get("outputs")
  if outputs is None:                       # an older results.json: the outputs it implied
    why = _readable(os.path.join(workdir, CONFIG))
    if why:
      return why
    with open(os.path.join(workdir, CONFIG)) as f:
      exported = json.load(f).get("train", {}).get("export_predictions", True)
    outputs = [CONFIG] + ([PREDICTIONS] if exported else [])
  if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
    return f"{RESULTS}: 'outputs' is not a list of file names"
  for name in outputs:
    why = _readable(os.path.join(workdir, name))
    if why:
      return why
  return None


# ----------------------------------------------------------------------------- metrics

def truncate_metrics(path: str, step: int) -> int:
  """Keeps the records of `path` (JSON lines) with "step" <= `step`; returns how many it dropped.

  Records past the restored checkpoint are replayed by the resumed run, and a line cut short
  by a crash is no record: both are removed (atomically), so every step is logged once.
  """
  if not os.path.exists(path):
    return 0
  keep, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
        ok = isinstance(record, dict) and int(record.get("step", 0)) <= step
      except (ValueError, TypeError):
        ok = False
      if ok and line.endswith("\n"):
        keep.append(line)
      else:
        dropped += 1
  if dropped:
    write_text_atomic(path, "".join(keep))
  return dropped


# ----------------------------------------------------------------------------- the lock

_held: dict[str, list] = {}       # real path of a lock file -> [fd, depth] held by this process
_held_guard = threading.Lock()


class WorkdirLock:
  """An exclusive `fcntl.flock` on `<workdir>/.lock` for as long as the context is open.

  Re-entrant within a process (a run's stages lock their own folders inside the run's); a
  second process gets a `RunDirError` at once, naming the holder's pid. The lock is released
  by the kernel when the holder dies, however it dies; the file itself stays.
  """

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.realpath(os.path.join(workdir, LOCK))

  def __enter__(self) -> "WorkdirLock":
    with _held_guard:
      if self.path in _held:
        _held[self.path][1] += 1
        return self
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(
            f"{os.path.dirname(self.path)} is in use by another run (process {holder} holds "
            f"{self.path}); wait for it to finish, or use another --workdir") from None
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
      _held[self.path] = [fd, 1]
    return self

  def __exit__(self, *exc) -> None:
    with _held_guard:
      entry = _held[self.path]
      entry[1] -= 1
      if entry[1] == 0:
        del _held[self.path]
        os.close(entry[0])         # releases the flock


# ----------------------------------------------------------------------------- same run

def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_differences(saved: dict, new: dict, defaults: dict | None = None) -> list[str]:
  """Dotted keys whose values differ between two configs (as JSON objects), except the keys of
  `RESUMABLE_KEYS`. A key the saved config lacks (added to the code since) counts as equal when
  the new value is its default in `defaults`."""
  a, b = _flatten(saved), _flatten(new)
  d = _flatten(defaults) if defaults is not None else {}
  diff = []
  for key in sorted(set(a) | set(b)):
    if key in RESUMABLE_KEYS:
      continue
    if key not in a and key in b and key in d and b[key] == d[key]:
      continue
    if a.get(key, _MISSING) != b.get(key, _MISSING):
      diff.append(key)
  return diff


_MISSING = object()


def check_resume(workdir: str, new: dict, defaults: dict | None = None) -> None:
  """A `RunDirError` unless `workdir` is new or holds a run of the same config (`new`, JSON)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path} cannot be read ({first_line(e)}); move the folder away or use "
                      "another --workdir") from None
  diff = config_differences(saved, new, defaults)
  if diff:
    a, b = _flatten(saved), _flatten(new)
    shown = "; ".join(f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
                      for k in diff[:8]) + ("; ..." if len(diff) > 8 else "")
    raise RunDirError(
        f"{workdir} holds another run ({path} differs in {', '.join(diff)}: {shown}); a run "
        f"folder is resumed only by the same run (it may change only "
        f"{', '.join(RESUMABLE_KEYS)}). Use another --workdir")


# ----------------------------------------------------------------------------- processes

PARENT_ENV = "MSCAN_PARENT_PID"   # set by the grid runner for its children


def die_with_parent() -> None:
  """If the grid started this process (`MSCAN_PARENT_PID`), die when the grid dies, even by
  SIGKILL (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`; nothing elsewhere)."""
  parent = os.environ.pop(PARENT_ENV, "")
  if not parent or not sys.platform.startswith("linux"):
    return
  import ctypes
  pr_set_pdeathsig = 1
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
  if os.getppid() != int(parent):   # the grid died before the call above
    os._exit(1)


def first_line(e: BaseException, limit: int = 300) -> str:
  """The first line of an exception's message (cut at `limit` characters), for one-line notes."""
  text = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return text if len(text) <= limit else text[:limit] + "..."
