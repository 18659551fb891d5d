"""Projected wall time of the paper's Table 1 + Table 2 at full Ali-CCP scale on this machine.

    .venv/bin/python -m benchmarks.project_aliccp                       # measure every network
    .venv/bin/python -m benchmarks.project_aliccp --steps=2 --repeats=1 \
        --out=benchmarks/results/project_aliccp_cpu_2core.txt
    .venv/bin/python -m benchmarks.project_aliccp --pipeline_ex_per_s=60000 --population_speedup=2.5
    .venv/bin/python -m benchmarks.project_aliccp --step_json=rates.json   # figures from elsewhere

Issue #15. A projection from measured figures, not a run. The run list is read, never retyped:
`experiments.grids.build("table1")` and `build("table2")` for --seeds model seeds and the
target --scenarios, de-duplicated by run name (Table 2's full M-scan is Table 1's M-scan run);
the reference scorers are left out unless --with_references (they are this project's rows, not
the paper's). Each run's training stages are `mscan_jax.models.stages` of its config as the grid
runner plans it (`experiments.run_grid.plan`): Finetune starts from its sibling Mix run, so only
its target-scenario stage is counted. With 3 scenarios that is 17 runs per seed: 8
multi-scenario models, Single and Finetune once per scenario, and Table 2's three ablations.

Per run, with N interactions (--interactions, Ali-CCP's 85,316,975; --kept_fraction of them
survive the builder's filters) split as the config says (test: the most recent
`data.test_fraction`; validation: `data.valid_fraction` of the rest; training: the remainder):
  training examples   E x N_train x (share of the run's training scenarios)
  evaluated examples  (E x --evals_per_epoch x N_valid + N_test) x (share of its eval scenarios)
with E = --epochs, or each stage config's `train.num_epochs` (the paper's models 5, the
reference scorers `reference.num_epochs`). Every run is assumed to train all E epochs: early
stopping (`train.patience` evaluations without gain) can only make it shorter, so this is an
upper bound. Scenario shares (--scenario_shares, default equal) only split Single's and
Finetune's examples between their runs: the three runs of one seed together see every example.

Rates, examples/s:
  step       each network's jitted training step (`steps.train_step` + `steps.make_optimizer`,
             state donated) and inference step (`steps.eval_step`), as in
             `benchmarks/throughput.py` (its `Setup`), at the Ali-CCP shape of
             `throughput.make_schema("aliccp")`, batch --batch; median of --repeats timings of
             --steps steps. Single and Finetune are Mix's network; Table 2's ablations are
             measured as themselves. --step_json reads figures instead (this script's
             --json_out, a `benchmarks/models.py --json` list, or a `benchmarks/throughput.py
             --json_out` file for M-scan); networks it lacks are measured.
  pipeline   --pipeline_ex_per_s, or the "pipeline (new)" row of --pipeline_results when that
             file exists (`benchmarks/pipeline.py --out`); none: the input is not a bound.
  used       training: min(step x --population_speedup, pipeline); evaluation: min(inference
             step, pipeline). The population speed-up (several runs trained as one population
             step) applies to the model step only; the pipeline is taken per run (a population
             reading one input stream would share it: conservative).
Hours = training examples / training rate + evaluated examples / evaluation rate; compile time,
checkpoints and process start are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

if __package__ in (None, ""):   # run as a file: the repo root on the path (as throughput.py)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import grids, run_grid  # noqa: E402
from mscan_jax import config as config_lib  # noqa: E402
from mscan_jax import models  # noqa: E402

ALICCP_INTERACTIONS = 85_316_975     # Ali-CCP's training + test sets (Tianchi dataset 408)
ALICCP_SCENARIOS = (1, 2, 3)
PIPELINE_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                "pipeline_cpu_2core.txt")


# ----------------------------------------------------------------------------- the run list

@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage of one run, as the grid runner would train it."""
  run: str                          # the run's name
  model: str                        # the registry name (the table's column)
  network: str                      # what is timed: the network with its cost-changing switches
  epochs: int                       # the stage config's train.num_epochs
  train_scenarios: tuple[int, ...]  # () = every scenario
  eval_scenarios: tuple[int, ...]


def network_of(config) -> str:
  """The network a config trains, named by what changes its cost: models sharing a factory
  share a network (Single, Finetune -> mix); M-scan's Table 2 switches are part of the name."""
  spec = models.get_spec(config.model)
  name = next(n for n, s in models.specs().items()
              if s.factory is spec.factory and not s.target_scenario)
  if name == grids.proposed():
    switches = [f"{grids.ALIASES[k]}={grids.format_value(v)}"
                for k, v in (("mscan.use_saca", config.mscan.use_saca),
                             ("mscan.use_sbe", config.mscan.use_sbe))
                if not grids.same_value(grids.default_value(k), v)]
    name = "-".join([name, *switches])
  return name


def plan_stages(seeds: Sequence[int], scenarios: Sequence[int],
                with_references: bool = False) -> list[Stage]:
  """Every training stage of Table 1 + Table 2 (runs de-duplicated by name)."""
  runs: dict[str, grids.Run] = {}
  for table in ("table1", "table2"):
    for r in grids.build(table, seeds=seeds, scenarios=scenarios):
      runs.setdefault(r.name, r)
  keep = [r for r in runs.values()
          if with_references or models.get_spec(r.overrides["model"]).kind == "model"]
  out = []
  for job in run_grid.plan(keep, "runs", {}):
    for _, stage in models.stages(run_grid._config_of(job.overrides)):
      out.append(Stage(job.run.name, job.run.overrides["model"], network_of(stage),
                       int(stage.train.num_epochs), tuple(stage.data.train_scenarios),
                       tuple(stage.data.eval_scenarios)))
  return out


# ----------------------------------------------------------------------------- the arithmetic

@dataclasses.dataclass(frozen=True)
class Protocol:
  interactions: int
  test_fraction: float              # config.data.test_fraction
  valid_fraction: float             # config.data.valid_fraction (of what the test leaves)
  kept_fraction: float = 1.0        # share of the interactions the builder keeps
  epochs: int = 0                   # 0 = each stage's own
  evals_per_epoch: int = 1
  scenario_shares: Optional[dict[int, float]] = None   # None = every scenario alike

  def splits(self) -> tuple[float, float, float]:
    """Examples in the (train, valid, test) splits."""
    n = self.interactions * self.kept_fraction
    test = n * self.test_fraction
    valid = (n - test) * self.valid_fraction
    return n - test - valid, valid, test

  def share(self, scenarios: Sequence[int]) -> float:
    if not scenarios:
      return 1.0
    shares = self.scenario_shares or {}
    if not shares:
      raise ValueError("a stage restricted to scenarios needs scenario_shares")
    return sum(shares[s] for s in scenarios)


@dataclasses.dataclass(frozen=True)
class Rates:
  train: float                      # examples/s of the training step
  infer: float                      # examples/s of the inference step


def stage_cost(stage: Stage, protocol: Protocol, rates: Rates, *, pipeline: float = 0.0,
               population_speedup: float = 1.0) -> dict[str, float]:
  """Examples and seconds of one stage (module docstring)."""
  n_train, n_valid, n_test = protocol.splits()
  epochs = protocol.epochs or stage.epochs
  train_examples = epochs * n_train * protocol.share(stage.train_scenarios)
  eval_examples = ((epochs * protocol.evals_per_epoch * n_valid + n_test)
                   * protocol.share(stage.eval_scenarios))
  bound = pipeline if pipeline > 0 else float("inf")
  train_rate = min(rates.train * population_speedup, bound)
  eval_rate = min(rates.infer, bound)
  return {"train_examples": train_examples, "eval_examples": eval_examples,
          "train_rate": train_rate, "eval_rate": eval_rate,
          "seconds": train_examples / train_rate + eval_examples / eval_rate}


def project(stages: Sequence[Stage], protocol: Protocol, rates: dict[str, Rates], *,
            pipeline: float = 0.0, population_speedup: float = 1.0) -> dict[str, dict]:
  """Per model (display order of the stages): runs, examples, rates used and seconds."""
  out: dict[str, dict] = {}
  for st in stages:
    c = stage_cost(st, protocol, rates[st.network], pipeline=pipeline,
                   population_speedup=population_speedup)
    row = out.setdefault(st.model, {"runs": set(), "networks": set(), "train_examples": 0.0,
                                    "eval_examples": 0.0, "train_rates": set(), "seconds": 0.0})
    row["runs"].add(st.run)
    row["networks"].add(st.network)
    row["train_rates"].add(c["train_rate"])
    for k in ("train_examples", "eval_examples", "seconds"):
      row[k] += c[k]
  for row in out.values():
    row["runs"] = len(row["runs"])
  return out


# ----------------------------------------------------------------------------- rates

def read_step_json(path: str) -> dict[str, Rates]:
  """Step rates from this script's --json_out, `benchmarks/models.py --json` (shape aliccp) or
  `benchmarks/throughput.py --json_out` (M-scan, factored, float32, shape aliccp)."""
  with open(path) as f:
    data = json.load(f)
  if isinstance(data, dict) and "rates" in data:                      # this script
    return {k: Rates(v["train"], v["infer"]) for k, v in data["rates"].items()}
  if isinstance(data, list):                                          # benchmarks/models.py
    return {r["model"]: Rates(r["train_ex_per_s"], r["infer_ex_per_s"]) for r in data
            if r.get("shape") == "aliccp" and "train_ex_per_s" in r}
  if isinstance(data, dict) and "records" in data:                    # benchmarks/throughput.py
    backward = config_lib.get_config().mscan.coattention_backward        # the path that runs
    return {grids.proposed(): Rates(r["train_examples_per_s"], r["infer_examples_per_s"])
            for r in data["records"] if r["shape"] == "aliccp" and r["impl"] == "factored"
            and r["dtype"] == "float32" and r.get("backward", backward) == backward}
  raise SystemExit(f"--step_json={path}: not a file of this script, models.py or throughput.py")


def read_pipeline(path: str) -> float:
  """The fastest "pipeline (new)" row's examples/s in the first table of a
  `benchmarks/pipeline.py --out` file (its worker counts), else 0."""
  if not path or not os.path.exists(path):
    return 0.0
  best = 0.0
  with open(path) as f:
    for line in f:
      if line.startswith("==="):                                     # earlier runs follow
        break
      if line.strip().startswith("pipeline (new)"):
        m = re.search(r"([\d,]+(?:\.\d+)?)\s+\(", line.split(")", 1)[1])   # "678,388  (min..max)"
        if m:
          best = max(best, float(m.group(1).replace(",", "")))
  return best


def measure(network: str, args) -> Rates:
  """Median examples/s of the network's jitted training and inference steps (throughput.Setup)."""
  import jax
  import jax.numpy as jnp
  from benchmarks import throughput
  from mscan_jax.data import datasets

  config = throughput.make_config("factored", "float32", args.batch)
  model, *switches = network.split("-")
  config.model = model
  keys = {v: k for k, v in grids.ALIASES.items()}
  for sw in switches:
    k, v = sw.split("=")
    run_grid._set(config, keys[k], v == "True")
  schema = throughput.make_schema("aliccp", args.vocab)
  s = throughput.Setup.build(schema, config, args.batch)
  step = s.train_fn(config).lower(s.state, s.batch).compile()
  state, m = step(s.state, s.batch)
  jax.block_until_ready(m)

  def run_train(n):
    nonlocal state
    for _ in range(n):
      state, metrics = step(state, s.batch)
    jax.block_until_ready(metrics)
  train_t = float(np.median(throughput._time_steps(run_train, args.steps, args.repeats)))
  c = jnp.asarray(datasets.resolve_c(config), jnp.float32)
  ev = s.eval_fn().lower(state.params, s.batch, c).compile()
  jax.block_until_ready(ev(state.params, s.batch, c))

  def run_eval(n):
    for _ in range(n):
      out = ev(state.params, s.batch, c)
    jax.block_until_ready(out)
  eval_t = float(np.median(throughput._time_steps(run_eval, args.steps, args.repeats)))
  return Rates(args.batch * args.steps / train_t, args.batch * args.steps / eval_t)


# ----------------------------------------------------------------------------- report

def _hours(s: float) -> str:
  return f"{s / 3600:,.1f}"


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--interactions", type=int, default=ALICCP_INTERACTIONS)
  ap.add_argument("--kept_fraction", type=float, default=1.0,
                  help="share of the interactions the dataset builder keeps (users in >= "
                       "data.min_scenarios_per_user scenarios); 1 = all")
  ap.add_argument("--seeds", type=int, default=3, help="model seeds 0..N-1")
  ap.add_argument("--scenarios", default=",".join(map(str, ALICCP_SCENARIOS)),
                  help="target scenarios of Single and Finetune")
  ap.add_argument("--scenario_shares", default="",
                  help="share of the examples per scenario, e.g. 0.4,0.05,0.55 (default equal)")
  ap.add_argument("--with_references", action="store_true", help="add the reference scorers")
  ap.add_argument("--epochs", type=int, default=0, help="0: each stage config's num_epochs")
  ap.add_argument("--evals_per_epoch", type=int, default=1,
                  help="validation passes per epoch (config train.eval_every_steps=0: 1)")
  ap.add_argument("--population_speedup", type=float, default=1.0)
  ap.add_argument("--pipeline_ex_per_s", type=float, default=0.0,
                  help="input pipeline examples/s (0: read --pipeline_results if it exists)")
  ap.add_argument("--pipeline_results", default=PIPELINE_RESULTS)
  ap.add_argument("--step_json", default="", help="step rates measured elsewhere")
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--vocab", choices=("full", "small"), default="full")
  ap.add_argument("--steps", type=int, default=3, help="timed steps per timing")
  ap.add_argument("--repeats", type=int, default=3, help="timings; the median is used")
  ap.add_argument("--json_out", default="", help="write the step rates and the projection here")
  ap.add_argument("--out", default="", help="also write the report here")
  args = ap.parse_args(argv)

  lines: list[str] = []

  def say(s: str = "") -> None:
    print(s, flush=True)
    lines.append(s)

  scenarios = [int(x) for x in args.scenarios.split(",") if x]
  if args.scenario_shares:
    values = [float(x) for x in args.scenario_shares.split(",")]
    if len(values) != len(scenarios) or abs(sum(values) - 1) > 1e-6:
      ap.error("--scenario_shares: one share per --scenarios entry, summing to 1")
    shares = dict(zip(scenarios, values))
  else:
    shares = {s: 1 / len(scenarios) for s in scenarios}
  defaults = config_lib.get_config()
  protocol = Protocol(args.interactions, float(defaults.data.test_fraction),
                      float(defaults.data.valid_fraction), args.kept_fraction, args.epochs,
                      args.evals_per_epoch, shares)
  stages = plan_stages(range(args.seeds), scenarios, args.with_references)

  rates: dict[str, Rates] = read_step_json(args.step_json) if args.step_json else {}
  sources = {k: f"read from {os.path.basename(args.step_json)}" for k in rates}
  networks = list(dict.fromkeys(st.network for st in stages))
  import jax
  device = f"{jax.default_backend()}: {jax.device_count()} x {jax.devices()[0].device_kind}"
  for net in networks:
    if net not in rates:
      t0 = time.perf_counter()
      rates[net] = measure(net, args)
      sources[net] = (f"measured: batch {args.batch}, median of {args.repeats} x {args.steps} "
                      f"steps ({time.perf_counter() - t0:.0f} s with compilation)")
    print(f"  {net}: train {rates[net].train:,.0f} ex/s, infer {rates[net].infer:,.0f} ex/s "
          f"({sources[net]})", flush=True)
  pipeline = args.pipeline_ex_per_s or read_pipeline(args.pipeline_results)
  pipeline_src = ("--pipeline_ex_per_s" if args.pipeline_ex_per_s else
                  os.path.basename(args.pipeline_results) if pipeline else "none: not a bound")
  result = project(stages, protocol, rates, pipeline=pipeline,
                   population_speedup=args.population_speedup)

  n_train, n_valid, n_test = protocol.splits()
  runs_per_seed = len({st.run for st in stages}) / args.seeds
  say(f"Projected wall time of Table 1 + Table 2 at full Ali-CCP scale on {device}")
  say("Assumptions:")
  say(f"  interactions {args.interactions:,} x kept {args.kept_fraction:g}: train {n_train:,.0f}, "
      f"valid {n_valid:,.0f}, test {n_test:,.0f} (config data.test_fraction "
      f"{protocol.test_fraction:g}, data.valid_fraction {protocol.valid_fraction:g} of the rest)")
  say(f"  runs: grids.build('table1') + build('table2'), {args.seeds} seeds, target scenarios "
      f"{scenarios}; {runs_per_seed:g} runs per seed"
      + ("" if args.with_references else ", reference scorers left out")
      + "; Finetune from its sibling Mix run (its target-scenario stage only)")
  epochs = (f"{args.epochs} (--epochs)" if args.epochs else
            "each config's train.num_epochs: " + ", ".join(
                f"{m} {e}" for m, e in dict.fromkeys((st.model, st.epochs) for st in stages)))
  say(f"  epochs: {epochs}; every run trains all of them (no early stop: an upper bound)")
  say(f"  evaluation: {args.evals_per_epoch} validation pass per epoch + 1 test pass, at the "
      f"inference step's rate (batch {args.batch})")
  say(f"  scenario shares (Single/Finetune runs only; totals do not depend on them): "
      + ", ".join(f"{s}: {v:.3f}" for s, v in shares.items()))
  say(f"  population speed-up x{args.population_speedup:g} on the training step; pipeline "
      f"{pipeline:,.0f} ex/s ({pipeline_src})" if pipeline else
      f"  population speed-up x{args.population_speedup:g} on the training step; pipeline: "
      f"{pipeline_src}")
  say("  not counted: compilation, checkpoints, process start, data preparation")
  say("Step rates (examples/s):")
  for net in networks:
    say(f"  {net:24s} train {rates[net].train:9,.0f}  infer {rates[net].infer:9,.0f}  "
        f"({sources[net]})")
  say()
  head = (f"{'model':16s} {'runs':>5s} {'train examples':>16s} {'eval examples':>15s} "
          f"{'train ex/s used':>16s} {'hours':>9s}")
  say(head)
  say("-" * len(head))
  total = 0.0
  for model, row in result.items():
    used = "/".join(f"{r:,.0f}" for r in sorted(row["train_rates"]))
    say(f"{models.title(model):16s} {row['runs']:5d} {row['train_examples']:16,.0f} "
        f"{row['eval_examples']:15,.0f} {used:>16s} {_hours(row['seconds']):>9s}")
    total += row["seconds"]
  say("-" * len(head))
  say(f"{'total':16s} {sum(r['runs'] for r in result.values()):5d} "
      f"{sum(r['train_examples'] for r in result.values()):16,.0f} "
      f"{sum(r['eval_examples'] for r in result.values()):15,.0f} {'':>16s} {_hours(total):>9s}"
      f"   = {total / 86400:,.1f} days, one run at a time")
  out = {"rates": {k: dataclasses.asdict(v) for k, v in rates.items()},
         "pipeline_ex_per_s": pipeline, "total_hours": total / 3600,
         "models": {m: {k: (sorted(v) if isinstance(v, set) else v) for k, v in r.items()}
                    for m, r in result.items()}}
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(out, f, indent=1)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
