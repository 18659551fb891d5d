"""The learning curve that chose the synthetic default preset's size, from reference scorers only.

    python -m benchmarks.learning_curve [--events=40,80,165,300] [--seeds=1] [--out=/tmp/lc]

For each mean number of events per user (the default preset otherwise), it generates the
benchmark, trains the reference scorers (popularity, bias-only LR, MF) and scores the click
oracle through the training loop, and prints per size the mean per-scenario test AUC of each and
the smallest per-scenario gaps MF - popularity and oracle - popularity. The default preset is the
smallest size at which MF - popularity >= 0.05 in every scenario (the data lets a model learn
personalisation), within the budget of a few minutes of training on 2 CPU cores. No M-scan or
other model runs here. About 2 minutes per size and seed on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from mscan_jax import config as config_lib
from mscan_jax.data import synthetic
from mscan_jax.training import references

_EVENTS = flags.DEFINE_list("events", ["40", "80", "165", "300"], "Mean events per user.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Model seeds per size.", lower_bound=1)
_OUT = flags.DEFINE_string("out", "/tmp/mscan-learning-curve", "Working folder.")


def main(argv):
  del argv
  rows = []
  for events in (float(e) for e in _EVENTS.value):
    start = time.perf_counter()
    cfg = synthetic.get_preset("default", events_per_user=events)
    path = os.path.join(_OUT.value, f"data-events{events:g}")
    if not os.path.exists(os.path.join(path, "schema.json")):
      synthetic.build_synthetic(cfg, path, write_log_file=False)
    base = config_lib.get_config()
    base.data.name, base.data.path = "built", path
    table = references.run_references(base, os.path.join(_OUT.value, f"refs-events{events:g}"),
                                      model_seeds=range(_SEEDS.value), data_seeds=[0],
                                      echo=lambda _: None)
    c = table.checks()
    rows.append((events, {m: table.mean_auc(m).mean() for m in table.results},
                 min(c["mf_minus_popularity"].values()),
                 min(c["oracle_minus_popularity"].values()), c["min_test_per_scenario"],
                 time.perf_counter() - start))
    print(f"events/user {events:g}: done in {rows[-1][-1]:.0f} s", file=sys.stderr)
  names = list(rows[0][1])
  print("mean per-scenario test AUC of the reference scorers against events per user")
  print(f"{'events':>7} " + " ".join(f"{n:>12}" for n in names)
        + f" {'min MF-pop':>11} {'min orc-pop':>12} {'min n test':>11}")
  for events, means, mf_gap, orc_gap, n_min, _ in rows:
    print(f"{events:>7g} " + " ".join(f"{means[n]:>12.4f}" for n in names)
          + f" {mf_gap:>11.4f} {orc_gap:>12.4f} {n_min:>11}")


if __name__ == "__main__":
  app.run(main)
