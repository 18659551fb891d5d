"""Equal tuning (issue 22): the same search for every model, chosen on validation data only.

The rows, the tables and the selection; the command that runs a sweep is `experiments.tune`:

    python -m experiments.tune --dataset=synthetic --size=study --population=6 \
        --out=runs/tuning/synthetic-default@study
    python -m experiments.tune --dataset=log --data_path=BUILT_DIR --size=default --out=DIR
    python -m experiments.tune --select_only --out=DIR      # re-select from finished runs

The protocol is DomainBed's (Gulrajani and Lopez-Paz, 2020), as `experiments.grids` gives it:
every trained row of the study (`grids.study_rows`: the ladder, Table 1 with its
equal-information columns, Table 2, M-scan's mechanism variants, the reference scorers) gets the
same space (`grids.TUNING_SPACE`, the learning rate; the reference scorers their own step,
`grids.REFERENCE_TUNING_SPACE`), every value of it once (the same number of trials), trained to
early stopping at model seed 0 and data seed 0 of the dataset's default data, and the trial with
the best validation score (`results.json`'s `best_valid_auc`, by `config.train.select_metric`)
is the row's setting. Test data is never read. The trials of a row differ only in the
learning rate, so `--population=6` trains them as one program.

`experiments.tune` runs the sweep (the grid `tuning` through `experiments.run_grid`: resumable, the
same flags), then writes the table `experiments/tuned/<dataset>@<size>.json` (`table_path`):

    {"dataset": "synthetic-default", "size": "study", "space": {...}, "select_metric": ...,
     "selection": ..., "command": "<this command line>",
     "rows": {"mix": {"settings": {"train.learning_rate": 0.003}, "valid": 0.672,
                      "trials": {"0.001": 0.66, "0.003": 0.672, "0.01": 0.65},
                      "stop_reasons": {"0.001": "early_stopping", ...}, "converged": true}, ...}}

A row is keyed by `row_key`: its model and switches (`grids.run_name` of its overrides of
`grids.AXIS_KEYS`, without the seeds, the dial levels and the tuned keys themselves), e.g. `mix`,
`mscan-saca=False-sbe=False`, `star-sees=cur+all`, `single-scenario=2`. `settings_for` gives a
run its row's settings: `experiments.run_grid` applies them to every run of a grid (recorded in
`grid.json`; `--set` overrides them, `--tuned=false` turns them off) and `launch.py` to the keys
not given on its command line (`config.train.tuned`). A dataset or row without a table gets the
config's defaults, and says so.

A Finetune row's trials start from the Mix trial of the same learning rate (its first stage); in
a grid, a Finetune run starts from the tuned Mix run of its seed, and its own setting applies to
its fine-tuning stage.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any, Mapping, Optional, Sequence

from experiments import grids
from mscan_jax.training import rundir

TUNED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")
SELECTION = "validation split, model seed 0, data seed 0, the trial with the best select metric"


class TuningError(ValueError):
  """A tuning folder or table that cannot be read or selected from."""


# ----------------------------------------------------------------------------- rows and tables

def row_key(overrides: Mapping[str, Any]) -> str:
  """The row of a run's overrides: `grids.run_name` of its model and switches (the keys of
  `grids.AXIS_KEYS`), without the seeds, the dial levels and the tuned keys."""
  kept = {k: v for k, v in overrides.items()
          if k in grids.AXIS_KEYS and k not in ("seed", "data.seed", *grids.TUNED_KEYS)
          and not k.startswith("data.synthetic.")}
  return grids.run_name(kept).rsplit("-s", 1)[0]


def table_path(dataset_key: str, size: str) -> str:
  """experiments/tuned/<dataset>@<size>.json"""
  return os.path.join(TUNED_DIR, f"{dataset_key}@{size}.json")


def load_table(dataset_key: str, size: str) -> Optional[dict]:
  """The tuning table of a dataset and size; None where there is none."""
  path = table_path(dataset_key, size)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise TuningError(f"{path} cannot be read ({e}); regenerate it with its command") from None


def table_id(dataset_key: str, size: str) -> str:
  """What a grid folder records of the table it used: its file and a hash of its content
  ("none" without a table), so that a folder never mixes two tunings."""
  path = table_path(dataset_key, size)
  if not os.path.exists(path):
    return "none"
  with open(path, "rb") as f:
    digest = hashlib.sha1(f.read()).hexdigest()[:12]
  return f"{os.path.relpath(path, os.path.dirname(TUNED_DIR))}@{digest}"


def table_of_id(used: str) -> Optional[dict]:
  """The table a grid folder records (`table_id`: "tuned/<dataset>@<size>.json@<hash>"); None
  for "none" or a table no longer there. A table changed since (another hash) is refused."""
  if used == "none":
    return None
  rel, _, digest = used.rpartition("@")
  path = os.path.join(os.path.dirname(TUNED_DIR), rel)
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    content = f.read()
  if hashlib.sha1(content).hexdigest()[:12] != digest:
    raise TuningError(f"{path} changed since the grid used it ({used}): the folder's runs were "
                      "tuned by an earlier table")
  return json.loads(content)


def row_settings(table: Optional[dict], overrides: Mapping[str, Any]) -> dict[str, Any]:
  """A table's settings of the row of `overrides` ({} without a table or row)."""
  if not table:
    return {}
  return dict(table.get("rows", {}).get(row_key(overrides), {}).get("settings", {}))


def row_state(table: Optional[dict], overrides: Mapping[str, Any]) -> str:
  """"tuned", "incomplete" (the row's sweep has an unfinished trial: it chooses nothing yet) or
  "absent" (no table, or no such row)."""
  row = (table or {}).get("rows", {}).get(row_key(overrides))
  if row is None:
    return "absent"
  return "incomplete" if row.get("incomplete") else "tuned"


def settings_for(dataset_key: str, size: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
  """The tuned settings of the row of `overrides` ({} without a table or row)."""
  return row_settings(load_table(dataset_key, size), overrides)


def write_table(table: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rundir.write_text_atomic(path, json.dumps(table, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- selection

def select(trials: Sequence[tuple[Mapping[str, Any], Optional[dict]]]) -> dict:
  """The row's choice among its trials: (the trial's values of the tuned keys, its results.json
  or None when it has not finished). The best validation score wins, ties to the smaller values.
  A row with a trial not finished is "incomplete" and chooses nothing (`settings` {}): every row
  is chosen among the same number of trials. `converged` is False when the chosen trial stopped
  because its epochs ran out (the report then flags the row)."""
  if not trials:
    raise TuningError("a row without trials")
  label = lambda values: ",".join(f"{v:g}" for v in values.values())   # noqa: E731
  row = {"trials": {label(v): (r["best_valid_auc"] if r else None) for v, r in trials},
         "stop_reasons": {label(v): (r or {}).get("stop_reason", "unfinished") for v, r in trials},
         "best_epochs": {label(v): (r or {}).get("best_epoch") for v, r in trials}}
  if any(r is None for _, r in trials):
    return {"settings": {}, "valid": None, "incomplete": True, "converged": False, **row}
  values, results = max(trials, key=lambda t: (float(t[1]["best_valid_auc"]),
                                               tuple(-float(x) for x in t[0].values())))
  return {"settings": dict(values), "valid": float(results["best_valid_auc"]),
          "incomplete": False, "converged": results.get("stop_reason") == "early_stopping", **row}


def merge_tables(old: Optional[dict], new: dict) -> dict:
  """`new` over `old` (a table of the same dataset and size): a row chosen anew replaces its old
  choice; an incomplete row replaces it too unless the old one was chosen over the same trials
  (a sweep of some rows, `--match`, leaves the others as they were; a grown space undoes every
  choice made over the smaller one); old rows the new table lacks are kept."""
  if not old:
    return new
  rows = dict(old.get("rows", {}))
  for key, row in new["rows"].items():
    before = rows.get(key)
    same_trials = before is not None and set(before.get("trials", {})) == set(row["trials"])
    if not row.get("incomplete") or not same_trials or before.get("incomplete", True):
      rows[key] = row
  return {**new, "rows": rows}


def _finished_results(workdir: str) -> Optional[dict]:
  """The trial's results.json (written last: the mark of a finished run) when it reads back with
  a validation score; None otherwise. Selection reads nothing else, so a record of the sweep's
  small files (`record_sweep`) selects as the sweep itself does."""
  try:
    with open(os.path.join(workdir, rundir.RESULTS)) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if isinstance(results, dict) and "best_valid_auc" in results else None


RECORD_FILES = (rundir.CONFIG, rundir.RESULTS, rundir.METRICS, rundir.RUN_INFO)


def record_sweep(out: str, dest: str) -> int:
  """Copies a sweep's small files (grid.json; each finished trial's `RECORD_FILES`) to `dest`,
  atomically per file: a record to commit, from which `build_table` selects the same table.
  Returns the number of finished trials recorded."""
  copied = 0
  rundir.copy_small_files(out, dest, ["grid.json"])
  runs_dir = os.path.join(out, "runs")
  for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
    if _finished_results(os.path.join(runs_dir, name)) is None:
      continue
    copied += 1
    rundir.copy_small_files(os.path.join(runs_dir, name), os.path.join(dest, "runs", name),
                            RECORD_FILES)
  return copied


def build_table(out: str, command: str) -> dict:
  """The table of a tuning folder (`run_grid --grid=tuning`): its runs grouped by row."""
  info_path = os.path.join(out, "grid.json")
  if not os.path.exists(info_path):
    raise TuningError(f"{out} holds no grid (no grid.json): run the sweep first")
  with open(info_path) as f:
    info = json.load(f)
  runs_dir = os.path.join(out, "runs")
  rows: dict[str, list] = {}
  row_overrides: dict[str, dict] = {}
  metrics: set[str] = set()
  for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
    workdir = os.path.join(runs_dir, name)
    config_path = os.path.join(workdir, rundir.CONFIG)
    if not os.path.exists(config_path):
      continue
    with open(config_path) as f:
      config = json.load(f)
    overrides = axis_values(config)
    if overrides.get("seed", 0) != 0 or overrides.get("data.seed", 0) != 0:
      continue
    metrics.add(str(config["train"]["select_metric"]))
    space = grids.tuning_space(overrides)
    values = {k: _lookup(config, k) for k in space}
    rows.setdefault(row_key(overrides), []).append((values, _finished_results(workdir)))
    row_overrides[row_key(overrides)] = overrides
  if not rows:
    raise TuningError(f"{runs_dir} holds no trial")
  for key, trials in rows.items():     # a value of the space not started yet: not finished
    space = grids.tuning_space(row_overrides[key])
    seen = {tuple(v.values()) for v, _ in trials}
    trials += [(dict(zip(space, combo)), None) for combo in itertools.product(*space.values())
               if combo not in seen]
  if len(metrics) > 1:
    raise TuningError(f"{runs_dir}: trials selected by different metrics {sorted(metrics)}")
  return {"dataset": info["dataset"], "size": info["size"],
          "space": {k: list(v) for k, v in {**grids.TUNING_SPACE,
                                             **grids.REFERENCE_TUNING_SPACE}.items()},
          "select_metric": metrics.pop(), "selection": SELECTION, "command": command,
          "rows": {key: {**select(trials), "command": command} for key, trials in rows.items()}}


def _lookup(config: dict, dotted: str) -> Any:
  node: Any = config
  for part in dotted.split("."):
    node = node[part]
  return node


def axis_values(config: dict) -> dict[str, Any]:
  """A config's (as JSON: config.json, or `ConfigDict.to_dict()`) values of `grids.AXIS_KEYS`
  that differ from the default config, the model always: what `row_key` reads."""
  out = {}
  for key in grids.AXIS_KEYS:
    try:
      value = _lookup(config, key)
    except (KeyError, TypeError):
      continue
    value = tuple(value) if isinstance(value, list) else value
    if key in ("model", "seed") or not grids.same_value(grids.default_value(key), value):
      out[key] = value
  return out
