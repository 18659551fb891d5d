"""Data parallelism with `jax.sharding`: the mesh, the batch and parameter shardings,
and row-sharded embedding tables.

    mesh   = make_mesh()                         # 1-D mesh "data" over every device of every process
    batch  -> data_sharding(mesh)                # P("data"): split on the batch axis
    params -> state_shardings(state, mesh, shard_embeddings)
             shard_embeddings=False: every leaf replicated, P()
             shard_embeddings=True:  every embedding table (a `nn.Embed` "embedding" leaf) and
                                     its optimizer moments split by rows, P("data", None); the
                                     rest replicated

The step is one `jax.jit` with these shardings (no `pmap`): XLA inserts the all-reduce of the
gradients of replicated parameters, and for a row-sharded table a local masked gather plus an
all-reduce of the looked-up rows (the table itself is never gathered whole).

Row-sharding needs a row count divisible by the number of devices, and vocabularies are not: a
table is stored padded with zero rows up to a multiple of the device count (`pad_embeddings`), and
`RowPadded` hands the model its tables cut back to their true size, so the model, its shapes and
its numbers are those of the unpadded run. The padded rows are never looked up: their gradient is
0, so they stay 0 under weight decay and Adam, and add 0 to the gradient norm. A checkpoint of a
run with `shard_embeddings` holds the padded tables, so it resumes on the same device count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
EMBEDDING_LEAF = "embedding"     # the parameter name of flax.linen.Embed


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every process).

  Axis type Auto: with the explicit default of `jax.make_mesh`, `nn.Embed` fails with
  `ShardingTypeError` (seen with jax 0.10).
  """
  if devices is None:
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,))
  return Mesh(list(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """The batch: split on its first axis over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def is_embedding(path, leaf) -> bool:
  """True for an embedding table (or an optimizer moment mirroring one): a 2-D leaf named
  "embedding". Optax's Adam moments (`mu`, `nu`) repeat the parameters' keys, so the rule
  finds them too."""
  return bool(path) and _key_name(path[-1]) == EMBEDDING_LEAF and len(getattr(leaf, "shape", ())) == 2


def state_shardings(tree: Any, mesh: Mesh, shard_embeddings: bool = False) -> Any:
  """A pytree of `NamedSharding` matching `tree` (parameters, optimizer state, a TrainState;
  arrays or `ShapeDtypeStruct`s). Embedding tables whose row count divides by the mesh size are
  row-sharded when `shard_embeddings`; every other leaf is replicated."""
  n = mesh.size
  rep = replicated(mesh)
  rows = NamedSharding(mesh, P(DATA_AXIS, None))

  def rule(path, leaf):
    if shard_embeddings and is_embedding(path, leaf) and leaf.shape[0] % n == 0:
      return rows
    return rep
  return jax.tree_util.tree_map_with_path(rule, tree)


def padded_size(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def embedding_rows(params: Any) -> dict[tuple[str, ...], int]:
  """{path of each embedding table: its row count}, e.g. {("embed", "item", "item_item_id",
  "embedding"): 300}."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if is_embedding(path, leaf):
      out[tuple(_key_name(e) for e in path)] = int(leaf.shape[0])
  return out


def pad_embeddings(params: Any, multiple: int) -> Any:
  """Embedding tables padded with zero rows to a multiple of `multiple` rows."""
  def pad(path, leaf):
    if is_embedding(path, leaf):
      extra = padded_size(leaf.shape[0], multiple) - leaf.shape[0]
      if extra:
        return jnp.pad(leaf, ((0, extra), (0, 0)))
    return leaf
  return jax.tree_util.tree_map_with_path(pad, params)


def unpad_embeddings(params: Any, rows: dict[tuple[str, ...], int]) -> Any:
  """Embedding tables cut back to their true row counts `rows` (from `embedding_rows`)."""
  def cut(path, leaf):
    key = tuple(_key_name(e) for e in path)
    if key in rows and leaf.shape[0] != rows[key]:
      return leaf[:rows[key]]
    return leaf
  return jax.tree_util.tree_map_with_path(cut, params)


@dataclasses.dataclass(frozen=True, eq=False)
class RowPadded:
  """A model whose parameters arrive with padded embedding tables: `apply` cuts them back to
  the true sizes `rows` before calling the wrapped Flax module. Gradients flow to the padded
  arrays (zero on the padded rows)."""
  model: Any
  rows: dict

  def apply(self, variables: dict, *args, **kwargs):
    variables = dict(variables)
    variables["params"] = unpad_embeddings(variables["params"], self.rows)
    return self.model.apply(variables, *args, **kwargs)

  def __getattr__(self, name):            # schema, dtype, ... of the wrapped model
    if name in ("model", "rows") or name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.model, name)
