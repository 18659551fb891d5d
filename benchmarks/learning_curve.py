"""The learning curve that chose the synthetic default preset's size, from reference scorers only.

    python -m benchmarks.learning_curve [--sizes=1200x165,800x250,600x330,400x500] [--seeds=1]

For each size USERSxEVENTS (number of users x mean events per user; the default preset
otherwise), it generates the benchmark, trains the reference scorers (popularity, bias-only
LR, MF) and scores the click oracle through the training loop, and prints per size the mean per-scenario test AUC of each and
the smallest per-scenario gaps MF - popularity and oracle - popularity. The default preset is the
first size at which MF - popularity >= 0.05 in every scenario (the data lets a model learn
personalisation). The sizes keep the number of events about constant (~200k, so `python
launch.py` stays within minutes on 2 CPU cores) and move data from users to events per user,
i.e. more behaviours per user's latent factors. No M-scan or other model runs here. About 3
minutes per size and seed on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from mscan_jax import config as config_lib
from mscan_jax.data import synthetic
from mscan_jax.training import references

_SIZES = flags.DEFINE_list("sizes", ["1200x165", "800x250", "600x330", "400x500"],
                           "USERSxEVENTS: number of users x mean events per user.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Model seeds per size.", lower_bound=1)
_OUT = flags.DEFINE_string("out", "/tmp/mscan-learning-curve", "Working folder.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)   # Orbax logs every file it writes at INFO
  rows = []
  for size in _SIZES.value:
    users, events = (float(x) for x in size.split("x"))
    users = int(users)
    start = time.perf_counter()
    cfg = synthetic.get_preset("default", num_users=users, events_per_user=events)
    path = os.path.join(_OUT.value, f"data-{users}x{events:g}")
    if not os.path.exists(os.path.join(path, "schema.json")):
      synthetic.build_synthetic(cfg, path, write_log_file=False)
    base = config_lib.get_config()
    base.data.name, base.data.path = "built", path
    table = references.run_references(base, os.path.join(_OUT.value, f"refs-{users}x{events:g}"),
                                      model_seeds=range(_SEEDS.value), data_seeds=[0],
                                      echo=lambda _: None)
    c = table.checks()
    rows.append((f"{users}x{events:g}", {m: table.mean_auc(m).mean() for m in table.results},
                 min(c["mf_minus_popularity"].values()),
                 min(c["oracle_minus_popularity"].values()), c["min_test_per_scenario"],
                 time.perf_counter() - start))
    print(f"{size}: done in {rows[-1][-1]:.0f} s", file=sys.stderr)
  names = list(rows[0][1])
  print("mean per-scenario test AUC of the reference scorers against users x events per user")
  print(f"{'size':>9} " + " ".join(f"{n:>12}" for n in names)
        + f" {'min MF-pop':>11} {'min orc-pop':>12} {'min n test':>11}")
  for size, means, mf_gap, orc_gap, n_min, _ in rows:
    print(f"{size:>9} " + " ".join(f"{means[n]:>12.4f}" for n in names)
          + f" {mf_gap:>11.4f} {orc_gap:>12.4f} {n_min:>11}")


if __name__ == "__main__":
  app.run(main)
