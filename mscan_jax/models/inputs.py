"""The inputs every baseline sees (paper §4.1.1, Appendix A.2): embeddings of the user,
the candidate item and the scenario, plus behaviour sequences pooled by DIN-style target attention.

    x = [u ⊕ i ⊕ s ⊕ DIN(i, S_u) (⊕ DIN(i, H_u))]          (B, F)

Which behaviours a baseline sees is one switch, `config.baseline.behaviours`:
  "cur"      DIN over the current-scenario behaviours S_u (default). This is the input of the
             paper's "w/o SACA, w/o SBE" variant (§4.3: "it only utilizes the historical behaviors
             from the current scenario as features"), which the paper calls the input of "other
             mainstream state-of-the-art models".
  "cur+all"  also DIN over the behaviours of all scenarios H_u (its own attention parameters):
             the same behaviours M-scan's co-attention reads in the paper's form.
  "cur+all+context"
             also DIN over H_u whose behaviours carry their click flag and scenario id, as M-scan
             with `history_context` reads them: key_j = [h_j ⊕ click_j ⊕ scen_j] (tables
             `history_click`, `history_scenario`), query = [i ⊕ 0 ⊕ scen(candidate)], so that
             a baseline can be given exactly M-scan's information (equal-information rows).
  "none"     no behaviour feature: [u ⊕ i ⊕ s].

Target attention follows DIN (Zhou et al., KDD 2018, Eq. 3) as in DIN's released code
(`attention` in din/model.py): the score of behaviour k is FFN([q ⊕ k ⊕ q-k ⊕ q*k]) with sigmoid hidden
layers (80, 40), divided by sqrt(dim), masked on padding and normalised by a softmax over the
real behaviours; a user with no behaviour pools to the zero vector.

Every baseline builds its input through `BaselineInputs`, so they share one implementation (and
one parameter layout: `inputs/embed/...`, `inputs/din_cur/...`), never a copy per model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mscan_jax.data.schema import Schema
from mscan_jax.models.common import activation_dtype
from mscan_jax.models.experts import scenario_index
from mscan_jax.models.layers import Embedders, length_mask

Dtype = Any

BEHAVIOURS = ("cur", "cur+all", "cur+all+context", "none")

# DIN's attention FFN: hidden (80, 40), sigmoid (DIN's released code, din/model.py).
DEFAULTS = {"attn_mlp": (80, 40)}


class DinPooling(nn.Module):
  """DIN target attention: (query (B, E), keys (B, L, E), lengths (B,)) -> pooled (B, E)."""
  hidden: Sequence[int] = DEFAULTS["attn_mlp"]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query: jnp.ndarray, keys: jnp.ndarray, lengths: jnp.ndarray) -> jnp.ndarray:
    b, l, e = keys.shape
    q = jnp.broadcast_to(query[:, None, :], keys.shape)                  # (B, L, E)
    h = jnp.concatenate([q, keys, q - keys, q * keys], axis=-1)         # (B, L, 4E)
    for width in self.hidden:
      h = nn.sigmoid(nn.Dense(width, dtype=self.dtype)(h))
    score = nn.Dense(1, dtype=self.dtype)(h)[..., 0].astype(jnp.float32) / math.sqrt(e)  # (B, L)
    mask = length_mask(lengths.astype(jnp.int32), l)                     # (B, L)
    score = jnp.where(mask, score, -1e9)
    weight = jax.nn.softmax(score, axis=-1) * mask                       # 0 on padding and for L=0
    return jnp.einsum("bl,ble->be", weight.astype(keys.dtype), keys)      # (B, E)


class BaselineInputs(nn.Module):
  """`__call__(batch) -> {"x": (B, F), "s": (B, Fs*D)}`: the shared input of every baseline.

  "s" (the scenario embedding, also inside "x") is returned for models that read the scenario's
  representation on its own (M2M, STAR's auxiliary network, AESM2's gates).
  """
  schema: Schema
  embed_dim: int = 32
  behaviours: str = "cur"
  attn_mlp: Sequence[int] = DEFAULTS["attn_mlp"]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, batch: dict) -> dict[str, jnp.ndarray]:
    if self.behaviours not in BEHAVIOURS:
      raise ValueError(f"config.baseline.behaviours={self.behaviours!r}; "
                       f"valid: {', '.join(BEHAVIOURS)}")
    emb = Embedders(self.schema, self.embed_dim, self.dtype, name="embed")(batch)
    parts = [emb["u"], emb["i"], emb["s"]]                       # (B, Fu*D), (B, Fi*D), (B, Fs*D)
    if self.behaviours != "none":
      parts.append(DinPooling(self.attn_mlp, self.dtype, name="din_cur")(
          emb["i"], emb["cur"], batch["cur_len"]))                       # (B, Fi*D)
    if self.behaviours == "cur+all":
      parts.append(DinPooling(self.attn_mlp, self.dtype, name="din_all")(
          emb["i"], emb["all"], batch["all_len"]))                       # (B, Fi*D)
    if self.behaviours == "cur+all+context":
      d, sch = self.embed_dim, self.schema
      mask = length_mask(batch["all_len"].astype(jnp.int32), sch.max_all_len)[..., None]
      click_t = nn.Embed(2, d, name="history_click")
      scen_t = nn.Embed(sch.num_scenarios + 1, d, name="history_scenario")
      keys = jnp.concatenate([
          emb["all"], (click_t(jnp.clip(batch["all_click"], 0, 1)) * mask).astype(self.dtype),
          (scen_t(batch["all_scenario"]) * mask).astype(self.dtype)], axis=-1)  # (B, Lh, Fi*D+2D)
      query = jnp.concatenate([emb["i"], jnp.zeros(emb["i"].shape[:1] + (d,), self.dtype),
                               scen_t(batch["scenario"][:, 0]).astype(self.dtype)], axis=-1)
      parts.append(DinPooling(self.attn_mlp, self.dtype, name="din_all")(
          query, keys, batch["all_len"]))                                # (B, Fi*D+2D)
    return {"x": jnp.concatenate(parts, axis=-1), "s": emb["s"]}


class Baseline(nn.Module):
  """What every baseline is made of: the fields of its input (`inputs_from_config`) and the
  input itself. A baseline subclasses it, adds its own fields (all with defaults) and reads its
  input with `self.features(batch)` inside its `@nn.compact __call__`."""
  schema: Schema
  embed_dim: int = 32
  behaviours: str = "cur"
  dtype: Dtype = jnp.float32

  def features(self, batch: dict) -> tuple[dict[str, jnp.ndarray], jnp.ndarray]:
    """(`BaselineInputs` of the batch, the submodule "inputs": {"x": (B, F), "s": (B, Fs*D)};
    each sample's row of the per-scenario parameters, (B,) int32, `experts.scenario_index`)."""
    feats = BaselineInputs(self.schema, self.embed_dim, self.behaviours, dtype=self.dtype,
                           name="inputs")(batch)
    return feats, scenario_index(batch, self.schema.num_scenarios)


def input_dim(schema: Schema, embed_dim: int, behaviours: str) -> int:
  """F, the width of `BaselineInputs(...)["x"]`."""
  fu, fi, fs = len(schema.user_fields), len(schema.item_fields), len(schema.scenario_fields)
  n_seq = {"cur": 1, "cur+all": 2, "cur+all+context": 2, "none": 0}[behaviours]
  context = 2 if behaviours == "cur+all+context" else 0
  return (fu + fi + fs + n_seq * fi + context) * embed_dim


def option(config, key: str, defaults: dict):
  """`config.baseline.<key>` where set, else the model's documented default `defaults[key]`.

  Unset is () for sizes, 0 for counts and a negative number for rates (see `config.baseline`).
  """
  value = config.baseline[key]
  if isinstance(value, (tuple, list)):
    return tuple(int(v) for v in value) if len(value) else tuple(defaults[key])
  if isinstance(value, float):
    return float(value) if value >= 0 else float(defaults[key])
  return int(value) if value > 0 else int(defaults[key])


def build(cls, config, schema: Schema, defaults: dict, keys: tuple[str, ...], **extra):
  """`cls(**inputs_from_config(...), **{key: option(config, key, defaults) for key in keys}, **extra)`:
  the one way every baseline is built from its config and its documented defaults."""
  return cls(**inputs_from_config(config, schema),
             **{key: option(config, key, defaults) for key in keys}, **extra)


def inputs_from_config(config, schema: Schema) -> dict:
  """Fields of `BaselineInputs` (and the activation dtype) from the config."""
  behaviours = config.baseline.behaviours
  if behaviours not in BEHAVIOURS:
    raise ValueError(f"config.baseline.behaviours={behaviours!r}; valid: {', '.join(BEHAVIOURS)}")
  return dict(schema=schema, embed_dim=int(config.embed_dim), behaviours=behaviours,
              dtype=activation_dtype(config))
