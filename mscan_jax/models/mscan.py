"""M-scan (paper §3, Figure 3): the matching tower with the scenario encoder and the
Scenario-Aware Co-Attention, and the scenario tower of the Scenario Bias Eliminator.

    u, i, s, S_u, H_u = embeddings of the batch       (one table per field, `layers.Embedders`)
    h_{N_us} = GRU(S_u)                                Eq. (4), state after the last real step
    R_h      = Σ_j beta_j h_bj                         Eq. (5), beta from Eq. (14)-(17)
    y_m      = FFN([u ⊕ i ⊕ s ⊕ h_{N_us} ⊕ R_h])       Eq. (6)
    y_s      = Scenario FFN(s)                         Eq. (7)

A behaviour (of S_u or H_u) is the concatenation of its item fields' embeddings, from the same
tables as the candidate item. Unlike the authors' code, h_{N_us} really feeds Eq. (6).

The defaults are the paper's model. Switches that are NOT the paper's form, each documented and
always labelled as such in tables (they exist to measure what each part buys):
  history_context=True        a behaviour of H_u also carries an embedding of its click flag
                              and of its scenario id (this project's addition; the authors' code
                              feeds the click flags of the impressions). The paper's h_bj is
                              the item alone.
  saca_scenario_aware=False   the co-attention without its scenario-aware part: plain target
                              attention of the candidate over H_u, same inputs and FFN, no max
                              over S_u (`sequence.CoAttention`).
  scenario_in_matching=False  the scenario embedding s is kept out of the matching tower (Eq. 6),
                              so scenario effects can only go through the scenario tower.
  fusion="probability"        the scenario tower's output is an exposure logit y_e and the
                              click probability is sigmoid(y_m) * sigmoid(y_e) (a PAL-style
                              factorisation, `objective`), instead of Eq. (8)'s y_m * sigmoid(y_s).

The scenario tower reads the shared scenario embedding s (Eq. 7 says s is the scenario feature
embedding); it has no tables of its own. Its hidden layers use the same dropout as the matching
tower.

The model returns `{"y_m": (B,), "y_s": (B,)}` (float32 logits) with the SBE on, `{"y_m": (B,)}`
with it off; the fusion of Eq. (8), the losses of Eq. (9)-(11) and the inference rule of Eq. (12)
live in `mscan_jax.training.objective`, never here.

Ablations (Table 2): `use_saca=False` drops R_h from Eq. (6) and creates no co-attention
parameters; `use_sbe=False` drops y_s and the scenario tower.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models.common import activation_dtype
from mscan_jax.models.layers import MLP, Embedders, length_mask
from mscan_jax.models.sequence import COATTENTION_IMPLS, CoAttention, MaskedGRU

Dtype = Any

# The scenario tower's output name for each fusion (the rules live in training/objective.py).
FUSION_OUTPUT = {"logit": "y_s", "probability": "y_e"}


class MScan(nn.Module):
  """M-scan, Eq. (4)-(7). `__call__(batch, *, train) -> {"y_m": (B,), ["y_s": (B,)]}` float32.

  Fields are plain hashable values (see `from_config`). `gru_hidden=0` means the behaviour
  dimension Fi * embed_dim. Dropout draws from the "dropout" rng when `train=True`.
  """
  schema: Schema
  embed_dim: int = 32
  mlp: tuple[int, ...] = (512, 256)
  scenario_mlp: tuple[int, ...] = (64,)
  attn_mlp: tuple[int, ...] = (200, 80)
  dropout: float = 0.2
  use_saca: bool = True
  use_sbe: bool = True
  coattention: str = "factored"
  coattention_tile: int = 256       # batch rows per tile of the co-attention's pairs (0 = whole batch)
  coattention_backward: str = "max"  # max: differentiate each j's arg-max pair only | autodiff
  gru_hidden: int = 0
  history_context: bool = False
  saca_scenario_aware: bool = True
  scenario_in_matching: bool = True
  fusion: str = "logit"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    if self.fusion not in FUSION_OUTPUT:
      raise ValueError(f"MScan.fusion={self.fusion!r}; valid: {', '.join(FUSION_OUTPUT)}")
    if self.coattention not in COATTENTION_IMPLS:
      raise ValueError(f"MScan.coattention={self.coattention!r}; valid: {', '.join(COATTENTION_IMPLS)}")
    self._check_batch(batch)
    dt = self.dtype
    sch = self.schema
    emb = Embedders(sch, self.embed_dim, dt, name="embed")(batch)
    u, i, s = emb["u"], emb["i"], emb["s"]                    # (B, Fu*D), (B, Fi*D), (B, Fs*D)
    cur, hist = emb["cur"], emb["all"]                       # (B, Ls, Fi*D), (B, Lh, Fi*D)
    cur_len = batch["cur_len"].astype(jnp.int32)
    all_len = batch["all_len"].astype(jnp.int32)
    if self.history_context:
      # A behaviour of H_u also carries what the log knows of it (§2.1): its click flag (H_u
      # holds impressions with flags by default) and its scenario id. Padding embeds to zero.
      all_mask = length_mask(all_len, sch.max_all_len)[..., None].astype(dt)       # (B, Lh, 1)
      click = nn.Embed(2, self.embed_dim, name="history_click")(
          jnp.clip(batch["all_click"], 0, 1)).astype(dt)                           # (B, Lh, D)
      scen = nn.Embed(sch.num_scenarios + 1, self.embed_dim, name="history_scenario")(
          batch["all_scenario"]).astype(dt)                                        # (B, Lh, D)
      hist = jnp.concatenate([hist, click * all_mask, scen * all_mask], axis=-1)   # (B, Lh, Fi*D+2D)

    # Eq. (4): scenario encoder over S_u; zeros for a user with no current-scenario behaviour.
    hidden = self.gru_hidden or cur.shape[-1]
    h_cur = MaskedGRU(hidden, dt, name="scenario_encoder")(cur, cur_len)   # (B, H)

    parts = [u, i, s, h_cur] if self.scenario_in_matching else [u, i, h_cur]
    if self.use_saca:
      # Eq. (14)-(17) and (5): R_h (B, Dh).
      r_h, _ = CoAttention(self.attn_mlp, self.coattention, self.saca_scenario_aware, dtype=dt,
                           tile=self.coattention_tile, backward=self.coattention_backward,
                           name="coattention")(
          hist, i, cur, length_mask(all_len, sch.max_all_len), length_mask(cur_len, sch.max_cur_len))
      parts.append(r_h)

    # Eq. (6): matching tower.
    x = jnp.concatenate([p.astype(dt) for p in parts], axis=-1)
    y_m = MLP(self.mlp, self.dropout, 1, dtype=dt, name="matching_tower")(x, train=train)[:, 0]
    out = {"y_m": y_m.astype(jnp.float32)}                    # (B,)
    if self.use_sbe:
      # Eq. (7): scenario tower on the shared scenario embedding s. Its output is named by the
      # fusion it enters (objective.py): y_s for Eq. (8), y_e for the probability fusion.
      y_s = MLP(self.scenario_mlp, self.dropout, 1, dtype=dt, name="scenario_tower")(s, train=train)
      out[FUSION_OUTPUT[self.fusion]] = y_s[:, 0].astype(jnp.float32)   # (B,)
    return out

  def _check_batch(self, batch: dict) -> None:
    """Static shape check (free under jit): names the offending key."""
    sch = self.schema
    fu, fi, fs = len(sch.user_fields), len(sch.item_fields), len(sch.scenario_fields)
    b = batch["user"].shape[0]
    expected = {"user": (b, fu), "item": (b, fi), "scenario": (b, fs),
                "cur_seq": (b, sch.max_cur_len, fi), "cur_len": (b,),
                "all_seq": (b, sch.max_all_len, fi), "all_len": (b,)}
    for key, shape in expected.items():
      if key not in batch:
        raise ValueError(f"MScan: batch has no {key!r} (see mscan_jax.data.schema for the layout)")
      if tuple(batch[key].shape) != shape:
        raise ValueError(f"MScan: batch[{key!r}] has shape {tuple(batch[key].shape)}, "
                         f"expected {shape} for schema {sch.name!r}")


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> MScan:
  """Builds MScan from `config.embed_dim`, `config.mscan.*` and `config.dtype`.

  `config.mscan.gru_hidden` is optional (absent or 0: the behaviour dimension Fi * embed_dim).
  """
  m = config.mscan
  return MScan(
      schema=schema,
      embed_dim=int(config.embed_dim),
      mlp=tuple(int(w) for w in m.mlp),
      scenario_mlp=tuple(int(w) for w in m.scenario_mlp),
      attn_mlp=tuple(int(w) for w in m.attn_mlp),
      dropout=float(m.dropout),
      use_saca=bool(m.use_saca),
      use_sbe=bool(m.use_sbe),
      coattention=str(m.coattention),
      coattention_tile=int(m.get("coattention_tile", 256)),
      coattention_backward=str(m.get("coattention_backward", "max")),
      gru_hidden=int(m.get("gru_hidden", 0) or 0),
      history_context=bool(m.history_context),
      saca_scenario_aware=bool(m.saca_scenario_aware),
      scenario_in_matching=bool(m.scenario_in_matching),
      fusion=str(m.fusion),
      dtype=activation_dtype(config),
  )
