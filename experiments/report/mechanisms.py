"""What each module buys, measured: the contrasts of `grids.MODULE_CONTRASTS` at each dial level
of the synthetic benchmark, the SBE's c trade-off per level, and whether y_s learns the bias.

A run's data level is its override `data.synthetic.<dial>` (`DIAL_VALUES` names the
value: placebo or strong); a run with no dial override (or the moderate value) is on the default
preset, every dial moderate, which is each dial's moderate level. A run moving two dials, or a
dial to a value that is not a named level, is not used here.

A module's gain at a level is, per seed pair (seed, data_seed) both sides have, the treatment
run's value minus the control run's (`Contrast`: two sets of overrides, the model included), on
each of `MEASURES`. Its summary is the mean and the 95 % t-based confidence interval over the
pairs, mean ± t(0.975, n − 1) · sd / √n (sd with ddof 1; no interval with one pair: `mean_ci`).
The verdicts that report.md's sentences use: `helps` where the interval lies above 0, `lowers`
where below, otherwise no measurable effect. Placebo check: at the placebo level of a dial the
module claims (`Contrast.claims`), its mechanism is off, so a gain that helps there is flagged as
a possible leak or overfit. A gain that uses a run which did not converge
(`loading.not_converged`) is printed "not converged" and gets no verdict.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Sequence

import numpy as np
import scipy.stats

from experiments import grids
from experiments.report.loading import (METRICS, MSCAN, NOT_CONVERGED, Folder, ReportError,
                                        RunKey, RunResult, auc_at_c, c_scores, format_keys,
                                        not_converged)
from mscan_jax import models
from mscan_jax.data import datasets
from mscan_jax.evaluation import metrics as metrics_lib

CONFIDENCE = 0.95
LEVELS = ("placebo", "moderate", "strong")        # the x axis of a dose-response
Level = tuple[str, str]                           # (dial, "placebo" | "strong"), or DEFAULT
DEFAULT: Level = ("", "moderate")                 # the default preset: every dial moderate
DIAL_KEY = "data.synthetic."
# dial -> {level: value} of the synthetic benchmark (the dataset registry's)
DIAL_VALUES = datasets.dial_levels("synthetic")


@dataclasses.dataclass(frozen=True)
class Measure:
  """A number of results.json: `key`'s `field` ("mean_per_scenario", "all"), or the number
  itself (field None)."""
  key: str
  field: Optional[str]
  title: str          # in sentences
  short: str          # in table headers

  def value(self, results: dict) -> Optional[float]:
    v = results.get(self.key)
    if isinstance(v, dict):
      v = v.get(self.field) if self.field else None
    elif self.field is not None and self.field != "all":
      v = None
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return None
    return float(v)


# Observed-click AUC per scenario and pooled (#All, across users), GAUC beside it (within-user
# ranking), then the true-interest AUCs. `OBSERVED`: what a module costs in observed clicks.
MEASURES = {m.key + ("" if m.field is None else f".{m.field}"): m for m in (
    Measure("auc", "mean_per_scenario", "observed-click AUC, mean per scenario",
            "AUC (mean per scen.)"),
    Measure("auc", "all", "observed-click AUC #All", "AUC #All"),
    Measure("gauc", None, "observed-click GAUC", "GAUC"),
    Measure("true_interest_auc", "mean_per_scenario", "true-interest AUC, mean per scenario",
            "true-interest AUC (mean per scen.)"),
    Measure("true_interest_user_auc", None, "per-user pooled true-interest AUC",
            "per-user true-interest AUC"),
)}
OBSERVED = ("auc.mean_per_scenario", "auc.all", "gauc")
TRUE_INTEREST = ("true_interest_auc.mean_per_scenario", "true_interest_user_auc")
# The measure of the dose-response sentences (the first present).
MAIN_MEASURES = ("true_interest_auc.mean_per_scenario", "auc.mean_per_scenario")


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE
            ) -> tuple[float, float, float]:
  """(mean, lower, upper): mean ± t(1/2 + confidence/2, n − 1) · sd / √n, sd with ddof 1. With
  one value the interval is (nan, nan); with none everything is nan."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return float("nan"), float("nan"), float("nan")
  mean = float(v.mean())
  if v.size < 2:
    return mean, float("nan"), float("nan")
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1)
               / math.sqrt(v.size))
  return mean, mean - half, mean + half


def fmt_signed(x: float) -> str:
  return "–" if math.isnan(x) else f"{x:+.4f}"


def fmt_interval(mean: float, lo: float, hi: float, n: int) -> str:
  """"+0.0120, CI +0.0070..+0.0170": one cell of the tables and the words the summary quotes."""
  if n == 0:
    return "–"
  if n < 2:
    return f"{fmt_signed(mean)}, one pair: no CI"
  return f"{fmt_signed(mean)}, CI {fmt_signed(lo)}..{fmt_signed(hi)}"


# ----------------------------------------------------------------------------- runs and levels

def level_label(level: Level) -> str:
  """"default (every dial moderate)", "transfer placebo (0)", "drift strong (0.872)"."""
  if level == DEFAULT:
    return "default (every dial moderate)"
  dial, name = level
  return f"{dial} {name} ({DIAL_VALUES[dial][name]:g})"


def dial_levels(dial: str) -> list[Level]:
  """The x axis of `dial`'s dose-response: its placebo, the default (moderate), its strong."""
  return [(dial, "placebo"), DEFAULT, (dial, "strong")]


def run_level(overrides: dict) -> Optional[Level]:
  """The data level of a run's overrides; None for two dials moved or an unnamed value."""
  moved = []
  for dial in DIAL_VALUES:
    v = overrides.get(DIAL_KEY + dial)
    if v is None or float(v) < 0:                 # < 0: the preset's value (the config default)
      continue
    names = [n for n, x in DIAL_VALUES[dial].items() if math.isclose(x, float(v))]
    if not names:
      return None
    if names[0] != "moderate":
      moved.append((dial, names[0]))
  if len(moved) > 1:
    return None
  return moved[0] if moved else DEFAULT


def setting_of(overrides: dict) -> frozenset:
  """What a run trains apart from its seeds and data level: its overrides without seeds and
  dials, default values dropped (so {} and {"baseline.behaviours": "cur"} are one setting)."""
  kept = {k: v for k, v in overrides.items()
          if k not in ("seed", "data.seed") and not k.startswith(DIAL_KEY)}
  try:
    kept = grids.canonical(kept)
    kept.pop("seed")
  except KeyError:                                # a key no longer in the config: as it is
    pass
  return frozenset((k, grids.format_value(v)) for k, v in kept.items())


def index_runs(runs: Sequence[RunResult]) -> dict[tuple[frozenset, Level], list[RunResult]]:
  """The runs of a folder by (their setting: overrides but seeds and dials, their dial level)."""
  out: dict[tuple[frozenset, Level], list[RunResult]] = {}
  for r in runs:
    level = run_level(r.overrides)
    if level is not None:
      out.setdefault((setting_of(r.overrides), level), []).append(r)
  return out


def _level_order(level: Level) -> tuple:
  if level == DEFAULT:
    return (-1, 0)
  return (tuple(DIAL_VALUES).index(level[0]), LEVELS.index(level[1]))


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ----------------------------------------------------------------------------- gains

@dataclasses.dataclass
class Gain:
  """A module's gain on one measure at one data level: treatment − control per seed pair."""
  module: str
  level: Level
  measure: str
  diffs: dict[RunKey, float]
  treatment_mean: float
  control_mean: float
  placebo_check: bool            # the placebo level of a dial the module claims
  unconverged: tuple[str, ...] = ()   # its runs that did not converge: no verdict

  def __post_init__(self):
    self.mean, self.lo, self.hi = mean_ci(list(self.diffs.values()))

  @property
  def n(self) -> int:
    return len(self.diffs)

  @property
  def judged(self) -> bool:
    """Every run of the gain converged (`loading.not_converged`): it may get a verdict."""
    return not self.unconverged

  @property
  def helps(self) -> bool:
    return self.judged and self.n >= 2 and self.lo > 0

  @property
  def lowers(self) -> bool:
    return self.judged and self.n >= 2 and self.hi < 0

  @property
  def flagged(self) -> bool:
    """A gain in the module's favour where the mechanism it claims is off."""
    return self.placebo_check and self.helps

  @property
  def text(self) -> str:
    """The table cell, and what the summary quotes: "not converged (k runs)" for a gain that is
    not judged."""
    if not self.judged:
      return f"{NOT_CONVERGED}: {len(self.unconverged)} of {2 * self.n} runs"
    return fmt_interval(self.mean, self.lo, self.hi, self.n)


@dataclasses.dataclass
class Study:
  """The gains of every module with runs on both sides, at every data level present."""
  dataset: str
  contrasts: dict[str, grids.Contrast]          # the modules with a gain, table order
  gains: dict[tuple[str, Level, str], Gain]
  dials: list[str]                              # dials with runs at a moved level
  measures: list[str]                           # measures with a gain
  prefix: str = ""                              # of the figure files (several datasets)

  def get(self, module: str, level: Level, measure: str) -> Optional[Gain]:
    return self.gains.get((module, level, measure))

  def levels(self, module: str) -> list[Level]:
    return sorted({lv for (m, lv, _) in self.gains if m == module}, key=_level_order)

  def flags(self, module: str) -> list[Gain]:
    return [g for (m, _, _), g in self.gains.items() if m == module and g.flagged]

  def main_measure(self) -> Optional[str]:
    return next((m for m in MAIN_MEASURES if m in self.measures), None)

  def figure_file(self, module: str) -> str:
    return f"{self.prefix}mechanism_{slug(module)}.png"


def build_study(folder: Folder, contrasts: Optional[dict[str, grids.Contrast]] = None,
                prefix: str = "") -> Study:
  """The gains of `contrasts` (default `grids.MODULE_CONTRASTS`) on the folder's runs."""
  contrasts = grids.MODULE_CONTRASTS if contrasts is None else contrasts
  index = index_runs(folder.runs)
  levels = sorted({lv for (_, lv) in index}, key=_level_order)
  gains: dict[tuple[str, Level, str], Gain] = {}
  for module, c in contrasts.items():
    t_set, c_set = setting_of(c.treatment), setting_of(c.control)
    for level in levels:
      t_runs, c_runs = index.get((t_set, level), []), index.get((c_set, level), [])
      if not t_runs or not c_runs:
        continue
      check = level != DEFAULT and level[1] == "placebo" and level[0] in c.claims
      for key, measure in MEASURES.items():
        t_vals = {r.key: v for r in t_runs if (v := measure.value(r.results)) is not None}
        c_vals = {r.key: v for r in c_runs if (v := measure.value(r.results)) is not None}
        pairs = sorted(set(t_vals) & set(c_vals))
        if pairs:
          used = [r for r in t_runs + c_runs if r.key in pairs]
          gains[(module, level, key)] = Gain(
              module, level, key, {k: t_vals[k] - c_vals[k] for k in pairs},
              float(np.mean([t_vals[k] for k in pairs])),
              float(np.mean([c_vals[k] for k in pairs])), check, not_converged(used))
  present = [m for m in contrasts if any(k[0] == m for k in gains)]
  dials = [d for d in DIAL_VALUES if any(lv[0] == d for (_, lv, _) in gains)]
  measures = [m for m in MEASURES if any(k[2] == m for k in gains)]
  return Study(folder.dataset, {m: contrasts[m] for m in present}, gains, dials, measures,
               prefix)


# ----------------------------------------------------------------------------- tables

def _cell(g: Optional[Gain]) -> str:
  if g is None:
    return "–"
  return g.text + (" **⚠ placebo flag**" if g.flagged else "")


def _pairs(study: Study, module: str, level: Level) -> str:
  n = {g.n for m in study.measures if (g := study.get(module, level, m)) is not None}
  return ", ".join(map(str, sorted(n))) or "–"


DEFAULT_TABLE = "Table G"


def module_table_name(module: str) -> str:
  return f"Table M: {module}"


def default_table_markdown(study: Study) -> list[str]:
  """Table G: every module's gain at the default data, one column per measure."""
  modules = [m for m in study.contrasts if study.levels(m) and DEFAULT in study.levels(m)]
  if not modules:
    return []
  head = ["Module", "pairs", *(MEASURES[m].short for m in study.measures)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for module in modules:
    cells = [module, _pairs(study, module, DEFAULT),
             *(_cell(study.get(module, DEFAULT, m)) for m in study.measures)]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Compared: " + "; ".join(f"{m}: {study.contrasts[m].description}"
                                         for m in modules) + "."]
  return lines


def module_table_markdown(study: Study, module: str) -> list[str]:
  """Table M: one module's gain at each dial's placebo, moderate (the default) and strong level;
  a placebo level of a dial it claims is marked "(check)"."""
  claims = study.contrasts[module].claims
  head = ["Dial", "Level", "pairs", *(MEASURES[m].short for m in study.measures)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for dial in study.dials:
    for level in dial_levels(dial):
      name = level[1]
      label = f"{name} ({DIAL_VALUES[dial][name]:g})"
      if name == "placebo" and dial in claims:
        label += " (check)"
      if level == DEFAULT:
        label += " = default"
      cells = [dial, label, _pairs(study, module, level),
               *(_cell(study.get(module, level, m)) for m in study.measures)]
      lines.append("| " + " | ".join(cells) + " |")
  c = study.contrasts[module]
  note = (f"{c.description}. Gain = treatment − control per seed pair; mean and 95 % t-based "
          "CI over the pairs. ")
  note += (f"Placebo check: {', '.join(claims)} (the mechanism it claims); a gain whose CI lies "
           "above 0 there is flagged **⚠ placebo flag** (a possible leak or overfit)."
           if claims else "It claims no dial's mechanism: no placebo check.")
  return lines + ["", note]


def gains_csv_rows(study: Study) -> list[dict]:
  out = []
  for (module, level, measure), g in sorted(
      study.gains.items(), key=lambda kv: (list(study.contrasts).index(kv[0][0]),
                                           _level_order(kv[0][1]),
                                           list(MEASURES).index(kv[0][2]))):
    dial, name = level
    out.append({"dataset": study.dataset, "module": module, "dial": dial, "level": name,
                "value": DIAL_VALUES[dial][name] if dial else "",
                "measure": measure, "n_pairs": g.n, "mean_gain": g.mean, "ci_lo": g.lo,
                "ci_hi": g.hi, "treatment_mean": g.treatment_mean,
                "control_mean": g.control_mean, "seeds": format_keys(g.diffs),
                "placebo_check": g.placebo_check, "flagged": g.flagged,
                "not_converged": " ".join(g.unconverged)})
  return out


GAINS_CSV_FIELDS = ("dataset", "module", "dial", "level", "value", "measure", "n_pairs",
                    "mean_gain", "ci_lo", "ci_hi", "treatment_mean", "control_mean", "seeds",
                    "placebo_check", "flagged", "not_converged")


# ----------------------------------------------------------------------------- the SBE's c

C_METRICS = ("auc", "true_interest_user_auc")     # #All observed clicks; per-user true interest


def sweep_c_metrics(run: RunResult, c_values: Sequence[float]) -> dict[str, dict[float, float]]:
  """Eq. (12)'s score for each c, from the run's saved y_m and y_s: #All observed-click AUC and
  (with true_like and user_id saved) the per-user pooled true-interest AUC."""
  def user_auc(c: float) -> Optional[float]:
    pred, score = c_scores(run, c)
    if "true_like" not in pred or "user_id" not in pred:
      return None
    return float(metrics_lib.user_pooled_auc(pred["true_like"], score, pred["user_id"]))
  out: dict[str, dict[float, float]] = {m: {} for m in C_METRICS}
  for c in map(float, c_values):
    out["auc"][c] = auc_at_c(run, c, "label")
    v = run.from_predictions(f"user_auc[true_like] at c={c!r}", lambda: user_auc(c))
    if v is not None:
      out["true_interest_user_auc"][c] = v
  return {m: v for m, v in out.items() if v}


def sbe_c_data(folder: Folder, c_values: Sequence[float]) -> list[dict]:
  """Rows {dataset, dial, level, metric, c, n_seeds, mean, ci_lo, ci_hi, default_c}: the c sweep
  of the paper's M-scan at every data level (dial "" = the default data)."""
  paper = setting_of({"model": MSCAN})
  rows = []
  for (setting, level), runs in sorted(index_runs(folder.runs).items(),
                                       key=lambda kv: _level_order(kv[0][1])):
    if setting != paper:
      continue
    per_seed: dict[RunKey, dict[str, dict[float, float]]] = {}
    for r in runs:
      cs = sorted({float(c) for c in c_values} | {float(r.results.get("c", 1.0))})
      try:
        per_seed[r.key] = sweep_c_metrics(r, cs)
      except ReportError:
        continue
    if not per_seed:
      continue
    default_c = float(runs[0].results.get("c", float("nan")))
    for metric in C_METRICS:
      by_c: dict[float, list[float]] = {}
      for d in per_seed.values():
        for c, v in d.get(metric, {}).items():
          if not math.isnan(v):
            by_c.setdefault(c, []).append(v)
      for c in sorted(by_c):
        mean, lo, hi = mean_ci(by_c[c])
        rows.append({"dataset": folder.dataset, "dial": level[0], "level": level[1],
                     "metric": metric, "c": c, "n_seeds": len(by_c[c]), "mean": mean,
                     "ci_lo": lo, "ci_hi": hi, "default_c": default_c})
  return rows


SBE_C_CSV_FIELDS = ("dataset", "dial", "level", "metric", "c", "n_seeds", "mean", "ci_lo",
                    "ci_hi", "default_c")


@dataclasses.dataclass
class CTradeoff:
  """At one data level: the c with the best mean per-user true-interest AUC, against the runs'
  own c, with the #All observed-click AUC at both."""
  level: Level
  best_c: float
  best_user: float
  default_c: float
  default_user: float
  best_auc: float
  default_auc: float


def c_tradeoffs(rows: Sequence[dict]) -> list[CTradeoff]:
  out = []
  levels = sorted({(r["dial"], r["level"]) for r in rows}, key=_level_order)
  for level in levels:
    sel = [r for r in rows if (r["dial"], r["level"]) == level]
    user = {r["c"]: r["mean"] for r in sel if r["metric"] == "true_interest_user_auc"}
    auc = {r["c"]: r["mean"] for r in sel if r["metric"] == "auc"}
    c0 = sel[0]["default_c"]
    if not user or c0 not in user:
      continue
    best = max(sorted(user), key=lambda c: user[c])
    out.append(CTradeoff(level, best, user[best], c0, user[c0], auc.get(best, float("nan")),
                         auc.get(c0, float("nan"))))
  return out


# ----------------------------------------------------------------------------- y_s and the bias

def variant_label(overrides: dict) -> str:
  """"M-scan (paper's form)", or "M-scan, use_saca=False"."""
  rest = {k: v for k, v in overrides.items() if k != "model"}
  if not rest:
    return f"{models.title(MSCAN)} (paper's form)"
  return (f"{models.title(MSCAN)}, "
          + ", ".join(f"{k.split('.')[-1]}={grids.format_value(v)}" for k, v in rest.items()))


def _variants() -> dict[frozenset, str]:
  return {setting_of({"model": MSCAN, **v}): variant_label(v) for v in grids.MECHANISM_VARIANTS}


def scenario_factor_points(folder: Folder) -> list[dict]:
  """One row per scenario and run of M-scan's variants holding `scenario_factor`: the mean
  sigmoid(y_s) (or sigmoid(y_e)) of the scenario against its true examination rate."""
  variants = _variants()
  rows = []
  for (setting, level), runs in sorted(index_runs(folder.runs).items(),
                                       key=lambda kv: _level_order(kv[0][1])):
    if setting not in variants:
      continue
    for r in sorted(runs, key=lambda r: r.key):
      sf = r.results.get("scenario_factor")
      if not sf:
        continue
      for s, f in sf.get("mean_factor", {}).items():
        t = sf.get("true_exam_rate", {}).get(s)
        if t is not None:
          rows.append({"dataset": folder.dataset, "variant": variants[setting], "dial": level[0],
                       "level": level[1], "seed": r.seed, "data_seed": r.data_seed,
                       "scenario": s, "mean_factor": float(f), "true_exam_rate": float(t),
                       "spearman": sf.get("spearman", float("nan"))})
  return rows


SCENARIO_FACTOR_CSV_FIELDS = ("dataset", "variant", "dial", "level", "seed", "data_seed",
                              "scenario", "mean_factor", "true_exam_rate", "spearman")


@dataclasses.dataclass
class SpearmanCell:
  variant: str
  level: Level
  values: dict[RunKey, float]     # runs with a defined correlation
  undefined: int                  # runs whose correlation is nan (a constant examination rate)

  def __post_init__(self):
    self.mean, lo, hi = mean_ci(list(self.values.values()))
    self.lo, self.hi = max(lo, -1.0), min(hi, 1.0)     # a correlation lies in [-1, 1]

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def text(self) -> str:
    if not self.n:
      return f"undefined ({self.undefined} runs)" if self.undefined else "–"
    s = f"{self.mean:.3f}" + (f", CI {self.lo:.3f}..{self.hi:.3f}" if self.n >= 2 else "")
    return s + f" (n={self.n})"


def spearman_cells(points: Sequence[dict]) -> dict[tuple[str, Level], SpearmanCell]:
  """Per variant and data level: the runs' Spearman correlation, mean and 95 % CI."""
  runs: dict[tuple[str, Level], dict[RunKey, float]] = {}
  for p in points:
    runs.setdefault((p["variant"], (p["dial"], p["level"])), {})[
        (p["seed"], p["data_seed"])] = p["spearman"]
  return {k: SpearmanCell(k[0], k[1], {key: v for key, v in vals.items() if not math.isnan(v)},
                          sum(math.isnan(v) for v in vals.values()))
          for k, vals in runs.items()}


SPEARMAN_TABLE = "Table S"


def spearman_markdown(cells: dict[tuple[str, Level], SpearmanCell]) -> list[str]:
  """Table S: rows the variants, columns the data levels present."""
  if not cells:
    return []
  variants = list(dict.fromkeys(v for v, _ in cells))
  levels = sorted({lv for _, lv in cells}, key=_level_order)
  head = ["Variant", *(level_label(lv) for lv in levels)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for v in variants:
    lines.append("| " + " | ".join([v, *(cells[(v, lv)].text if (v, lv) in cells else "–"
                                         for lv in levels)]) + " |")
  return lines + ["", "Spearman correlation over scenarios between the mean sigmoid(y_s) "
                  "(sigmoid(y_e) for the probability fusion) and the true examination rate, per "
                  "run; mean and 95 % t-based CI over runs, clipped to [-1, 1]. Undefined where "
                  "the examination rate is the same in every scenario (exposure_bias placebo)."]


def spearman_csv_rows(dataset: str, cells: dict[tuple[str, Level], SpearmanCell]) -> list[dict]:
  return [{"dataset": dataset, "variant": c.variant, "dial": c.level[0], "level": c.level[1],
           "n_runs": c.n, "undefined_runs": c.undefined, "mean": c.mean, "ci_lo": c.lo,
           "ci_hi": c.hi} for c in cells.values()]


SPEARMAN_CSV_FIELDS = ("dataset", "variant", "dial", "level", "n_runs", "undefined_runs", "mean",
                       "ci_lo", "ci_hi")
