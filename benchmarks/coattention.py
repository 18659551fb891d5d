"""Forward+backward time of the Scenario-Aware Co-Attention (Eq. 14-17, 5), both paths.

    .venv/bin/python -m benchmarks.coattention                  # B=1024 Lh=40 Ls=20 Fi=4 D=32
    .venv/bin/python -m benchmarks.coattention --batch=256 --repeats=3
    .venv/bin/python -m benchmarks.coattention --impls=factored --tiles=0,64,128,256,512
    .venv/bin/python -m benchmarks.coattention --impls=factored --backwards=max,autodiff --rounds=3

Prints, for each impl (factored, pairwise), backward pass of the factored path
(`CoAttention.backward`: max = through the arg-max pairs only, autodiff = through every pair)
and batch tile (`CoAttention.tile`, 0 = the whole batch in one piece), the median wall time of
one jitted
value_and_grad of sum(R_h) + sum(beta^2) w.r.t. the layer's parameters and its inputs, and the
largest differences of R_h and of the gradients between the variants on the same parameters.
With --rounds=N the variants are timed in N alternating rounds (noise on a shared machine hits
each alike) and the median over every round is printed. Not a test.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mscan_jax.models.sequence import CoAttention


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--lh", type=int, default=40)
  ap.add_argument("--ls", type=int, default=20)
  ap.add_argument("--fields", type=int, default=4, help="item fields Fi")
  ap.add_argument("--dim", type=int, default=32, help="embedding size D")
  ap.add_argument("--attn", type=str, default="200,80")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--impls", type=str, default="factored,pairwise")
  ap.add_argument("--tiles", type=str, default="256", help="batch tiles, 0 = no tiling")
  ap.add_argument("--backwards", type=str, default="max,autodiff",
                  help="backward passes of the factored path (pairwise: autodiff only)")
  ap.add_argument("--rounds", type=int, default=1, help="alternating timing rounds")
  args = ap.parse_args()

  hidden = tuple(int(w) for w in args.attn.split(","))
  d = args.fields * args.dim
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(args.batch, args.lh, d)), jnp.float32)      # (B, Lh, Fi*D)
  i = jnp.asarray(rng.normal(size=(args.batch, d)), jnp.float32)               # (B, Fi*D)
  s = jnp.asarray(rng.normal(size=(args.batch, args.ls, d)), jnp.float32)      # (B, Ls, Fi*D)
  h_mask = jnp.arange(args.lh)[None] < jnp.asarray(rng.integers(0, args.lh + 1, args.batch))[:, None]
  s_mask = jnp.arange(args.ls)[None] < jnp.asarray(rng.integers(0, args.ls + 1, args.batch))[:, None]
  params = CoAttention(hidden).init(jax.random.key(0), h, i, s, h_mask, s_mask)

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); "
        f"B={args.batch} Lh={args.lh} Ls={args.ls} Fi*D={d} attn={hidden}")
  variants = [(impl, bw, int(t)) for impl in args.impls.split(",")
              for bw in (args.backwards.split(",") if impl == "factored" else ("autodiff",))
              for t in args.tiles.split(",")]
  steps, outs, times = {}, {}, {v: [] for v in variants}
  for v in variants:
    impl, bw, tile = v
    layer = CoAttention(hidden, impl=impl, tile=tile, backward=bw)

    def loss(p, hh, ss, layer=layer):
      r, beta = layer.apply(p, hh, i, ss, h_mask, s_mask)
      return r.sum() + (beta ** 2).sum(), r
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    t0 = time.perf_counter()
    (_, r), grads = jax.block_until_ready(step(params, h, s))
    compile_s = time.perf_counter() - t0
    temp = step.lower(params, h, s).compile().memory_analysis().temp_size_in_bytes
    steps[v], outs[v] = step, (np.asarray(r), jax.tree.map(np.asarray, grads))
    print(f"{impl:9s} {bw:8s} tile {tile:4d}: first call incl. compile {compile_s:.1f} s, "
          f"XLA temporaries {temp / 2**20:,.0f} MiB", flush=True)
  for _ in range(args.rounds):
    for v in variants:
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(steps[v](params, h, s))
        times[v].append(time.perf_counter() - t0)
  for (impl, bw, tile), ts in times.items():
    print(f"{impl:9s} {bw:8s} tile {tile:4d}: forward+backward median {np.median(ts) * 1e3:8.1f} ms "
          f"(min {min(ts) * 1e3:.1f}, {len(ts)} calls)")
  ref_r, ref_g = next(iter(outs.values()))
  print(f"over the rows above, against the first: max |R_h diff| = "
        f"{max(np.abs(r - ref_r).max() for r, _ in outs.values()):.2e}, max relative gradient "
        f"diff = {max(_rel_diff(ref_g, g) for _, g in outs.values()):.2e}")


def _rel_diff(a, b) -> float:
  """max over leaves of max |a - b| / max(max |a|, a tenth of the tree's max |a|): a leaf that
  is zero up to rounding (the score's bias: softmax ignores a shift) is not divided by noise."""
  tree = max(float(np.abs(x).max()) for x in jax.tree.leaves(a))
  return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 0.1 * tree, 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


if __name__ == "__main__":
  main()
