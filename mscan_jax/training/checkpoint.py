"""Checkpoints with Orbax `CheckpointManager` in `<workdir>/checkpoints`.

Each checkpoint holds the train state (parameters, optimizer state, step), the best-validation
parameters, and a JSON `meta` (data position = step, best validation AUC, evaluations without gain,
the loop's history). Starting again in the same workdir restores the latest step. Orbax writes in
the multi-host way: every process calls `save`, each writes its own shards, process 0 the metadata.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, best_params: Any, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        best=ocp.args.StandardSave(best_params),
        meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, state_like: Any, params_like: Any, step: int | None = None):
    """Restores (state, best_params, meta) into the structure (and shardings) of the targets."""
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)),
        best=ocp.args.StandardRestore(_abstract(params_like)),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["best"], restored["meta"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_best_params(workdir: str, params_like: Any) -> Any:
  """The best-validation parameters of the run in `workdir` (e.g. `mix` before `finetune`)."""
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"{ckpt.directory}: no checkpoint to initialise from "
                            "(config.train.init_from)")
  restored = ckpt.manager.restore(ckpt.latest_step(), args=ocp.args.Composite(
      best=ocp.args.StandardRestore(_abstract(params_like))))
  ckpt.close()
  return restored["best"]


def _abstract(tree: Any) -> Any:
  def to_struct(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree_util.tree_map(to_struct, tree)
