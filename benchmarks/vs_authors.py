"""Side by side: our M-scan training and inference steps against the authors' PyTorch M-scan.

    # once: one interpreter with the project's requirements and torch (CPU wheel); torch is
    # never a requirement of the project, so it goes into a venv of its own
    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install -r requirements.txt torch==2.13.0
    # the authors' code (github.com/Gebro13/M-scan, MIT licence), anywhere outside this repository
    git clone https://github.com/Gebro13/M-scan /tmp/authors-mscan
    /work/torchvenv/bin/python benchmarks/vs_authors.py --authors_path=/tmp/authors-mscan
    /work/torchvenv/bin/python benchmarks/vs_authors.py --authors_path=/tmp/authors-mscan \
        --threads=2 --rounds=5 --out=benchmarks/results/vs_authors_cpu_2core.txt

Nothing of the authors' code is copied here: the script imports their `M_SCAN` class from
`<authors_path>/code/models.py` and reads their configs (`configs/model_configs/m_scan.yaml`,
key `aliccp`: embedding 32, MLP [512, 256], dropout 0.2, history on; `configs/train_configs/
aliccp.yaml`: Adam lr 1e-3 with weight_decay 1e-4, gradient clipping at global norm 5, batch
1024, loss BCE on their sigmoid output; `configs/data_configs/aliccp.yaml`: 9 user, 4 item and
1 scenario field, Ls 20, Lh 40).

Same work on both sides:
  shape      `benchmarks.throughput`'s Ali-CCP shape (14 fields: 9 user, 4 item, 1 scenario;
             Ls 20, Lh 40) and the same batch (--batch, 1024): one `dummy_batch` (seed 1) for
             ours, and the same ids for theirs, converted by `authors_batch` (the shim: their
             single embedding table gets each field's ids shifted by the field's offset; their
             sequences carry a trailing click column; lengths are the same).
  tables     their one embedding table has as many rows as our per-field tables together
             (--authors_vocab=ours, the default), so both Adam updates touch the same number
             of rows; --authors_vocab=theirs uses their data config's 5,732,623 rows instead.
  optimizer  Adam lr 1e-3, L2 weight decay 1e-4 added to the gradient, clip at global norm 5:
             ours is `steps.make_optimizer` (the same chain), theirs torch.optim.Adam(
             weight_decay=1e-4) + clip_grad_norm_(max_norm=5), as their trainer builds them.
  train step ours: `steps.train_step` jitted with the state donated (`throughput.Setup`);
             theirs: the body of their trainer's `_train_epoch` for loss_type 'll' (zero_grad,
             lengths from the id columns, forward, BCELoss, .item(), backward, clip, step).
  inference  ours: `steps.eval_step`; theirs: `model.eval()` forward under torch.no_grad(), as
             their `evaluate`.
  threads    --threads=N (default: the CPUs this process may use). Before JAX or torch start,
             the process is pinned to N CPUs (os.sched_setaffinity): XLA:CPU sizes its thread
             pool from the CPUs it may run on, so JAX uses N threads; torch.set_num_threads(N)
             and OMP_NUM_THREADS=N for torch (torch.set_num_interop_threads(1): their step has
             no inter-op parallelism to use).

Timing alternates: each round times ours (train, then inference), theirs (train, then
inference) and the matrix-multiply reference, the order of the two sides swapped every round,
each after its warm-up; every figure is the median over rounds. Printed: train and inference
examples/s of each side, the ratios ours / theirs, and our factored training step's achieved
FLOP/s (`throughput.mscan_train_flops`: the FLOPs of the path that runs, with the arg-max
backward of the co-attention) as a
fraction of the (N, N) @ (N, N) float32 matmul rate measured in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _threads_from_argv(argv) -> int:
  for i, a in enumerate(argv):
    if a.startswith("--threads="):
      return int(a.split("=", 1)[1])
    if a == "--threads" and i + 1 < len(argv):
      return int(argv[i + 1])
  return 0


# Pin the process to N CPUs before JAX and torch create their thread pools (module docstring).
_ALLOWED = sorted(os.sched_getaffinity(0))
THREADS = _threads_from_argv(sys.argv[1:]) or len(_ALLOWED)
if THREADS > len(_ALLOWED):
  raise SystemExit(f"--threads={THREADS}: this process may only use {len(_ALLOWED)} CPUs")
os.sched_setaffinity(0, _ALLOWED[:THREADS])
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ["MKL_NUM_THREADS"] = str(THREADS)

if __package__ in (None, ""):   # run as a file: the repo root on the path (as throughput.py)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import importlib  # noqa: E402
import platform  # noqa: E402

from mscan_jax.training import distributed  # noqa: E402

# As launch.py does before JAX starts (unless --no_retain_host_memory): glibc keeps freed memory,
# so XLA:CPU's per-step temporaries are not page-faulted in afresh at every step. It is
# process-wide, so torch's side runs with the same allocator settings.
RETAIN = "--no_retain_host_memory" not in sys.argv[1:] and distributed.retain_host_memory()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import throughput  # noqa: E402
from mscan_jax.data import datasets  # noqa: E402
from mscan_jax.data.schema import Schema, dummy_batch  # noqa: E402

try:
  import torch  # noqa: E402
except ImportError:
  raise SystemExit("torch is not installed in this interpreter; see this script's docstring "
                   "(a venv with requirements.txt and torch==2.13.0)") from None
import yaml  # noqa: E402  (a dependency of flax)

IMPL = "factored"


# ----------------------------------------------------------------------------- the authors' side

def _read_yaml(path: str) -> dict:
  if not os.path.exists(path):
    raise SystemExit(f"--authors_path: {path} is missing (expected a clone of Gebro13/M-scan)")
  with open(path) as f:
    return yaml.safe_load(f)


def load_authors(authors_path: str):
  """Their `M_SCAN` class and their Ali-CCP model, data and training configs."""
  code = os.path.join(authors_path, "code")
  if not os.path.exists(os.path.join(code, "models.py")):
    raise SystemExit(f"--authors_path={authors_path}: no code/models.py (a clone of Gebro13/M-scan?)")
  # Their modules import each other as top-level names (`from layers import ...`): their code
  # folder goes on the path only while `models` is imported, under a name of our choosing.
  sys.path.insert(0, code)
  saved = {k: sys.modules.pop(k) for k in ("models", "layers") if k in sys.modules}
  try:
    module = importlib.import_module("models")
  finally:
    sys.path.remove(code)
    sys.modules["authors_models"] = sys.modules.pop("models")
    sys.modules["authors_layers"] = sys.modules.pop("layers", None)
    sys.modules.update(saved)
  cfg = os.path.join(authors_path, "configs")
  model_config = _read_yaml(os.path.join(cfg, "model_configs", "m_scan.yaml"))["aliccp"]
  data_config = _read_yaml(os.path.join(cfg, "data_configs", "aliccp.yaml"))
  train_config = _read_yaml(os.path.join(cfg, "train_configs", "aliccp.yaml"))
  return module.M_SCAN, model_config, data_config, train_config


def field_offsets(schema: Schema) -> dict[str, np.ndarray]:
  """Offsets of each field's ids in one table of every field's rows (user, item, scenario)."""
  sizes = [f.vocab_size for f in schema.user_fields + schema.item_fields + schema.scenario_fields]
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  nu, ni = len(schema.user_fields), len(schema.item_fields)
  return {"user": starts[:nu], "item": starts[nu:nu + ni], "scenario": starts[nu + ni:],
          "total": int(np.sum(sizes))}


def authors_batch(batch: dict, schema: Schema, seed: int = 0) -> dict:
  """Our batch in the authors' input format (their dataloader's tuple `x, y, theme_hist, hist`).

  x (B, 14): user, item, scenario ids in one id space (field offset added; 0 stays padding);
  theme_hist (B, Ls, Fi + 1) = S_u's item ids and a click column; hist (B, Lh, Fi + 1) = H_u's
  item ids and click flags. Their trainer derives the lengths from column 0 != 0, which are
  our cur_len and all_len.
  """
  off = field_offsets(schema)
  rng = np.random.default_rng(seed)

  def shifted(ids, o):                       # keep padding (0) at 0
    ids = ids.astype(np.int64)
    return np.where(ids > 0, ids + o, 0)

  x = np.concatenate([shifted(batch["user"], off["user"]), shifted(batch["item"], off["item"]),
                      shifted(batch["scenario"], off["scenario"])], axis=1)
  cur = shifted(batch["cur_seq"], off["item"])                               # (B, Ls, Fi)
  cur_click = rng.integers(0, 2, size=cur.shape[:2]) * (cur[..., 0] > 0)     # (B, Ls)
  hist = shifted(batch["all_seq"], off["item"])                              # (B, Lh, Fi)
  theme_hist = np.concatenate([cur, cur_click[..., None]], axis=-1)
  user_hist = np.concatenate([hist, batch["all_click"][..., None].astype(np.int64)], axis=-1)
  assert ((theme_hist[:, :, 0] != 0).sum(1) == batch["cur_len"]).all()
  assert ((user_hist[:, :, 0] != 0).sum(1) == batch["all_len"]).all()
  return {"x": torch.from_numpy(x), "y": torch.from_numpy(batch["label"].astype(np.int64)),
          "theme_hist": torch.from_numpy(theme_hist), "hist": torch.from_numpy(user_hist)}


class Authors:
  """Their model, optimizer, training step and inference step on one batch."""

  def __init__(self, authors_path: str, schema: Schema, batch: dict, vocab: str):
    m_scan, model_config, data_config, train_config = load_authors(authors_path)
    nu, ni, ns = len(schema.user_fields), len(schema.item_fields), len(schema.scenario_fields)
    want = (data_config["user_num_fields"], data_config["item_num_fields"],
            data_config["domain_num_fields"], data_config["max_theme_hist_len"],
            data_config["max_hist_len"])
    if want != (nu, ni, ns, schema.max_cur_len, schema.max_all_len):
      raise SystemExit(f"their Ali-CCP data config {want} does not match our shape "
                       f"{(nu, ni, ns, schema.max_cur_len, schema.max_all_len)}")
    data_config = dict(data_config)
    if vocab == "ours":
      data_config["vocabulary_size"] = field_offsets(schema)["total"]
    self.vocabulary_size = data_config["vocabulary_size"]
    self.model_config, self.train_config = model_config, train_config
    torch.manual_seed(int(train_config["seed"]))
    self.model = m_scan(model_config, data_config)
    self.num_params = sum(p.numel() for p in self.model.parameters())
    if str(train_config["learner"]).lower() != "adam":
      raise SystemExit(f"their config's learner is {train_config['learner']!r}, not adam")
    self.optimizer = torch.optim.Adam(self.model.parameters(),
                                      lr=float(train_config["learning_rate"]),
                                      weight_decay=float(train_config["weight_decay"]))
    self.clip = dict(train_config["clip_grad_norm"])
    self.loss_fn = torch.nn.BCELoss()
    b = authors_batch(batch, schema)
    self.x, self.y, self.theme_hist, self.hist = b["x"], b["y"], b["theme_hist"], b["hist"]
    self.user_pos = list(train_config["user_f_pos"])
    self.item_pos = list(train_config["item_f_pos"])
    self.domain_pos = list(train_config["domain_f_pos"])

  def _inputs(self):
    x, theme_hist, hist = self.x, self.theme_hist, self.hist
    theme_hist_len = torch.sum(theme_hist[:, :, 0] != 0, axis=1)
    hist_len = torch.sum(hist[:, :, 0] != 0, axis=1)
    return (x[:, self.user_pos], x[:, self.item_pos], x[:, self.domain_pos], theme_hist,
            theme_hist_len, hist, hist_len)

  def train_steps(self, n: int) -> float:
    self.model.train()
    loss = None
    for _ in range(n):
      self.optimizer.zero_grad()
      pred, _ = self.model(*self._inputs())
      loss = self.loss_fn(pred, self.y.float())
      loss_value = loss.item()
      if not np.isfinite(loss_value):
        raise FloatingPointError(f"their training loss is {loss_value}")
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.clip)
      self.optimizer.step()
    return loss_value

  @torch.no_grad()
  def infer_steps(self, n: int):
    self.model.eval()
    for _ in range(n):
      pred, _ = self.model(*self._inputs())
      pred.cpu().numpy()
    return pred


# ----------------------------------------------------------------------------- our side

class Ours:
  """Our jitted training and inference steps (`throughput.Setup`) on one batch."""

  def __init__(self, schema: Schema, batch_size: int):
    config = throughput.make_config(IMPL, "float32", batch_size)
    self.setup = throughput.Setup.build(schema, config, batch_size)
    s = self.setup
    self.train = s.train_fn(config).lower(s.state, s.batch).compile()
    self.state = s.state
    self.state, m = self.train(self.state, s.batch)            # warm-up
    jax.block_until_ready(m)
    self.c = jnp.asarray(datasets.resolve_c(config), jnp.float32)
    self.eval = s.eval_fn().lower(self.state.params, s.batch, self.c).compile()
    jax.block_until_ready(self.eval(self.state.params, s.batch, self.c))
    params = jax.device_get(self.state.params)
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    # The FLOPs of the path that runs (the default backward, tiled as configured).
    self.forward_flops = throughput.mscan_forward_flops(params, schema, IMPL)
    self.train_flops = throughput.mscan_train_flops(
        params, schema, IMPL, config.mscan.coattention_backward,
        tiled=0 < config.mscan.coattention_tile < batch_size)

  def train_steps(self, n: int):
    for _ in range(n):
      self.state, metrics = self.train(self.state, self.setup.batch)
    jax.block_until_ready(metrics)

  def infer_steps(self, n: int):
    for _ in range(n):
      out = self.eval(self.state.params, self.setup.batch, self.c)
    jax.block_until_ready(out)


# ----------------------------------------------------------------------------- timing

def _seconds(fn, n: int) -> float:
  t0 = time.perf_counter()
  fn(n)
  return time.perf_counter() - t0


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--authors_path", required=True, help="a clone of github.com/Gebro13/M-scan")
  ap.add_argument("--threads", type=int, default=0,
                  help="CPU threads of both sides (0: every CPU this process may use)")
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--vocab", choices=("full", "small"), default="full",
                  help="our table sizes (throughput.py's --vocab)")
  ap.add_argument("--authors_vocab", choices=("ours", "theirs"), default="ours",
                  help="rows of their one table: ours = our tables' rows together; theirs = "
                       "their data config's vocabulary_size")
  ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians reported")
  ap.add_argument("--steps", type=int, default=4, help="our steps per timing")
  ap.add_argument("--authors_steps", type=int, default=1, help="their steps per timing")
  ap.add_argument("--matmul_n", type=int, default=2048)
  ap.add_argument("--out", default="", help="also write the report here")
  ap.add_argument("--no_retain_host_memory", action="store_true",
                  help="leave glibc's malloc as it is (launch.py retains host memory)")
  args = ap.parse_args(argv)

  lines: list[str] = []

  def say(s: str = "") -> None:
    print(s, flush=True)
    lines.append(s)

  torch.set_num_threads(THREADS)
  torch.set_num_interop_threads(1)
  schema = throughput.make_schema("aliccp", args.vocab)
  batch = dummy_batch(schema, args.batch, seed=1)          # the batch of throughput.Setup
  say(f"vs_authors: M-scan, ours (JAX {jax.__version__}, {IMPL} co-attention) vs the authors' "
      f"PyTorch M_SCAN (torch {torch.__version__}); Ali-CCP shape "
      f"({len(schema.user_fields)} user, {len(schema.item_fields)} item, "
      f"{len(schema.scenario_fields)} scenario fields; Ls {schema.max_cur_len}, Lh "
      f"{schema.max_all_len}), batch {args.batch}, float32")
  say(f"host: {platform.machine()}, {os.cpu_count()} CPUs; pinned to {THREADS} "
      f"(sched_setaffinity); torch threads {torch.get_num_threads()} intra-op / "
      f"{torch.get_num_interop_threads()} inter-op; JAX backend {jax.default_backend()}; "
      f"host memory retained (as launch.py): {RETAIN}")

  t0 = time.perf_counter()
  ours = Ours(schema, args.batch)
  say(f"ours:   {ours.num_params:,} parameters; setup + compile + warm-up "
      f"{time.perf_counter() - t0:.0f} s")
  t0 = time.perf_counter()
  theirs = Authors(args.authors_path, schema, batch, args.authors_vocab)
  theirs.train_steps(1)                                      # warm-up
  theirs.infer_steps(1)
  say(f"theirs: {theirs.num_params:,} parameters (one table of {theirs.vocabulary_size:,} rows, "
      f"--authors_vocab={args.authors_vocab}); setup + warm-up {time.perf_counter() - t0:.0f} s")
  say(f"both: Adam lr 1e-3, L2 weight decay 1e-4 in the gradient, clip at global norm 5; "
      f"timed steps per round: ours {args.steps}, theirs {args.authors_steps}")

  rec = {k: [] for k in ("ours_train", "ours_infer", "theirs_train", "theirs_infer", "matmul")}
  for r in range(args.rounds):
    sides = [("ours", ours, args.steps), ("theirs", theirs, args.authors_steps)]
    if r % 2:
      sides.reverse()
    for name, side, n in sides:
      rec[f"{name}_train"].append(args.batch * n / _seconds(side.train_steps, n))
      rec[f"{name}_infer"].append(args.batch * n / _seconds(side.infer_steps, n))
    rec["matmul"].append(throughput.matmul_flops_per_s(jnp.float32, args.matmul_n, 3))
    say(f"  round {r + 1}: train ex/s ours {rec['ours_train'][-1]:,.0f} theirs "
        f"{rec['theirs_train'][-1]:,.1f}; infer ex/s ours {rec['ours_infer'][-1]:,.0f} theirs "
        f"{rec['theirs_infer'][-1]:,.1f}; matmul {rec['matmul'][-1] / 1e9:,.1f} GFLOP/s")

  med = {k: float(np.median(v)) for k, v in rec.items()}
  per_ex = sum(ours.train_flops.values())
  train_flops = per_ex * med["ours_train"]
  result = {**med, "train_ratio": med["ours_train"] / med["theirs_train"],
            "infer_ratio": med["ours_infer"] / med["theirs_infer"],
            "matmul_fraction": train_flops / med["matmul"], "rounds": rec,
            "train_flops_per_example": ours.train_flops}
  say()
  say(f"medians over {args.rounds} rounds      ours      theirs   ours/theirs")
  say(f"  train examples/s        {med['ours_train']:9,.0f} {med['theirs_train']:9,.1f} "
      f"{result['train_ratio']:9.1f}x")
  say(f"  inference examples/s    {med['ours_infer']:9,.0f} {med['theirs_infer']:9,.1f} "
      f"{result['infer_ratio']:9.1f}x")
  say(f"ours, matmul fraction: {per_ex / 1e6:.1f} MFLOP per training example as the path runs "
      f"({', '.join(f'{k} {v / 1e6:.2f}' for k, v in ours.train_flops.items())}) x "
      f"{med['ours_train']:,.0f} ex/s = {train_flops / 1e9:.1f} GFLOP/s; float32 "
      f"{args.matmul_n}x{args.matmul_n} matmul {med['matmul'] / 1e9:.1f} GFLOP/s; "
      f"fraction {result['matmul_fraction']:.3f}")
  # What no implementation of this path can beat here: its FLOPs at the full matmul rate.
  fwd = sum(ours.forward_flops.values())
  ceiling = {"train_examples_per_s": med["matmul"] / per_ex,
             "infer_examples_per_s": med["matmul"] / fwd}
  ceiling.update(train_ratio=ceiling["train_examples_per_s"] / med["theirs_train"],
                 infer_ratio=ceiling["infer_examples_per_s"] / med["theirs_infer"])
  result["ceiling"] = ceiling
  say(f"ceiling, our path at 100% of the matmul rate ({per_ex / 1e6:.1f} MFLOP per training "
      f"example, {fwd / 1e6:.1f} per forward pass): train "
      f"{ceiling['train_examples_per_s']:,.0f} ex/s = {ceiling['train_ratio']:.1f}x theirs, "
      f"infer {ceiling['infer_examples_per_s']:,.0f} ex/s = {ceiling['infer_ratio']:.1f}x theirs")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
