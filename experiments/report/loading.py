"""The finished runs of a grid folder, which table each belongs to, their per-seed values and
joins of their predictions.

A run is identified by its model, its settings and its seed pair `RunKey = (seed, data_seed)`:
the model seed and the seed of the synthetic data (`results.json`'s "data_seed"; absent in older
runs, which all used data seed 0). Every statistic is over seed pairs.

Whether a run converged (`not_converged`, the one rule every judgement of the report applies): a
run converged when early stopping ended it (results.json `stop_reason` "early_stopping"); it did
not when its step budget ran out first ("max_steps"; for an older run that records no reason:
when its best validation step is its last). A model without parameters ("not_trainable") and an
older run that stopped after its best step without recording why do not count against a
comparison (the tuning-and-convergence table prints the latter as unknown). A comparison that
uses a run that did not converge is printed "not converged" and is not judged: no verdict, no
bold, no `*`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from experiments import grids
from mscan_jax import models
from mscan_jax.evaluation import metrics as metrics_lib

RunKey = tuple[int, int]   # (seed, data_seed)


@dataclasses.dataclass(frozen=True)
class Metric:
  """A test metric of results.json.

  key:      its key in results.json: {"all": x, "per_scenario": {"<id>": x}}, or one number (a
            metric of the whole test set; a target-scenario model's is of its scenario).
  title:    its name in the report.
  label:    the predictions.parquet column it is an AUC of, for the tests on joined predictions
            (DeLong) and Figure 5; None for metrics averaged over users (no pooled test).
  """
  key: str
  title: str
  label: Optional[str] = None


# Report order: each user-averaged metric beside its pooled AUC.
METRICS = {m.key: m for m in (
    Metric("auc", "AUC (observed clicks)", "label"),
    Metric("gauc", "GAUC (observed clicks, per-user AUC averaged over users)"),
    Metric("true_interest_auc", "true-interest AUC", "true_like"),
    Metric("true_interest_user_auc",
           "per-user true-interest AUC (pooled per user, averaged over users)"),
)}
# Metrics of the figures (pooled AUCs: Figure 5 recomputes them from saved predictions).
FIGURE_METRICS = ("auc", "true_interest_auc")
MSCAN = grids.proposed()   # the paper's model (the registry's Table 2 model): Table 2's
                           # ablations and Figures 5 and 6 are of it


# results.json `stop_reason` values (`mscan_jax.training.loop.STOP_REASONS`) as the report reads them.
CONVERGED, BUDGET, NOT_TRAINABLE = "early_stopping", "max_steps", "not_trainable"
NOT_CONVERGED = "not converged"      # what a comparison with a run that did not converge prints


class ReportError(ValueError):
  """A user error (a missing folder, no finished run) or inconsistent runs (two models'
  predictions disagree on a sample's label)."""


def spec(model: str) -> Optional[models.ModelSpec]:
  """The registry's entry of `model` (or of a Table 1 column's model), None for a model no longer
  registered."""
  return models.specs().get(column_model(model))


# A Table 1 column is a model, then the information switches its runs set (`grids.INFORMATION`):
# "mix", "mix|baseline.behaviours=cur+all", "mscan|mscan.history_context=True".
COLUMN_SEP = "|"


def column_of(model: str, overrides: dict) -> str:
  """The Table 1 column of `model` run with `overrides`: the model, then its information switches."""
  return model + "".join(f"{COLUMN_SEP}{k}={v}" for k, v in overrides.items()
                         if (k, v) in grids.INFORMATION)


def column_model(column: str) -> str:
  return column.split(COLUMN_SEP, 1)[0]


def column_information(column: str) -> list[grids.Information]:
  """What the column's switches add to its model's input (empty for a model's default)."""
  out = []
  for part in column.split(COLUMN_SEP)[1:]:
    key, value = part.split("=", 1)
    out += [info for (k, v), info in grids.INFORMATION.items() if k == key and str(v) == value]
  return out


def is_reference(model: str) -> bool:
  """A reference scorer or an oracle: shown beside the models, never bold, never the baseline."""
  s = spec(model)
  return s is not None and s.kind != "model"


def has_target_scenario(model: str) -> bool:
  s = spec(model)
  return s is not None and s.target_scenario


# Columns of predictions.parquet the report reads; the last `_CACHE_SIZE` runs read are kept
# (a paper-scale test split is tens of millions of rows per run).
PRED_COLUMNS = ("sample_id", "user_id", "scenario", "label", "score", "true_like", "y_m",
                "y_s")
_CACHE_SIZE = 8
_PRED_CACHE: "collections.OrderedDict[str, dict]" = collections.OrderedDict()


# The record of the numbers the report computes from predictions (`RunResult.from_predictions`),
# written beside report.md's runs: a `--report_dir` copy holds no predictions, so a report made
# from the copy reads them from here and regenerates the same numbers.
DERIVED_FILE = "derived.json"


@dataclasses.dataclass
class Record:
  """A folder's record of prediction-derived numbers: `loaded` from its DERIVED_FILE, and `used`
  by this report (what the report writes back: no entry of a run or c no longer reported)."""
  loaded: dict = dataclasses.field(default_factory=dict)
  used: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunResult:
  name: str
  dataset: str
  overrides: dict
  results: dict
  workdir: str
  timing: dict = dataclasses.field(default_factory=dict)   # wall_s, cpu_s of the run (run.json)
  derived: Record = dataclasses.field(default_factory=Record)   # the folder's (DERIVED_FILE)

  def setting(self, key: str) -> Any:
    return self.overrides.get(key, grids.default_value(key))

  @property
  def model(self) -> str:
    return self.overrides["model"]

  @property
  def column(self) -> str:
    """Its Table 1 column: the model, then the information switches it sets (`column_model`)."""
    return column_of(self.model, self.overrides)

  @property
  def seed(self) -> int:
    return int(self.overrides["seed"])

  @property
  def data_seed(self) -> int:
    return int(self.results.get("data_seed", self.overrides.get("data.seed", 0)))

  @property
  def key(self) -> RunKey:
    return (self.seed, self.data_seed)

  @property
  def stop_reason(self) -> Optional[str]:
    """results.json `stop_reason`. An older run that does not record it: "max_steps" when its
    best validation step is its last (it was still improving when its budget ended it, the
    rule of the reports before the stop reason existed), else None (unknown)."""
    reason = self.results.get("stop_reason")
    if reason is None and self.results.get("steps", 0) > 0 and (
        self.results.get("best_step", -1) >= self.results["steps"]):
      return BUDGET
    return reason

  def has_predictions(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, "predictions.parquet"))

  def has_file(self, name: str) -> bool:
    return os.path.exists(os.path.join(self.workdir, name))

  def config(self) -> dict:
    """The run's config.json flattened ({"train.learning_rate": 0.001, ...}): the settings it
    actually used (tuned ones included); {} when the folder has none. A `--report_dir` copy keeps
    config.json."""
    path = os.path.join(self.workdir, "config.json")
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      return grids.flatten(json.load(f))

  def from_predictions(self, what: str, compute: Callable[[], Any]) -> Any:
    """`compute()`, a JSON value computed from this run's predictions (see `recorded`)."""
    return self.recorded(what, compute, self.has_predictions())

  def _record_key(self, what: str) -> str:
    return f"{self.name} | {what}"

  def has_record(self, what: str) -> bool:
    """The folder's record holds (this run, `what`) (see `recorded`)."""
    return self._record_key(what) in self.derived.loaded

  def recorded(self, what: str, compute: Callable[[], Any], source_present: bool) -> Any:
    """`compute()`, a JSON value computed from a file of this run that a `--report_dir` copy
    does not keep (predictions.parquet, metrics.jsonl), kept in the folder's record under (this
    run, `what`). Computed whenever the file is there (`source_present`: a record never outlives
    a retrained run); read from the record when it is not (a committed copy). A ReportError or
    ValueError of `compute` is recorded and raised again on every read, so a copy reproduces the
    notes it caused too."""
    key = self._record_key(what)
    if source_present or key not in self.derived.loaded:
      try:
        entry = {"value": compute()}
      except ValueError as e:                        # ReportError is a ValueError
        if not source_present:                       # nothing recorded, nothing to compute from
          raise
        entry = {"error": str(e), "report_error": isinstance(e, ReportError)}
      entry = json.loads(json.dumps(entry))          # the same types as after a reload
    else:
      entry = self.derived.loaded[key]
    self.derived.used[key] = entry
    if "error" in entry:
      raise (ReportError if entry["report_error"] else ValueError)(entry["error"])
    return entry["value"]

  def predictions(self) -> dict[str, np.ndarray]:
    """The `PRED_COLUMNS` of predictions.parquet present in the file, {column: numpy array}."""
    path = os.path.join(self.workdir, "predictions.parquet")
    if path in _PRED_CACHE:
      _PRED_CACHE.move_to_end(path)
      return _PRED_CACHE[path]
    if not os.path.exists(path):
      raise ReportError(f"run {self.name} has no predictions.parquet "
                        "(run with train.export_predictions=True)")
    import pyarrow.parquet as pq
    names = pq.read_schema(path).names
    missing = [c for c in ("sample_id", "scenario", "label", "score") if c not in names]
    if missing:
      raise ReportError(f"run {self.name}: predictions.parquet lacks columns {missing}")
    table = pq.read_table(path, columns=[c for c in PRED_COLUMNS if c in names])
    pred = {c: table.column(c).to_numpy() for c in table.column_names}
    _PRED_CACHE[path] = pred
    while len(_PRED_CACHE) > _CACHE_SIZE:
      _PRED_CACHE.popitem(last=False)
    return pred


def c_scores(run: RunResult, c: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The run's predictions and Eq. (12)'s score at `c`, from its saved y_m and y_s."""
  from mscan_jax.training import objective
  pred = run.predictions()
  if "y_s" not in pred or "y_m" not in pred:
    raise ReportError(f"run {run.name}: predictions.parquet has no y_m / y_s (the SBE is off?)")
  return pred, np.asarray(objective.inference_score({"y_m": pred["y_m"], "y_s": pred["y_s"]}, c))


def auc_at_c(run: RunResult, c: float, label_key: str) -> float:
  """#All AUC of `label_key` against Eq. (12)'s score at `c` (recorded: `from_predictions`)."""
  def compute():
    pred, score = c_scores(run, c)
    return float(metrics_lib.auc(pred[label_key], score))
  return run.from_predictions(f"auc[{label_key}] at c={float(c)!r}", compute)


@dataclasses.dataclass
class Folder:
  path: str
  dataset: str
  info: dict
  runs: list[RunResult]
  unfinished: list[str]
  derived: Record = dataclasses.field(default_factory=Record)   # DERIVED_FILE, shared by its runs


def load_folder(path: str) -> Folder:
  """The finished runs of one grid folder (`run.json` + `results.json` in `runs/<name>/`)."""
  info_path = os.path.join(path, "grid.json")
  info = json.load(open(info_path)) if os.path.exists(info_path) else {}
  runs_dir = os.path.join(path, "runs")
  if not os.path.isdir(runs_dir):
    raise ReportError(f"{runs_dir} does not exist: run "
                      f"`python -m experiments.run_grid --out={path}` first")
  derived_path = os.path.join(path, DERIVED_FILE)
  derived = Record(json.load(open(derived_path)) if os.path.exists(derived_path) else {})
  runs, unfinished = [], []
  for name in sorted(os.listdir(runs_dir)):
    wd = os.path.join(runs_dir, name)
    run_file, res_file = os.path.join(wd, "run.json"), os.path.join(wd, "results.json")
    if not os.path.exists(run_file):
      continue
    if not os.path.exists(res_file):
      unfinished.append(name)
      continue
    with open(run_file) as f:
      run = json.load(f)
    with open(res_file) as f:
      res = json.load(f)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in run["overrides"].items()}
    timing = {k: run[k] for k in ("wall_s", "cpu_s") if k in run}
    runs.append(RunResult(name, info.get("dataset") or res.get("dataset", "?"), overrides, res, wd,
                          timing, derived))
  dataset = info.get("dataset") or (runs[0].dataset if runs else os.path.basename(path))
  return Folder(path, dataset, info, runs, unfinished, derived)


# ----------------------------------------------------------------------------- which table

def _only(run: RunResult, keys: Iterable[str]) -> bool:
  """The run sets no override but `keys`, the model and its seeds."""
  return set(run.overrides) <= set(keys) | {"model", "seed", "data.seed"}


def table1_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  """Runs of Table 1's models, reference scorers and oracles with default settings, and of Table
  1's models with an information switch of `grids.INFORMATION` (their own columns)."""
  cols = set(models.names(table="table1")) | {m for m in models.specs() if is_reference(m)}
  info_keys = {k for k, _ in grids.INFORMATION}
  return [r for r in runs if r.model in cols and _only(r, {"single.scenario", *info_keys})
          and all((k, v) in grids.INFORMATION for k, v in r.overrides.items() if k in info_keys)]


def reference_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  """Runs of reference scorers and oracles with default settings (the reference rows)."""
  return [r for r in runs if is_reference(r.model) and _only(r, ())]


def table2_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == MSCAN and _only(r, {"mscan.use_saca", "mscan.use_sbe"})]


def alpha_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == MSCAN and _only(r, {"mscan.alpha"})]


def default_mscan_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == MSCAN and _only(r, ())]


# ----------------------------------------------------------------------------- per-seed values

def not_converged(runs: Iterable[RunResult]) -> tuple[str, ...]:
  """The names of the `runs` that did not converge: their step budget ran out before early
  stopping fired (results.json `stop_reason` "max_steps"). The one rule behind every "not
  converged" of the report: a comparison (a contrast, a ladder step, a bold cell, a `*`) that uses
  one of them is printed so and not judged (see the module docstring)."""
  return tuple(sorted({r.name for r in runs if r.stop_reason == BUDGET}))


@dataclasses.dataclass
class Stat:
  values: dict[RunKey, float]     # (seed, data_seed) -> value
  unconverged: tuple[str, ...] = ()   # its runs that did not converge (`not_converged`)

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    v = [x for x in self.values.values() if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")

  @property
  def std(self) -> float:
    v = [x for x in self.values.values() if not math.isnan(x)]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else float("nan")


def format_keys(keys: Iterable[RunKey]) -> str:
  """Seed pairs as "seed/data_seed", space-separated ("0/0 1/0 0/1")."""
  return " ".join(f"{s}/{d}" for s, d in sorted(keys))


def metric_value(results: dict, metric: str, row: str) -> Optional[float]:
  """`metric` of one results.json on `row` (a scenario id or "all"); None if it has none."""
  v = results.get(metric)
  if v is None:
    return None
  if isinstance(v, dict):
    v = v.get("all") if row == "all" else v.get("per_scenario", {}).get(row)
    return None if v is None else float(v)
  return float(v) if row == "all" else None


def run_value(run: RunResult, metric: str, row: str) -> Optional[float]:
  """The run's value in Table 1's `row`. A target-scenario model (Single, Finetune) is trained
  and tested on its scenario only: its whole-test-set value is that scenario's row, no #All."""
  if has_target_scenario(run.model):
    if row == "all" or str(run.setting("single.scenario")) != row:
      return None
    return metric_value(run.results, metric, "all")
  return metric_value(run.results, metric, row)


def rows_of(runs: Sequence[RunResult], metric: str) -> list[str]:
  """Every scenario some run has a value of `metric` for (sorted by id), then "all"."""
  scen = set()
  for r in runs:
    if has_target_scenario(r.model):
      if metric_value(r.results, metric, "all") is not None:
        scen.add(int(r.setting("single.scenario")))
    elif isinstance(r.results.get(metric), dict):
      scen.update(int(k) for k in r.results[metric].get("per_scenario", {}))
  return [str(s) for s in sorted(scen)] + ["all"]


def cell_stat(runs: Sequence[RunResult], column: str, row: str, metric: str) -> Stat:
  """Per-seed-pair values of `metric` for Table 1's `column` (a model, or a model with its
  information switches: `RunResult.column`) in `row` (a scenario id or "all")."""
  values: dict[RunKey, float] = {}
  used = []
  for r in runs:
    if r.column == column and (v := run_value(r, metric, row)) is not None:
      values[r.key] = v
      used.append(r)
  return Stat(values, not_converged(used))


def run_for(runs: Sequence[RunResult], column: str, row: str, key: RunKey
            ) -> Optional[RunResult]:
  """The run of Table 1's `column` with seed pair `key` whose value is `row`'s."""
  for r in runs:
    if r.column == column and r.key == key and (
        not has_target_scenario(column) or str(r.setting("single.scenario")) == row):
      return r
  return None


# ----------------------------------------------------------------------------- joins

def joined_scores(a: RunResult, b: RunResult, row: str, label_key: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Labels and both runs' scores on the test samples of `row` both scored, joined on sample_id.

  Returns (labels, scores_a, scores_b, number of samples only one of the runs has)."""
  pa, pb = a.predictions(), b.predictions()
  if label_key not in pa or label_key not in pb:
    raise ReportError(f"{label_key!r} missing from the predictions of {a.name} or {b.name}")
  sel_a = np.ones(len(pa["sample_id"]), bool) if row == "all" else pa["scenario"] == int(row)
  sel_b = np.ones(len(pb["sample_id"]), bool) if row == "all" else pb["scenario"] == int(row)
  ids_a, ids_b = pa["sample_id"][sel_a], pb["sample_id"][sel_b]
  common, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
  y_a, y_b = pa[label_key][sel_a][ia], pb[label_key][sel_b][ib]
  if not np.array_equal(y_a, y_b):
    bad = int(common[np.flatnonzero(y_a != y_b)[0]])
    raise ReportError(f"runs {a.name} and {b.name}: predictions.parquet disagree on "
                      f"{label_key} of sample_id {bad}")
  unmatched = len(ids_a) + len(ids_b) - 2 * len(common)
  return (y_a.astype(np.float64), pa["score"][sel_a][ia].astype(np.float64),
          pb["score"][sel_b][ib].astype(np.float64), unmatched)
