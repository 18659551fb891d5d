"""Sequence layers of M-scan: the scenario encoder (Eq. 4) and the Scenario-Aware Co-Attention
(paper §3.2, Eq. 13-17, and the aggregation of Eq. 5).

`MaskedGRU`    the GRU of Eq. (4) over the current-scenario behaviours S_u, written as a
               `jax.lax.scan` over time that stops updating a row after its last real step, so
               the returned state is h_{N_us}, not the state at the padded end.
`CoAttention`  C_jk = FFN([h_bj ⊕ i ⊕ s_bk]) (Eq. 14-15), c_j = max_k C_jk (Eq. 16),
               beta = softmax_j(c) (Eq. 17), R_h = Σ_j beta_j h_bj (Eq. 5), with padding masks.

Both take sequences padded at the end (the first `len` positions are real), as in
`mscan_jax.data.schema`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Implementations of the co-attention (same parameters, same numbers): see CoAttention.
COATTENTION_IMPLS = ("factored", "pairwise")
# Backward passes of the factored co-attention (same values, same gradients up to ties): see
# CoAttention.
COATTENTION_BACKWARDS = ("max", "autodiff")

Dtype = Any

# Fill for masked scores: large, negative and finite (a -inf would give NaN in exp(-inf - -inf)
# on all-masked rows and NaN gradients through `where`).
_MASK_FILL = -1e9


def _stacked_orthogonal(key, shape, dtype=jnp.float32):
  """(H, n*H): n independent orthogonal (H, H) blocks side by side (one per GRU gate)."""
  h, nh = shape
  keys = jax.random.split(key, nh // h)
  return jnp.concatenate([nn.initializers.orthogonal()(k, (h, h), dtype) for k in keys], axis=1)


class MaskedGRU(nn.Module):
  """The scenario encoder, Eq. (4), returning the state after each row's last real step.

      z_k = σ(W_z s_k + U_z h_{k-1} + b_z)
      r_k = σ(W_r s_k + U_r h_{k-1} + b_r)
      h_k = (1 - z_k) ⊙ h_{k-1} + z_k ⊙ tanh(W_h s_k + U_h (r_k ⊙ h_{k-1}) + b_h)

  Note Eq. (4) applies the reset gate *before* U_h and weighs the candidate by z (not by 1 - z as
  `flax.linen.GRUCell` does); this layer follows the paper. h_0 = 0, so a row of length 0 returns
  the zero vector. Parameters: `kernel_in` (D, 3H) = [W_z | W_r | W_h], `kernel_rec` (H, 3H) =
  [U_z | U_r | U_h], `bias` (3H,) = [b_z | b_r | b_h].

  `__call__(x, lengths)`: x (B, L, D), lengths (B,) int -> h_{N} (B, H).
  """
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, lengths: jnp.ndarray) -> jnp.ndarray:
    b, length, d = x.shape
    hd = self.hidden
    w = self.param("kernel_in", nn.initializers.lecun_normal(), (d, 3 * hd)).astype(self.dtype)
    u = self.param("kernel_rec", _stacked_orthogonal, (hd, 3 * hd)).astype(self.dtype)
    bias = self.param("bias", nn.initializers.zeros, (3 * hd,)).astype(self.dtype)
    u_zr, u_h = u[:, :2 * hd], u[:, 2 * hd:]                              # (H, 2H), (H, H)

    xs = jnp.swapaxes(x.astype(self.dtype), 0, 1)                         # (L, B, D)
    mask = (jnp.arange(length)[:, None] < lengths[None, :])[..., None]    # (L, B, 1)

    def step(h, inputs):                                                  # h (B, H)
      x_t, m_t = inputs
      gx = x_t @ w + bias                                                 # (B, 3H)
      zr = jax.nn.sigmoid(gx[:, :2 * hd] + h @ u_zr)                      # (B, 2H)
      z, r = zr[:, :hd], zr[:, hd:]
      cand = jnp.tanh(gx[:, 2 * hd:] + (r * h) @ u_h)                     # (B, H)
      h_new = (1 - z) * h + z * cand
      return jnp.where(m_t, h_new, h), None                               # keep h past the length

    h0 = jnp.zeros((b, hd), self.dtype)
    h_last, _ = jax.lax.scan(step, h0, (xs, mask))
    return h_last                                                         # (B, H)


def masked_softmax(scores: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last axis restricted to `mask`; an all-masked row gives all zeros.

  scores (..., L) float, mask (..., L) bool -> (..., L) float32. Finite values and finite
  gradients on every row (masked entries get weight exactly 0).
  """
  scores = jnp.where(mask, scores.astype(jnp.float32), _MASK_FILL)
  scores = scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
  e = jnp.exp(scores) * mask
  denom = e.sum(axis=-1, keepdims=True)
  return e / jnp.where(denom > 0, denom, 1.0)


def _concat_pairs(h: jnp.ndarray, i: jnp.ndarray, s: jnp.ndarray) -> jnp.ndarray:
  """[h_bj ⊕ i_b ⊕ s_bk] for every pair (j, k), by `jax.vmap`, the literal Eq. (15) input.

  h (B, Lh, Dh), i (B, Di), s (B, Ls, Ds) -> (B, Lh, Ls, Dh+Di+Ds).
  """
  def concat(hj, ib, sk):                                                 # (Dh,), (Di,), (Ds,)
    return jnp.concatenate([hj, ib, sk])                                  # (Dh+Di+Ds,)
  over_k = jax.vmap(concat, in_axes=(None, None, 0))                      # -> (Ls, Din)
  over_j = jax.vmap(over_k, in_axes=(0, None, None))                      # -> (Lh, Ls, Din)
  return jax.vmap(over_j, in_axes=(0, 0, 0))(h, i, s)                     # -> (B, Lh, Ls, Din)


def _split_tiles(x: jnp.ndarray, tile: int) -> jnp.ndarray:
  """(B, ...) -> (n, tile, ...), the batch padded with zero rows to n * tile; tile t holds rows
  t, t + n, t + 2n, ... (on a batch sharded over devices in contiguous blocks every tile spans
  all devices, so the data parallelism is kept)."""
  batch = x.shape[0]
  n = -(-batch // tile)
  x = jnp.pad(x, [(0, n * tile - batch)] + [(0, 0)] * (x.ndim - 1))
  return jnp.swapaxes(x.reshape((tile, n) + x.shape[1:]), 0, 1)


def _merge_tiles(x: jnp.ndarray, batch: int) -> jnp.ndarray:
  """(n, tile, ...) -> (B, ...), the inverse of `_split_tiles` (padding rows dropped)."""
  x = jnp.swapaxes(x, 0, 1)                                               # (T, n, ...)
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])[:batch]


def _tiled(tile: int, batch: int) -> bool:
  return 0 < tile < batch


def _over_tiles(fn: Callable[..., Any], args: Sequence[jnp.ndarray], tile: int) -> Any:
  """fn(*args) for args with a leading batch axis B, computed `tile` rows at a time.

  Row-wise `fn` ((T, ...) arrays -> a pytree of (T, ...) arrays) gives the same numbers either
  way. With 0 < tile < B the batch is padded with zero rows to n * tile, split into n tiles
  (`_split_tiles`) and `jax.lax.map`ped, each tile under `jax.checkpoint` so that the backward
  pass keeps only the tile's inputs (not its (T, Lh, Ls, H0) intermediates) and recomputes them.
  """
  batch = args[0].shape[0]
  if not _tiled(tile, batch):
    return fn(*args)
  body = jax.checkpoint(fn)
  out = jax.lax.map(lambda xs: body(*xs), tuple(_split_tiles(x, tile) for x in args))
  return jax.tree.map(lambda x: _merge_tiles(x, batch), out)              # (B, ...) leaves


def _vjp_over_tiles(fn: Callable[..., jnp.ndarray], params: Any, args: Sequence[jnp.ndarray],
                    consts: Sequence[jnp.ndarray], cotangent: jnp.ndarray, tile: int):
  """The VJP of row-wise fn(params, *args, *consts) -> (B, ...) at `cotangent`, `tile` rows at a
  time: (d params summed over the tiles, (d arg (B, ...) for each of args)). `consts` (masks,
  indices) get no cotangent. Tiling as `_over_tiles` (zero padding rows get a zero cotangent);
  a `jax.lax.scan` over the tiles carries the parameter gradient.
  """
  def vjp(p, xs, cs, g):
    _, pull = jax.vjp(lambda p, *xs: fn(p, *xs, *cs), p, *xs)
    grads = pull(g)
    return grads[0], grads[1:]

  batch = cotangent.shape[0]
  if not _tiled(tile, batch):
    return vjp(params, tuple(args), tuple(consts), cotangent)
  split = lambda seq: tuple(_split_tiles(x, tile) for x in seq)           # noqa: E731

  def step(acc, tiles):
    xs, cs, g = tiles
    dp, dxs = vjp(params, xs, cs, g)
    return jax.tree.map(jnp.add, acc, dp), dxs

  zeros = jax.tree.map(jnp.zeros_like, params)
  dp, dxs = jax.lax.scan(step, zeros, (split(args), split(consts), _split_tiles(cotangent, tile)))
  return dp, tuple(_merge_tiles(x, batch) for x in dxs)


class CoAttention(nn.Module):
  """Scenario-Aware Co-Attention, Eq. (14)-(17), and the history read-out R_h of Eq. (5).

  Attn (Eq. 15) is an FFN on [h_bj ⊕ i ⊕ s_bk]: Dense(hidden[0]) -> act -> ... -> Dense(1).

  impl="pairwise": the literal Eq. (15): every (j, k) pair's concatenation is built with
    `jax.vmap` (B x Lh x Ls vectors of size Dh+Di+Ds) and fed to the FFN.
  impl="factored" (default): the first Dense layer is linear, so
    [h_j ⊕ i ⊕ s_k] W + b = h_j W_h + (i W_i + b) + s_k W_s   (W split by rows),
    computed as O(Lh + Ls) matrix products and a broadcast add. Same numbers, same parameters
    (`kernel_0` (Dh+Di+Ds, hidden[0]), `bias_0`, `Dense_1`..., `score`): a model trained with
    one path can be run with the other.

  Edge cases (documented choices, finite values and gradients on every row):
    * N_us = 0 (no current-scenario behaviour): the max of Eq. (16) over an empty set is
      replaced by C_j0 = FFN([h_bj ⊕ i ⊕ 0]), the score with s_bk = 0, i.e. the co-attention
      degrades to DIN-style target attention on (h_bj, i) (Eq. 13) with the same FFN.
    * N_uh = 0 (no behaviour at all): beta = 0 and R_h = 0.

  scenario_aware=False (an ablation, not the paper's model): c_j = C_j0 for every row, i.e. plain
    target attention of the candidate over H_u with the same FFN and inputs, without the
    scenario-aware max over S_u; no pair is computed.

  tile (memory): the attention logits c (Eq. 14-16: the pair scores C_jk, their max over k and
    the fallback C_j0) are computed `tile` rows of the batch at a time (`jax.lax.map` over the
    batch padded to a multiple of `tile`, each tile under `jax.checkpoint`), so neither the
    forward nor the backward pass holds a (B, Lh, Ls, hidden[0]) or (B, Lh, hidden[0]) tensor
    for the whole batch, only (tile, Lh, Ls, hidden[0]) ones (tile 256, Lh 40, Ls 20, hidden
    200: 164 MB in float32, against 2.6 GB for the evaluation batch of 4096 in one piece). The
    backward pass recomputes a tile's scores from its inputs (backward="autodiff"), or only
    the selected pairs (backward="max"). Same parameters, same numbers; tile=0 (or a batch no
    larger than one tile) computes the batch in one piece.

  backward (the factored, scenario-aware path; the others differentiate as written):
    "max" (default): c_j = max_k C_jk (Eq. 16) passes its gradient to C_jk* alone, k*_j the
      (first) arg-max over the real k. The forward pass computes every pair's score (tile by
      tile, keeping no intermediate for the backward pass) and k*; the backward pass
      recomputes the FFN of Eq. (15) on the B x Lh pairs (j, k*_j) and on the fallback, and
      differentiates those (`jax.custom_vjp`): B x Lh pair FFNs forward and backward instead of
      B x Lh x Ls. Same forward numbers; gradients equal to autodiff's except at exact ties of
      the max, where autodiff splits the gradient equally among the tied k and "max" gives it
      to the first (tied pairs of equal inputs, e.g. one item twice in S_u, give the same
      parameter gradient either way).
    "autodiff": `jax.grad` through the max (the backward pass of every pair's FFN).

  `__call__(h, i, s, h_mask, s_mask)`: h (B, Lh, Dh) all-scenario behaviours H_u, i (B, Di)
  candidate item, s (B, Ls, Ds) current-scenario behaviours S_u, h_mask (B, Lh) and
  s_mask (B, Ls) bool (True = real) -> (R_h (B, Dh), beta (B, Lh) float32).
  """
  hidden: Sequence[int] = (200, 80)
  impl: str = "factored"
  scenario_aware: bool = True
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
  dtype: Dtype = jnp.float32
  tile: int = 256
  backward: str = "max"

  @nn.compact
  def __call__(self, h: jnp.ndarray, i: jnp.ndarray, s: jnp.ndarray, h_mask: jnp.ndarray,
               s_mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    if self.impl not in COATTENTION_IMPLS:
      raise ValueError(f"CoAttention.impl={self.impl!r}; valid: {', '.join(COATTENTION_IMPLS)}")
    if not self.hidden:
      raise ValueError("CoAttention.hidden must name at least one layer (Eq. 15 is an FFN)")
    if self.tile < 0:
      raise ValueError(f"CoAttention.tile={self.tile} must be >= 0 (0 = no tiling)")
    if self.backward not in COATTENTION_BACKWARDS:
      raise ValueError(f"CoAttention.backward={self.backward!r}; valid: "
                       f"{', '.join(COATTENTION_BACKWARDS)}")
    dt = self.dtype
    h, i, s = h.astype(dt), i.astype(dt), s.astype(dt)
    dh, di, ds = h.shape[-1], i.shape[-1], s.shape[-1]
    kernel = self.param("kernel_0", nn.initializers.lecun_normal(), (dh + di + ds, self.hidden[0]))
    bias = self.param("bias_0", nn.initializers.zeros, (self.hidden[0],))
    kernel, bias = kernel.astype(dt), bias.astype(dt)

    pairwise = self.impl == "pairwise"

    # The rest of the FFN, one set of parameters for the pairs and for the fallback. Called once
    # on a zero vector (unused) so that its parameters exist: the scores below are a pure
    # function of them, computed tile by tile under `jax.lax.map`.
    dense = [nn.Dense(width, dtype=dt, name=f"Dense_{n}")
             for n, width in enumerate(self.hidden[1:], start=1)]
    score = nn.Dense(1, dtype=dt, name="score")
    a = jnp.zeros((1, self.hidden[0]), dt)
    for layer in dense + [score]:
      a = layer(self.activation(a))
    # Every parameter of the FFN of Eq. (15), as one pytree for the pure functions below.
    ffn = {"kernel": kernel, "bias": bias,
           "tail": [layer.variables["params"] for layer in dense + [score]]}
    activation, aware, tile = self.activation, self.scenario_aware, self.tile

    def tail(q, a):                                                       # (..., H0) -> (...)
      for layer_q in q["tail"]:                                           # act -> Dense ... -> score
        layer = nn.Dense(layer_q["kernel"].shape[-1], dtype=dt, parent=None)  # unbound, pure
        a = layer.apply({"params": layer_q}, activation(a))
      return a[..., 0]

    def first_layer(q, hh, ii, ss):
      """Factored first layer: [h_j ⊕ i ⊕ s_k] W + b = (h_j W_h + i W_i + b) + s_k W_s.

      -> a_null (T, Lh, H0) (the pair with s_k = 0), s W_s (T, Ls, H0)."""
      w = q["kernel"]
      a_null = hh @ w[:dh] + (ii @ w[dh:dh + di] + q["bias"])[:, None, :]  # (T, Lh, H0)
      return a_null, ss @ w[dh + di:]                                     # (T, Ls, H0)

    def attention_logits(q, hh, ii, ss, sm):                              # one tile of T rows
      """c (T, Lh) float32 of Eq. (16), with the fallbacks of the docstring, and k* (T, Lh)
      int32, the (first) k of the max of Eq. (16) (0 on a row with N_us = 0)."""
      if pairwise and aware:
        # Fallback score with s_bk = 0 (N_us = 0), by concatenation as the pairs below.
        zeros_s = jnp.zeros(ss.shape[:1] + (1, ds), dt)                   # (T, 1, Ds)
        a_null = (_concat_pairs(hh, ii, zeros_s) @ q["kernel"] + q["bias"])[:, :, 0]  # (T, Lh, H0)
      else:
        a_null, proj_s = first_layer(q, hh, ii, ss)                       # (T, Lh, H0), (T, Ls, H0)
      c_null = tail(q, a_null).astype(jnp.float32)                        # (T, Lh)
      if not aware:
        return c_null, jnp.zeros(c_null.shape, jnp.int32)                 # target attention
      if pairwise:
        a_pairs = _concat_pairs(hh, ii, ss) @ q["kernel"] + q["bias"]     # (T, Lh, Ls, H0)
      else:
        a_pairs = a_null[:, :, None, :] + proj_s[:, None, :, :]           # (T, Lh, Ls, H0)
      # Eq. (16): masked max over the current-scenario behaviours k.
      scores = jnp.where(sm[:, None, :], tail(q, a_pairs).astype(jnp.float32), _MASK_FILL)
      c = jnp.where(sm.any(axis=-1, keepdims=True), scores.max(-1), c_null)  # (T, Lh)
      return c, scores.argmax(-1).astype(jnp.int32)                       # (T, Lh), (T, Lh)

    def selected_logits(q, hh, ii, ss, sm, k_star):                       # one tile of T rows
      """c (T, Lh) of `attention_logits` from the pairs (j, k*_j) only: equal to it in value
      (the same sums, up to the rounding of smaller matrix products), and in gradient, since
      the max of Eq. (16) passes c_j's gradient to C_jk* alone (ties aside)."""
      a_null, proj_s = first_layer(q, hh, ii, ss)                         # (T, Lh, H0), (T, Ls, H0)
      c_null = tail(q, a_null).astype(jnp.float32)                        # (T, Lh)
      a_sel = a_null + jnp.take_along_axis(proj_s, k_star[..., None], axis=1)  # (T, Lh, H0)
      c_sel = tail(q, a_sel).astype(jnp.float32)                          # (T, Lh): C_jk*
      return jnp.where(sm.any(axis=-1, keepdims=True), c_sel, c_null)

    @jax.custom_vjp
    def max_logits(q, hh, ii, ss, sm):
      """c (B, Lh) of `attention_logits` whose backward pass differentiates the selected pairs
      only: forward = every pair once, without residuals; backward = `selected_logits`'s VJP."""
      return _over_tiles(lambda *xs: attention_logits(q, *xs)[0], (hh, ii, ss, sm), tile)

    def max_logits_fwd(q, hh, ii, ss, sm):
      c, k_star = _over_tiles(functools.partial(attention_logits, q), (hh, ii, ss, sm), tile)
      return c, (q, hh, ii, ss, sm, k_star)                               # (B, Lh), residuals

    def max_logits_bwd(res, g):                                           # g (B, Lh) float32
      q, hh, ii, ss, sm, k_star = res
      dq, (dh_, di_, ds_) = _vjp_over_tiles(selected_logits, q, (hh, ii, ss), (sm, k_star), g,
                                            tile)
      return dq, dh_, di_, ds_, None

    max_logits.defvjp(max_logits_fwd, max_logits_bwd)

    if aware and not pairwise and self.backward == "max":
      c = max_logits(ffn, h, i, s, s_mask)                                # (B, Lh)
    else:                                                                 # plain autodiff
      c = _over_tiles(lambda *xs: attention_logits(ffn, *xs)[0], (h, i, s, s_mask), tile)
    # Eq. (17): masked softmax over the all-scenario behaviours j; Eq. (5): R_h.
    beta = masked_softmax(c, h_mask)                                      # (B, Lh) float32
    r_h = jnp.einsum("bj,bjd->bd", beta.astype(dt), h)                    # (B, Dh)
    return r_h, beta
