"""The tuning command: the sweep of `experiments.tuning`, then its table.

    python -m experiments.tune --dataset=synthetic --size=study --population=6 \
        --out=runs/tuning/synthetic-default@study
    python -m experiments.tune --dataset=log --data_path=BUILT_DIR --size=default --out=DIR
    python -m experiments.tune --select_only --out=DIR      # re-select from finished runs
    python -m experiments.tune ... --record_dir=results/tuning/NAME   # + a record to commit

Every flag but `--select_only` and `--record_dir` (a copy of the sweep's small files to commit,
`tuning.record_sweep`, from which `--select_only --out=<record>` selects the same table) is
`experiments.run_grid`'s (the grid is `tuning`, resumable like
any grid); the table is written to `experiments/tuned/<dataset>@<size>.json` with this command
line, and one line per row is printed (its setting, its validation score, and whether its best
trial converged).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from experiments import run_grid, tuning
from mscan_jax.data import datasets


def main(argv: Sequence[str]) -> int:
  """`python -m experiments.tune [run_grid's flags] [--select_only]`: the sweep, then its table."""
  argv = list(argv)
  select_only = "--select_only" in argv
  record = next((a.split("=", 1)[1] for a in argv if a.startswith("--record_dir=")), "")
  argv = [a for a in argv if a != "--select_only" and not a.startswith("--record_dir=")]
  if any(a.startswith("--grid") for a in argv):
    print("error: --grid: the tuning command runs the grid `tuning` itself", file=sys.stderr)
    return 2
  out = next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), "")
  if not out:
    print("error: --out=DIR is required (the sweep's folder)", file=sys.stderr)
    return 2
  command = "python -m experiments.tune " + " ".join(argv)
  if not select_only:
    # Selection reads results.json only: the trials write no predictions unless asked to.
    quiet = [] if any(a.startswith("--set=train.export_predictions") for a in argv) else [
        "--set=train.export_predictions=False"]
    code = run_grid.main(["--grid=tuning", "--tuned=false", *quiet, *argv])
    if code == 2 or "--dry_run" in argv:
      return code
  if record:
    print(f"recorded: {tuning.record_sweep(out, record)} finished trials -> {record}")
  try:
    table = tuning.build_table(out, command)
  except tuning.TuningError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  path = tuning.table_path(_dataset_key(out), table["size"])
  try:
    old = tuning.load_table(_dataset_key(out), table["size"])
    if select_only and old:          # re-selected: the command that made the trials stays
      for key, row in table["rows"].items():
        row["command"] = old.get("rows", {}).get(key, {}).get("command") or old.get(
            "command", row["command"])
    table = tuning.merge_tables(old, table)
  except tuning.TuningError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  tuning.write_table(table, path)
  for key, row in table["rows"].items():
    if row["incomplete"]:
      print(f"{key:<40} incomplete: {row['stop_reasons']}")
      continue
    flag = "" if row["converged"] else "  (its best trial did not converge)"
    print(f"{key:<40} {row['settings']}  valid {row['valid']:.4f}{flag}")
  print(f"written: {os.path.relpath(path)} ({len(table['rows'])} rows)")
  return 0


def _dataset_key(out: str) -> str:
  """The tuning label of a sweep folder's dataset (`datasets.tuning_label` of its shared data)."""
  with open(os.path.join(out, "grid.json")) as f:
    shared = json.load(f)["shared"]
  return datasets.tuning_label(run_grid.data_config(shared))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
