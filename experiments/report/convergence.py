"""Tuning and convergence per model row, and the learning curves (issue 22).

A model row is what a run trains apart from its seeds and its data level: its overrides without
the model seed, the data seed and the dials (`row_key`: "mix", "mscan-saca=False-sbe=False",
"single-scenario=2"). Per row the table prints:

  * the training settings its runs used (`SETTING_KEYS`, read from each run's config.json, which
    a `--report_dir` copy keeps), and the tuning table's choice where one exists
    (`tuned_table_settings`);
  * the share of its runs that converged: results.json `stop_reason` "early_stopping" against
    "max_steps" (`loading.not_converged`); a model without parameters ("not_trainable") is left
    out, an older run without a stop reason is counted as unknown;
  * the median epoch of its best validation score (results.json `best_epoch`, or best_step /
    steps_per_epoch).

The learning curves: each run's validation records of metrics.jsonl (its `select_metric`
against epoch = step / steps_per_epoch), at the default data only, per row the mean over the runs
that reached the epoch with a band from their min to their max, and a dot at each run's best
epoch. The curve of each run is kept in the folder's record (derived.json), so a `--report_dir`
copy, which has no metrics.jsonl, draws the same figure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from typing import Any, Optional, Sequence

from experiments import grids, tuning
from experiments.report import mechanisms as mech
from experiments.report.loading import (BUDGET, CONVERGED, MSCAN, NOT_TRAINABLE, Folder,
                                        ReportError,
                                        RunResult, column_of, is_reference, spec)
from experiments.report.tables import column_title
from mscan_jax import models
from mscan_jax.training import population

# The training settings printed per row: the training hyper-parameters a population's members may
# differ in (`population.HYPER`), the space the equal tuning searches.
SETTING_KEYS = tuple(k for k in population.HYPER.values() if k.startswith("train."))
CONVERGENCE_TABLE = "Table C"
CURVES_FIGURE = "learning_curves.png"
CURVE = "validation curve"            # the record's name of a run's curve (derived.json)
_ROW_DROPPED = ("seed", "data.seed")


# ----------------------------------------------------------------------------- rows

def row_key(overrides: dict) -> str:
  """The model row of a run (`experiments.tuning.row_key`: "mix", "mscan-saca=False-sbe=False",
  "single-scenario=2"): the key of the tuning table too."""
  return tuning.row_key(overrides)


def tuned_table_settings(folder: Folder, overrides: dict) -> dict:
  """The tuning table's settings for the row of `overrides`: the table the folder's grid used
  (grid.json's "tuning", `experiments.tuning.table_id`); {} where it used none."""
  try:
    table = tuning.table_of_id(folder.info.get("tuning", "none"))
  except tuning.TuningError as e:
    raise ReportError(str(e)) from None
  return tuning.row_settings(table, overrides)


def row_title(overrides: dict) -> str:
  """The row's name in the tables: Table 1's column title where the row is a Table 1 column
  ("Mix + DIN(H_u)", "Single #2"), M-scan's variant label ("M-scan, use_sbe=False"), otherwise
  the model's title and its settings."""
  model = overrides["model"]
  rest = {k: v for k, v in overrides.items() if k not in (*_ROW_DROPPED, "model")
          and not k.startswith(mech.DIAL_KEY)}
  info = {k: v for k, v in rest.items() if (k, v) in grids.INFORMATION}
  scenario = rest.pop("single.scenario", None)
  other = {k: v for k, v in rest.items() if k not in info}
  if not other:
    title = column_title(column_of(model, info))
    return title + (f" #{scenario}" if scenario is not None else "")
  if model == MSCAN:
    return mech.variant_label({"model": model, **rest})
  return f"{models.title(model) if spec(model) else model}, " + ", ".join(
      f"{k.split('.')[-1]}={grids.format_value(v)}" for k, v in rest.items())


def best_epoch(run: RunResult) -> Optional[float]:
  """results.json `best_epoch`, or best_step / steps_per_epoch; None where neither is known."""
  res = run.results
  if res.get("best_epoch") is not None:
    return float(res["best_epoch"])
  if res.get("best_step") is not None and res.get("steps_per_epoch"):
    return float(res["best_step"]) / float(res["steps_per_epoch"])
  return None


def is_trained(run: RunResult) -> bool:
  """The run trained parameters: not "not_trainable", nor, in an older run without a stop
  reason, an oracle (the registry's kind)."""
  if run.stop_reason is not None:
    return run.stop_reason != NOT_TRAINABLE
  s = spec(run.model)
  return s is None or s.kind != "oracle"


def run_settings(run: RunResult) -> dict:
  """The `SETTING_KEYS` the run used: its config.json, else its overrides and the defaults."""
  config = run.config()
  return {k: config[k] if k in config else run.setting(k) for k in SETTING_KEYS}


@dataclasses.dataclass
class RowConvergence:
  key: str
  title: str
  overrides: dict                  # of its first run, without seeds
  runs: list[RunResult]
  tuned: dict                      # the tuning table's settings ({} without one)

  def count(self, reason: Optional[str]) -> int:
    return sum(r.stop_reason == reason for r in self.runs)

  @property
  def trained(self) -> list[RunResult]:
    return [r for r in self.runs if is_trained(r)]

  @property
  def converged(self) -> int:
    return self.count(CONVERGED)

  @property
  def budget(self) -> int:
    return self.count(BUDGET)

  @property
  def unknown(self) -> int:
    return len(self.trained) - self.converged - self.budget

  @property
  def share(self) -> float:
    """Converged runs among those with a known stop reason (nan without one)."""
    known = self.converged + self.budget
    return self.converged / known if known else float("nan")

  def settings(self) -> dict[str, list[Any]]:
    """Each setting's distinct values over its runs, in first-seen order."""
    out: dict[str, list[Any]] = {k: [] for k in SETTING_KEYS}
    for r in self.trained:
      for k, v in run_settings(r).items():
        if v not in out[k]:
          out[k].append(v)
    return out

  def best_epochs(self) -> list[float]:
    return [e for r in self.trained if (e := best_epoch(r)) is not None]


def _row_order(overrides: dict, key: str) -> tuple:
  order = list(models.specs())
  model = overrides["model"]
  return (is_reference(model), order.index(model) if model in order else len(order), key)


def convergence_rows(folder: Folder) -> list[RowConvergence]:
  """One row per model row of the folder (every dial level and seed pair pooled): registry
  order, the references last."""
  rows: dict[str, RowConvergence] = {}
  for r in folder.runs:
    key = row_key(r.overrides)
    if key not in rows:
      ov = {k: v for k, v in r.overrides.items()
            if k not in _ROW_DROPPED and not k.startswith(mech.DIAL_KEY)}
      rows[key] = RowConvergence(key, row_title(r.overrides), ov, [],
                                 tuned_table_settings(folder, ov))
    rows[key].runs.append(r)
  return sorted(rows.values(), key=lambda row: _row_order(row.overrides, row.key))


def _fmt_setting(values: Sequence[Any]) -> str:
  return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "–"


def _converged_cell(row: RowConvergence) -> str:
  if not row.trained:
    return "– (not trained)"
  known = row.converged + row.budget
  text = f"{row.converged}/{known} ({100 * row.share:.0f} %)" if known else "–"
  return text + (f", {row.unknown} unknown" if row.unknown else "")


def _epoch_cell(row: RowConvergence) -> str:
  e = row.best_epochs()
  if not e:
    return "–"
  return f"{statistics.median(e):g}" + (f" ({min(e):g}–{max(e):g})" if len(e) > 1 else "")


def convergence_markdown(rows: Sequence[RowConvergence]) -> list[str]:
  """Table C: per model row, its runs, settings, converged share and median best epoch."""
  if not rows:
    return []
  tuned = any(row.tuned for row in rows)
  head = ["Row", "runs", *SETTING_KEYS, *(["tuning table"] if tuned else []), "converged",
          "best epoch: median (min–max)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    settings = row.settings()
    cells = [row.title, str(len(row.runs)), *(_fmt_setting(settings[k]) for k in SETTING_KEYS)]
    if tuned:
      cells.append(", ".join(f"{k}={grids.format_value(v)}" for k, v in row.tuned.items()) or "–")
    cells += [_converged_cell(row), _epoch_cell(row)]
    lines.append("| " + " | ".join(cells) + " |")
  return lines + ["", (
      "Settings: the values the runs used (their config.json). Converged: runs that early "
      "stopping ended (results.json `stop_reason` early_stopping) among those with a stop "
      "reason; the others ran out of steps (max_steps) and every comparison that uses one of "
      "them is printed \"not converged\" and not judged; unknown: older runs that record no stop "
      "reason. Best epoch: results.json best_epoch (best_step / steps_per_epoch), the epoch of "
      "the run's best validation score. Models without parameters (the oracles) are not "
      "trained. Data: `convergence.csv`.")]


def convergence_csv_rows(dataset: str, rows: Sequence[RowConvergence]) -> list[dict]:
  out = []
  for row in rows:
    e, settings = row.best_epochs(), row.settings()
    out.append({"dataset": dataset, "row": row.key, "title": row.title, "runs": len(row.runs),
                **{k: " ".join(map(str, settings[k])) for k in SETTING_KEYS},
                "tuned": json.dumps(row.tuned) if row.tuned else "",
                "trained": len(row.trained), "converged": row.converged,
                "max_steps": row.budget, "unknown": row.unknown, "share": row.share,
                "median_best_epoch": statistics.median(e) if e else "",
                "min_best_epoch": min(e) if e else "", "max_best_epoch": max(e) if e else ""})
  return out


CONVERGENCE_CSV_FIELDS = ("dataset", "row", "title", "runs", *SETTING_KEYS, "tuned", "trained",
                          "converged", "max_steps", "unknown", "share", "median_best_epoch",
                          "min_best_epoch", "max_best_epoch")


def training_line(folders: Sequence[Folder]) -> list[str]:
  """report.md's opening line on convergence: how many trained runs early stopping ended, how
  many ran out of steps, how many record no stop reason, per model in Table C."""
  runs = [r for f in folders for r in f.runs if is_trained(r)]
  if not runs:
    return []
  if all(r.stop_reason is None for r in runs):
    return ["", f"**Training to convergence.** None of the {len(runs)} trained runs records why "
            "it stopped (results.json `stop_reason`: older runs), so whether they converged is "
            f"unknown [{CONVERGENCE_TABLE}]; no comparison is marked \"not converged\"."]
  conv = sum(r.stop_reason == CONVERGED for r in runs)
  budget = [r for r in runs if r.stop_reason == BUDGET]
  unknown = len(runs) - conv - len(budget)
  text = (f"**Training to convergence.** Of {len(runs)} trained runs, early stopping ended "
          f"{conv}; {len(budget)} ran out of steps first (not converged)")
  if unknown:
    text += (f"; {unknown} record no stop reason (older runs: unknown, not counted against a "
             "comparison)")
  text += (". A comparison that uses a run that did not converge is printed \"not converged\" "
           f"and not judged. Per model: [{CONVERGENCE_TABLE}] (Tuning and convergence).")
  return ["", text]


# ----------------------------------------------------------------------------- learning curves

def validation_curve(run: RunResult) -> Optional[list[list[float]]]:
  """[[epoch, validation score], ...]: the run's validation records of metrics.jsonl (its
  results.json `select_metric`), epoch = step / steps_per_epoch; kept in the folder's record so
  that a copy without metrics.jsonl has it. None for a run without them."""
  if not is_trained(run) or not (
      run.has_file("metrics.jsonl") or run.has_record(CURVE)):
    return None
  spe, metric = run.results.get("steps_per_epoch"), run.results.get("select_metric")

  def compute():
    if not spe or not metric:
      return None
    points = []
    with open(f"{run.workdir}/metrics.jsonl") as f:
      for line in f:
        rec = json.loads(line)
        v = rec.get(metric)
        if rec.get("split") == "valid" and v is not None and math.isfinite(v):
          points.append([rec["step"] / spe, float(v)])
    return points or None
  return run.recorded(CURVE, compute, run.has_file("metrics.jsonl"))


def curve_data(folder: Folder) -> tuple[list[dict], list[dict]]:
  """(curve rows {dataset, row, title, metric, epoch, n_runs, mean, min, max}, best-epoch points
  {dataset, row, title, seed, data_seed, epoch, value}) of the runs at the default data."""
  curves, best = [], []
  for row in convergence_rows(folder):
    per_epoch: dict[float, list[float]] = {}
    metric = ""
    for r in row.trained:
      if mech.run_level(r.overrides) != mech.DEFAULT or (c := validation_curve(r)) is None:
        continue
      metric = metric or r.results.get("select_metric", "")
      for e, v in c:
        per_epoch.setdefault(round(e, 6), []).append(v)
      b = best_epoch(r)
      at = [v for e, v in c if b is not None and math.isclose(e, b, abs_tol=1e-6)]
      if at:
        best.append({"dataset": folder.dataset, "row": row.key, "title": row.title,
                     "seed": r.seed, "data_seed": r.data_seed, "epoch": b, "value": at[0]})
    for e in sorted(per_epoch):
      v = per_epoch[e]
      curves.append({"dataset": folder.dataset, "row": row.key, "title": row.title,
                     "metric": metric, "epoch": e,
                     "n_runs": len(v), "mean": sum(v) / len(v), "min": min(v), "max": max(v)})
  return curves, best


CURVE_CSV_FIELDS = ("dataset", "row", "title", "metric", "epoch", "n_runs", "mean", "min", "max")
