"""Reference scorers: cheap models with no sequence feature and nothing of M-scan, and oracles.

They are trained by the same loop, take the same batch and return the same named logits as every
model, so they appear as reference rows beside every table. They tell a reader how much of the
gap between an unpersonalised scorer and the truth a model closes:

  popularity    y = b_0 + b_item                                  (the item's click propensity)
  logreg        y = b_0 + Σ_fields b_user,f + Σ b_item,f + Σ b_scen,f   (bias-only LR)
  mf            logreg + <p_user, q_item>  (dim = config.reference.dim) (matrix factorisation)
  oracle_like   y = logit(true_prob)             the true like probability (the interest, M)
  oracle_click  y = logit(true_exam * true_prob) the true click probability (exposure x like)

The biases cover every field of their group (user id and profile fields, item id and category,
...); popularity uses the item id alone. The oracles have no parameter and read the truth that
only simulated data records (`schema.has_truth`).
"""

from __future__ import annotations

import copy
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Field, Schema

_EPS = 1e-6


def _logit(p: jnp.ndarray) -> jnp.ndarray:
  p = jnp.clip(p.astype(jnp.float32), _EPS, 1 - _EPS)
  return jnp.log(p) - jnp.log1p(-p)


class Biases(nn.Module):
  """Σ_f b_f[ids[:, f]] over `fields`: ids (B, F) -> (B,); id 0 (unknown) has bias 0."""
  fields: Sequence[Field]
  prefix: str

  @nn.compact
  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    total = jnp.zeros(ids.shape[:1], jnp.float32)
    for f_idx, field in enumerate(self.fields):
      table = nn.Embed(field.vocab_size, 1, embedding_init=nn.initializers.zeros,
                       name=f"{self.prefix}{field.name}")
      x = ids[:, f_idx]
      total = total + table(x)[:, 0] * (x > 0)
    return total


class BiasScorer(nn.Module):
  """Popularity, bias-only LR and MF: `__call__(batch, *, train) -> {"y_m": (B,)}`."""
  schema: Schema
  groups: tuple[str, ...]         # batch keys whose fields get biases: ("item",) or all three
  item_id_only: bool = False      # popularity: the item id column alone
  dim: int = 0                    # > 0: + <p_user_id, q_item_id> (MF)

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    del train
    fields = {"user": self.schema.user_fields, "item": self.schema.item_fields,
              "scenario": self.schema.scenario_fields}
    y = self.param("b0", nn.initializers.zeros, ())
    for g in self.groups:
      fs = fields[g][:1] if self.item_id_only else fields[g]
      y = y + Biases(fs, f"{g}_", name=f"bias_{g}")(batch[g][:, :len(fs)])      # (B,)
    if self.dim > 0:
      u_field, i_field = self.schema.user_fields[0], self.schema.item_fields[0]
      init = nn.initializers.normal(stddev=0.05)
      u, i = batch["user"][:, 0], batch["item"][:, 0]
      p = nn.Embed(u_field.vocab_size, self.dim, embedding_init=init, name="p_user")(u)
      q = nn.Embed(i_field.vocab_size, self.dim, embedding_init=init, name="q_item")(i)
      y = y + jnp.sum(p * q, -1) * (u > 0) * (i > 0)                             # (B,)
    return {"y_m": y.astype(jnp.float32)}


class Oracle(nn.Module):
  """Scores by the recorded truth: logit of true_prob (x true_exam with `click`)."""
  click: bool

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    del train
    for key in ("true_prob",) + (("true_exam",) if self.click else ()):
      if key not in batch:
        raise ValueError(f"the oracle reads batch[{key!r}], which this dataset does not record")
    p = batch["true_prob"] * (batch["true_exam"] if self.click else 1.0)
    return {"y_m": _logit(p)}


def stages(config: ml_collections.ConfigDict) -> list:
  """One stage trained with the reference scorers' own settings (`config.reference.*`): biases
  and factors of ids need a larger step and more epochs than the paper's models (Adam 1e-3 over
  a few epochs leaves item biases near 0). They were chosen on the validation split of the
  default synthetic preset, before any model was trained on it."""
  c = copy.deepcopy(config)
  c.train.learning_rate = float(config.reference.learning_rate)
  c.train.weight_decay = float(config.reference.weight_decay)
  c.train.num_epochs = int(config.reference.num_epochs)
  return [("", c)]


# Factories (config, schema) -> module, one per registered name (mscan_jax.models).

def popularity(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  del config
  return BiasScorer(schema, ("item",), item_id_only=True)


def logreg(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  del config
  return BiasScorer(schema, ("user", "item", "scenario"))


def mf(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  return BiasScorer(schema, ("user", "item", "scenario"), dim=int(config.reference.dim))


def oracle_like(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  del config, schema
  return Oracle(click=False)


def oracle_click(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  del config, schema
  return Oracle(click=True)
