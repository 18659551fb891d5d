"""Per-scenario parameters and experts, shared by the multi-scenario baselines.

Cloud Theme has 355 scenarios, so per-scenario towers, gates and experts are *stacked* parameters
(leading axis = scenario) selected by each sample's scenario id: never a Python loop over
scenarios, and never every scenario's tower evaluated for every sample. The grouped product
`grouped_matmul(x, group, kernel)` computes `x[n] @ kernel[group[n]]` in one of two ways:

  "gather"  gathers each sample's own weight matrix and contracts it (einsum). Memory B*in*out,
            so the batch is processed in chunks of at most `GATHER_CHUNK_BYTES` of gathered
            weights under `jax.lax.map` (same FLOPs, bounded memory).
  "ragged"  sorts the samples by group, multiplies them with `jax.lax.ragged_dot` (group sizes
            from `jnp.bincount(group, length=G)`), and unsorts. On a GPU this is a grouped GEMM
            that reads each group's weights once.
  "auto"    "ragged" for at most `RAGGED_MAX_GROUPS` groups; above, "ragged" on an accelerator
            for weight matrices of at least `ACCEL_RAGGED_MIN_WEIGHTS` entries, else "gather".

Median ms of one product, forward / forward+backward, B=1024 (`python -m benchmarks.models
--grouped`). XLA:CPU lowers `ragged_dot` to a dense product over *every* group (cost x G), so on
CPU it wins only for few groups; on a GPU it is a real grouped product, and gathering wins only
for small matrices (gates):
                    2-core CPU (shared, loaded)                     NVIDIA H200 (jax 0.11.2)
                    plain gather  gather (chunked) ragged           gather      ragged
    G=3,   576x512  761 / 1221                     21 / 48          2.2 / 1.9   0.2 / 0.2
    G=3,    64x64   5.7 / 21                       0.6 / 3.9        0.2 / 0.2   0.2 / 0.1
    G=355, 576x512  912 / 1348    427 / 847        7228 / 16008     2.3 / 2.0   1.5 / 1.9
    G=355, 256x128  209 / 292     26 / 103         2441 / 2257      0.4 / 0.3   0.5 / 0.5
    G=355, 576x8    9 / 11                         1570 / 3322      0.2 / 0.1   1.0 / 0.7

Naming contract: every per-scenario parameter is named `group_*` and has the scenario as its
leading axis (P rows, row p = scenario id p + 1). The routing tests rely on it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jnp.ndarray]

GROUPED_IMPLS = ("auto", "gather", "ragged")
RAGGED_MAX_GROUPS = 16
ACCEL_RAGGED_MIN_WEIGHTS = 1 << 16
GATHER_CHUNK_BYTES = 32 << 20


def scenario_index(batch: dict, num_scenarios: int) -> jnp.ndarray:
  """Row of the stacked per-scenario parameters of each sample: scenario id - 1. (B,) int32.

  Evaluation padding (scenario id 0, mask 0) reads row 0; its prediction is ignored.
  """
  sid = batch["scenario"][:, 0].astype(jnp.int32)
  return jnp.clip(sid - 1, 0, num_scenarios - 1)


def resolve_impl(impl: str, num_groups: int, in_dim: int, out_dim: int) -> str:
  """The product for `impl`; "auto": "ragged" for few groups, or on an accelerator for a weight
  matrix of at least `ACCEL_RAGGED_MIN_WEIGHTS` entries; "gather" otherwise (measurements above)."""
  if impl not in GROUPED_IMPLS:
    raise ValueError(f"config.baseline.grouped_matmul={impl!r}; valid: {', '.join(GROUPED_IMPLS)}")
  if impl != "auto":
    return impl
  if num_groups <= RAGGED_MAX_GROUPS:
    return "ragged"
  if jax.default_backend() != "cpu" and in_dim * out_dim >= ACCEL_RAGGED_MIN_WEIGHTS:
    return "ragged"
  return "gather"


def stacked_lecun_normal(num_stack_axes: int) -> Initializer:
  """nn.Dense's LeCun normal for a kernel (*stack, in, out): fan-in is the "in" axis only."""
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2,
                                          out_axis=-1, batch_axis=tuple(range(num_stack_axes)))


def _gather_matmul(x: jnp.ndarray, group: jnp.ndarray, kernel: jnp.ndarray,
                   shared: jnp.ndarray | None) -> jnp.ndarray:
  def weights(g):                                                      # (n, in, out)
    return kernel[g] if shared is None else kernel[g] * shared

  n, k_in = x.shape
  k_out = kernel.shape[-1]
  chunk = n
  while chunk % 2 == 0 and chunk * k_in * k_out * kernel.dtype.itemsize > GATHER_CHUNK_BYTES:
    chunk //= 2
  if chunk == n:
    return jnp.einsum("ni,nio->no", x, weights(group))                 # (N, out)
  xs = x.reshape(n // chunk, chunk, k_in)
  gs = group.reshape(n // chunk, chunk)
  ys = jax.lax.map(lambda a: jnp.einsum("ni,nio->no", a[0], weights(a[1])), (xs, gs))
  return ys.reshape(n, k_out)


def _ragged_matmul(x: jnp.ndarray, group: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  order = jnp.argsort(group)                                           # (N,) samples by group
  sizes = jnp.bincount(group, length=kernel.shape[0]).astype(jnp.int32)  # (G,)
  y_sorted = jax.lax.ragged_dot(x[order], kernel, sizes)               # (N, out)
  return jnp.zeros_like(y_sorted).at[order].set(y_sorted)


def grouped_matmul(x: jnp.ndarray, group: jnp.ndarray, kernel: jnp.ndarray,
                   impl: str = "auto", shared: jnp.ndarray | None = None) -> jnp.ndarray:
  """y[n] = x[n] @ kernel[group[n]]: x (N, in), group (N,) int in [0, G), kernel (G, in, out).

  With `shared` (in, out): y[n] = x[n] @ (shared ⊙ kernel[group[n]]) (STAR's star topology);
  "gather" forms the product per chunk, "ragged" for all G groups at once.
  """
  impl = resolve_impl(impl, *kernel.shape)
  kernel = kernel.astype(x.dtype)
  shared = None if shared is None else shared.astype(x.dtype)
  if impl == "gather":
    return _gather_matmul(x, group, kernel, shared)
  return _ragged_matmul(x, group, kernel if shared is None else kernel * shared[None])


class GroupedDense(nn.Module):
  """A Dense layer with one weight matrix per group: `__call__(x (N, in), group (N,)) -> (N, out)`.

  With `sub_groups` = n > 1 (n experts per scenario) the parameters are (P, n, in, out) and
  `group` = scenario_row * n + expert.
  """
  num_groups: int
  features: int
  sub_groups: int = 1
  use_bias: bool = True
  impl: str = "auto"
  dtype: Dtype = jnp.float32
  kernel_init: Initializer | None = None      # None: LeCun normal per group (as nn.Dense)
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray, group: jnp.ndarray) -> jnp.ndarray:
    sub = () if self.sub_groups == 1 else (self.sub_groups,)
    in_dim = x.shape[-1]
    init = self.kernel_init or stacked_lecun_normal(1 + len(sub))
    kernel = self.param("group_kernel", init, (self.num_groups, *sub, in_dim, self.features))
    g = self.num_groups * self.sub_groups
    y = grouped_matmul(x.astype(self.dtype), group,
                       kernel.reshape(g, in_dim, self.features), self.impl)     # (N, out)
    if self.use_bias:
      bias = self.param("group_bias", self.bias_init, (self.num_groups, *sub, self.features))
      y = y + bias.reshape(g, self.features)[group].astype(self.dtype)
    return y


class GroupedMLP(nn.Module):
  """Per-group MLP: GroupedDense -> ReLU -> Dropout per hidden width, then an optional linear
  GroupedDense output of `out_dim`. `__call__(x (N, in), group (N,), *, train) -> (N, out)`."""
  num_groups: int
  hidden: Sequence[int]
  out_dim: int | None = 1
  sub_groups: int = 1
  dropout: float = 0.0
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, group: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    for width in self.hidden:
      x = GroupedDense(self.num_groups, width, self.sub_groups, impl=self.impl,
                       dtype=self.dtype)(x, group)
      x = nn.relu(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.out_dim is not None:
      x = GroupedDense(self.num_groups, self.out_dim, self.sub_groups, impl=self.impl,
                       dtype=self.dtype)(x, group)
    return x


class ScenarioTower(GroupedMLP):
  """The per-scenario head of the multi-scenario baselines: y = Tower_s(h), s = the sample's
  scenario (Shared Bottom, MMoE and PLE: paper Appendix A.2).

  A `GroupedMLP` (hidden layers GroupedDense -> ReLU -> Dropout, then a linear output of width
  `out_dim` = 1) whose group is the scenario row `sid` (`scenario_index`), so each sample runs
  only its own scenario's tower: `__call__(h (B, in), sid (B,), *, train) -> (B,)` float32 logit.
  Its parameters are GroupedMLP's (`GroupedDense_l/group_kernel` (P, in, out), ...).
  """

  @nn.compact
  def __call__(self, h: jnp.ndarray, sid: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    y = super().__call__(h, sid, train=train)                            # (B, 1)
    return y[:, 0].astype(jnp.float32)                                   # (B,)


class StackedDense(nn.Module):
  """`num` independent Dense layers applied together (shared experts, every sample).

  x (B, in) -> (B, num, out), every expert reads the same input; or x (B, num, in) -> (B, num,
  out), expert e reads x[:, e].
  """
  num: int
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    in_dim = x.shape[-1]
    kernel = self.param("kernel", stacked_lecun_normal(1), (self.num, in_dim, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.num, self.features))
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    x = x.astype(self.dtype)
    eq = "bi,eio->beo" if x.ndim == 2 else "bei,eio->beo"
    return jnp.einsum(eq, x, kernel) + bias                               # (B, num, out)


class Experts(nn.Module):
  """`num` shared expert MLPs (ReLU after every layer, as MMoE's experts): (B, in) or
  (B, num, in) -> (B, num, hidden[-1])."""
  num: int
  hidden: Sequence[int]
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    for width in self.hidden:
      x = nn.relu(StackedDense(self.num, width, self.dtype)(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class ScenarioExperts(nn.Module):
  """`num` expert MLPs *per scenario*; a sample runs only its own scenario's experts.

  x (B, in) or (B, num, in), sid (B,) -> (B, num, hidden[-1]); parameters (P, num, in, out).
  """
  num_scenarios: int
  num: int
  hidden: Sequence[int]
  dropout: float = 0.0
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, sid: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    b = sid.shape[0]
    if x.ndim == 2:
      x = jnp.broadcast_to(x[:, None, :], (b, self.num, x.shape[-1]))
    rows = x.reshape(b * self.num, x.shape[-1])                            # (B*n, in)
    group = (sid[:, None] * self.num + jnp.arange(self.num)[None, :]).reshape(-1)  # (B*n,)
    out = GroupedMLP(self.num_scenarios, self.hidden, out_dim=None, sub_groups=self.num,
                     dropout=self.dropout, impl=self.impl, dtype=self.dtype, name="mlp")(
                         rows, group, train=train)
    return out.reshape(b, self.num, -1)


def mix(gate_logits: jnp.ndarray, experts: jnp.ndarray) -> jnp.ndarray:
  """Softmax gate over experts: gate_logits (B, E), experts (B, E, D) -> (B, D)."""
  w = jax.nn.softmax(gate_logits.astype(jnp.float32), axis=-1).astype(experts.dtype)
  return jnp.einsum("be,bed->bd", w, experts)
