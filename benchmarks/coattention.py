"""Forward+backward time of the Scenario-Aware Co-Attention (Eq. 14-17, 5), both paths.

    .venv/bin/python -m benchmarks.coattention                  # B=1024 Lh=40 Ls=20 Fi=4 D=32
    .venv/bin/python -m benchmarks.coattention --batch=256 --repeats=3
    .venv/bin/python -m benchmarks.coattention --impls=factored --tiles=0,64,128,256,512

Prints, for each impl (factored, pairwise) and batch tile (`CoAttention.tile`, 0 = the whole
batch in one piece), the median wall time of one jitted
value_and_grad of sum(R_h) + sum(beta^2) w.r.t. the layer's parameters and its inputs, and the
largest difference of R_h between the two paths on the same parameters. Not a test.
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
  outs = {}
  for impl in args.impls.split(","):
    for tile in (int(t) for t in args.tiles.split(",")):
      layer = CoAttention(hidden, impl=impl, tile=tile)

      def loss(p, hh, ss, layer=layer):
        r, beta = layer.apply(p, hh, i, ss, h_mask, s_mask)
        return r.sum() + (beta ** 2).sum(), r
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
      t0 = time.perf_counter()
      (_, r), _ = jax.block_until_ready(step(params, h, s))
      compile_s = time.perf_counter() - t0
      temp = step.lower(params, h, s).compile().memory_analysis().temp_size_in_bytes
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, h, s))
        times.append(time.perf_counter() - t0)
      outs[impl, tile] = np.asarray(r)
      print(f"{impl:9s} tile {tile:4d}: forward+backward median {np.median(times) * 1e3:8.1f} ms "
            f"(min {min(times) * 1e3:.1f}, first call incl. compile {compile_s:.1f} s), "
            f"XLA temporaries {temp / 2**20:,.0f} MiB")
  ref = next(iter(outs.values()))
  print(f"max |R_h - R_h of the first row| over the rows above = "
        f"{max(np.abs(r - ref).max() for r in outs.values()):.2e}")


if __name__ == "__main__":
  main()
