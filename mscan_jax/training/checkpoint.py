"""Checkpoints with Orbax `CheckpointManager` in `<workdir>/checkpoints`.

Each checkpoint holds the train state (parameters, optimizer state, step), the best-validation
parameters, and a JSON `meta` (data position = step, best validation AUC, evaluations without gain,
the loop's history), and, when the caller passes it, the input pipeline's grain iterator state
(`data_iter`, grain's own Orbax handler: one JSON file per process). Starting again in the same
workdir restores the latest step; the input pipeline continues from the saved grain state, or, in
a checkpoint without one (older runs), from the step (the same batch: the grain dataset is indexed
by the step, `mscan_jax.data.pipeline`). Orbax writes in the multi-host way: every process calls
`save`, each writes its own shards, process 0 the metadata.

A checkpoint that does not restore (its files truncated or lost, e.g. by a full disk) is not the
end of a run: the previous one is tried; once an older one restored, the damaged ones are moved
aside to `<workdir>/damaged_checkpoints/<step>-<time>` (so that their steps can be saved again),
each with one warning line (its step, the first line of the cause, where it went, the step
restored). Only when no checkpoint restores does the restore fail (`CheckpointError`), with one
message listing each step and its cause; then nothing is moved.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable

import grain
import grain.checkpoint  # noqa: F401  (registers grain's Orbax handler: CheckpointSave/Restore)
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """No checkpoint of a folder restores; the message lists each step and its cause."""


# The checkpoint item of the input pipeline's grain state.
DATA_ITER = "data_iter"


class Checkpointer:

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, best_params: Any, meta: dict,
           data_iter: grain.DatasetIterator | None = None) -> None:
    """Saves step `step`; `data_iter`: the input pipeline's grain iterator at that step (its
    `get_state()` is saved; `pipeline.Batches.at(step)`, since the loop reads ahead)."""
    items = {} if data_iter is None else {DATA_ITER: grain.checkpoint.CheckpointSave(data_iter)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        best=ocp.args.StandardSave(best_params),
        meta=ocp.args.JsonSave(meta), **items))
    self.manager.wait_until_finished()

  def restore(self, state_like: Any, params_like: Any, step: int | None = None,
              data_iter: grain.DatasetIterator | None = None):
    """Restores (state, best_params, meta) into the structure (and shardings) of the targets:
    of `step`, or of the latest step that restores (a damaged one is moved aside). A given
    `data_iter` gets that step's grain state (`restore_data_iter`)."""
    def one(s: int):
      restored = self.manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(state_like)),
          best=ocp.args.StandardRestore(_abstract(params_like)),
          meta=ocp.args.JsonRestore()))
      if data_iter is not None:
        self.restore_data_iter(s, data_iter)
      return restored["state"], restored["best"], restored["meta"]
    if step is not None:
      return one(step)
    return _latest_that_restores(self, one, move_aside=True)

  def restore_data_iter(self, step: int, data_iter: grain.DatasetIterator) -> bool:
    """Sets `data_iter` to the grain state saved at `step`. False, the iterator untouched (the
    caller started it at the step), when this process has none there: no checkpoint of `step`,
    one saved without it (older runs) or by another number of processes (grain keeps one file
    per process, `process_<i>-of-<n>.json`), or a damaged one (with a warning)."""
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not os.path.isfile(os.path.join(self.directory, str(step), DATA_ITER, own)):
      return False
    try:
      self.manager.restore(step, args=ocp.args.Composite(
          **{DATA_ITER: grain.checkpoint.CheckpointRestore(data_iter)}))
    except _DAMAGED as e:
      print(f"warning: the input pipeline state of checkpoint {step} in {self.directory} does "
            f"not restore ({type(e).__name__}); the input starts at step {step}", file=sys.stderr)
      return False
    return True

  def _move_aside(self, step: int) -> str:
    """Moves a damaged step out of the manager's folder (process 0; every process waits)."""
    workdir = os.path.dirname(self.directory)
    dest = os.path.join(workdir, "damaged_checkpoints", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_moved_aside_{step}")
    self.manager.reload()
    return dest

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_best_params(workdir: str, params_like: Any) -> Any:
  """The best-validation parameters of the run in `workdir` (e.g. `mix` before `finetune`)."""
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"{ckpt.directory}: no checkpoint to initialise from "
                            "(config.train.init_from)")

  def one(s: int):
    return ckpt.manager.restore(s, args=ocp.args.Composite(
        best=ocp.args.StandardRestore(_abstract(params_like))))["best"]
  best = _latest_that_restores(ckpt, one, move_aside=False)   # another run's folder: read only
  ckpt.close()
  return best


# How a damaged checkpoint fails (tensorstore reports a short file as ValueError, a missing one
# as FileNotFoundError, bad metadata as ValueError, KeyError or TypeError). A bug in this code
# (NameError, AttributeError, ...) is not one of them: it is raised as it is.
_DAMAGED = (ValueError, OSError, KeyError, TypeError, RuntimeError, EOFError)


def _latest_that_restores(ckpt: Checkpointer, restore_step: Callable[[int], Any], *,
                          move_aside: bool) -> Any:
  """restore_step(step) of the latest step that restores, newest first. Each damaged step newer
  than the one restored gets one warning line (step, first line of the cause, and with
  `move_aside` the folder it was moved to: none is moved when nothing restores)."""
  failures: list[tuple[int, str]] = []
  with _quiet_closed_loop_callbacks():
    for step in sorted(ckpt.manager.all_steps(), reverse=True):
      try:
        restored = restore_step(step)
      except _DAMAGED as e:
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        failures.append((step, f"{type(e).__name__}: {cause}"))
        continue
      for bad, cause in failures:
        where = f"moved to {ckpt._move_aside(bad)}; " if move_aside else ""
        print(f"warning: checkpoint {bad} in {ckpt.directory} does not restore ({cause}); "
              f"{where}restored step {step}", file=sys.stderr)
      return restored
  raise CheckpointError(f"{ckpt.directory}: no checkpoint restores ("
                        + "; ".join(f"step {s}: {c}" for s, c in failures)
                        + "). Move the folder away to start afresh")


@contextlib.contextmanager
def _quiet_closed_loop_callbacks():
  """Drops the "Event loop is closed" tracebacks of a failed restore's leftover reads.

  Orbax runs a restore's reads on a fresh event loop and closes it as soon as the first read
  fails (`asyncio_utils.run_sync`), with the other reads still in flight. When one of those
  completes, tensorstore's callback calls `loop.call_soon_threadsafe` on the closed loop, and
  tensorstore reports the RuntimeError through `sys.unraisablehook` (no object, no message: a
  bare traceback on stderr), one per leftover read. This hook drops exactly those while the
  steps are tried (the leftover reads of a step finish while the previous step is read) and passes
  every other unraisable exception to the hook it replaces.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _abstract(tree: Any) -> Any:
  def to_struct(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree_util.tree_map(to_struct, tree)
