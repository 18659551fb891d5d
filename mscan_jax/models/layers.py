"""Layers shared by M-scan and the baselines: field embeddings and feed-forward networks.

Every model embeds its inputs through `FieldEmbed` (one table per categorical field, row 0 is
padding and embeds to zero), so baselines and M-scan see the same representations.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mscan_jax.data.schema import Field, Schema

Dtype = Any


class FieldEmbed(nn.Module):
  """One embedding table per field; id 0 embeds to the zero vector.

  `__call__(ids)`: ids (..., F) int -> (..., F * dim), the concatenation of the field embeddings.
  """
  fields: Sequence[Field]
  dim: int
  dtype: Dtype = jnp.float32
  name_prefix: str = ""

  @nn.compact
  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    outs = []
    for f_idx, field in enumerate(self.fields):
      # The lookup runs in float32 and is cast afterwards: with a bfloat16 lookup the gradient
      # is a bfloat16 scatter-add into the whole table, which ran ~30x slower on an H200.
      table = nn.Embed(field.vocab_size, self.dim, dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(stddev=0.05),
                       name=f"{self.name_prefix}{field.name}")
      x = ids[..., f_idx]
      outs.append((table(x) * (x > 0)[..., None]).astype(self.dtype))   # (..., D)
    return jnp.concatenate(outs, axis=-1)                               # (..., F*D)


class Embedders(nn.Module):
  """The three embedders of a schema. Item tables are shared by the candidate item and by every
  behaviour in `cur_seq` / `all_seq` (a behaviour is its item's field embeddings, concatenated)."""
  schema: Schema
  dim: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.user = FieldEmbed(self.schema.user_fields, self.dim, self.dtype, "user_")
    self.item = FieldEmbed(self.schema.item_fields, self.dim, self.dtype, "item_")
    self.scenario = FieldEmbed(self.schema.scenario_fields, self.dim, self.dtype, "scenario_")

  def __call__(self, batch) -> dict[str, jnp.ndarray]:
    return {
        "u": self.user(batch["user"]),                 # (B, Fu*D)
        "i": self.item(batch["item"]),                 # (B, Fi*D)
        "s": self.scenario(batch["scenario"]),         # (B, Fs*D)
        "cur": self.item(batch["cur_seq"]),            # (B, Ls, Fi*D)
        "all": self.item(batch["all_seq"]),            # (B, Lh, Fi*D)
    }


class MLP(nn.Module):
  """Dense -> ReLU -> Dropout for each hidden size, then an optional linear output of `out_dim`."""
  hidden: Sequence[int]
  dropout: float = 0.0
  out_dim: int | None = 1
  activation: Any = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    for width in self.hidden:
      x = nn.Dense(width, dtype=self.dtype)(x)
      x = self.activation(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.out_dim is not None:
      x = nn.Dense(self.out_dim, dtype=self.dtype)(x)
    return x


def length_mask(lengths: jnp.ndarray, max_len: int) -> jnp.ndarray:
  """lengths (B,) -> (B, L) bool, True on the first `length` positions."""
  return jnp.arange(max_len)[None, :] < lengths[:, None]
