"""The finished runs of a grid folder, their per-seed values and joins of their predictions."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from experiments import grids

METRICS = {"auc": "AUC (observed clicks)", "true_interest_auc": "true-interest AUC"}
PRED_LABEL = {"auc": "label", "true_interest_auc": "true_like"}


class ReportError(ValueError):
  """A user error (a missing folder) or inconsistent runs (two models' predictions disagree on a
  sample's label)."""


# Columns of predictions.parquet the report reads; the last `_CACHE_SIZE` runs read are kept
# (a paper-scale test split is tens of millions of rows per run).
PRED_COLUMNS = ("sample_id", "scenario", "label", "score", "true_like", "y_m", "y_s")
_CACHE_SIZE = 8
_PRED_CACHE: "collections.OrderedDict[str, dict]" = collections.OrderedDict()


@dataclasses.dataclass
class RunResult:
  name: str
  dataset: str
  overrides: dict
  results: dict
  workdir: str
  timing: dict = dataclasses.field(default_factory=dict)   # wall_s, cpu_s of the run (run.json)

  def setting(self, key: str) -> Any:
    return self.overrides.get(key, grids.default_value(key))

  @property
  def model(self) -> str:
    return self.overrides["model"]

  @property
  def seed(self) -> int:
    return int(self.overrides["seed"])

  def predictions(self) -> dict[str, np.ndarray]:
    """The `PRED_COLUMNS` of predictions.parquet present in the file, {column: numpy array}."""
    path = os.path.join(self.workdir, "predictions.parquet")
    if path in _PRED_CACHE:
      _PRED_CACHE.move_to_end(path)
      return _PRED_CACHE[path]
    if not os.path.exists(path):
      raise ReportError(f"{path} does not exist (run with train.export_predictions=True)")
    import pyarrow.parquet as pq
    names = pq.read_schema(path).names
    missing = [c for c in ("sample_id", "scenario", "label", "score") if c not in names]
    if missing:
      raise ReportError(f"{path}: missing columns {missing}")
    table = pq.read_table(path, columns=[c for c in PRED_COLUMNS if c in names])
    pred = {c: table.column(c).to_numpy() for c in table.column_names}
    _PRED_CACHE[path] = pred
    while len(_PRED_CACHE) > _CACHE_SIZE:
      _PRED_CACHE.popitem(last=False)
    return pred


@dataclasses.dataclass
class Folder:
  path: str
  dataset: str
  info: dict
  runs: list[RunResult]
  unfinished: list[str]


def load_folder(path: str) -> Folder:
  """The finished runs of one grid folder (`run.json` + `results.json` in `runs/<name>/`)."""
  info_path = os.path.join(path, "grid.json")
  info = json.load(open(info_path)) if os.path.exists(info_path) else {}
  runs_dir = os.path.join(path, "runs")
  if not os.path.isdir(runs_dir):
    raise ReportError(f"{runs_dir} does not exist: run "
                      f"`python -m experiments.grid --out={path}` first")
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
                          timing))
  dataset = info.get("dataset") or (runs[0].dataset if runs else os.path.basename(path))
  return Folder(path, dataset, info, runs, unfinished)


def _only(run: RunResult, keys: Iterable[str]) -> bool:
  return set(run.overrides) <= set(keys) | {"model", "seed"}


def table1_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model in grids.TABLE1_MODELS and _only(r, {"single.scenario"})]


def table2_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == "mscan" and _only(r, {"mscan.use_saca", "mscan.use_sbe"})]


def alpha_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == "mscan" and _only(r, {"mscan.alpha"})]


def default_mscan_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == "mscan" and _only(r, ())]


# ----------------------------------------------------------------------------- per-seed values

@dataclasses.dataclass
class Stat:
  values: dict[int, float]     # seed -> value

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
    raise ReportError(f"{a.workdir} and {b.workdir}: predictions.parquet disagree on "
                      f"{label_key} of sample_id {bad}")
  unmatched = len(ids_a) + len(ids_b) - 2 * len(common)
  return (y_a.astype(np.float64), pa["score"][sel_a][ia].astype(np.float64),
          pb["score"][sel_b][ib].astype(np.float64), unmatched)

