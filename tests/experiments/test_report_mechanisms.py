"""The report's mechanism study on hand-made runs (no training): the paired gains and their t-based
confidence intervals, the placebo flag, the summary sentences quoting the tables' cells, the
dose-response figure, the SBE's c trade-off per level and the Spearman table; and the table of
contrasts (`grids.MODULE_CONTRASTS`) against the grid that trains them.

Three seed pairs (seed, data_seed) = (0, 0), (1, 0), (0, 1); data levels: the default preset,
transfer placebo and strong, exposure_bias placebo. Per seed pair i, every measure of

  M-scan without SACA    0.70
  M-scan (paper's form)  0.70 + G[level][i]
  M-scan without SBE     0.70 + G[level][i] - S[level][i]

so SACA's gain is G and the SBE's is S. G on the true-interest measures: (0.01, 0.02, 0.03) at the
default (mean 0.02, CI 0.02 ± t(0.975, 2) 0.01 / √3 = -0.0048..+0.0448: no measurable effect),
(0.010, 0.012, 0.014) at every other level (0.012 ± 4.3027 x 0.002 / √3 = +0.0070..+0.0170:
helps; at transfer placebo, a dial SACA claims, that is flagged; at exposure_bias placebo, which it
does not claim, it is not). G on the observed-click measures: (-0.010, -0.012, -0.014) everywhere
(lowers). S: (0.010, 0.012, 0.014) on the true-interest measures at the default, 0 elsewhere.
"""

import csv
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from experiments import grids, report
from experiments.report import mechanisms as mech
from experiments.report import summary
from mscan_jax.data import datasets
from mscan_jax.evaluation import metrics as metrics_lib

KEYS = [(0, 0), (1, 0), (0, 1)]
SMALL = (0.010, 0.012, 0.014)
LEVELS = {"default": {}, "transfer placebo": {"data.synthetic.transfer": 0.0},
          "transfer strong": {"data.synthetic.transfer": 0.9},
          "exposure placebo": {"data.synthetic.exposure_bias": 0.0}}
G_TRUE = {"default": (0.01, 0.02, 0.03), "transfer placebo": SMALL, "transfer strong": SMALL,
          "exposure placebo": SMALL}
G_OBS = (-0.010, -0.012, -0.014)
S_TRUE = {"default": SMALL}
EXAM = {"1": 0.6, "2": 0.5, "3": 0.4}
FACTORS = [(0.8, 0.7, 0.6), (0.8, 0.6, 0.7), (0.8, 0.7, 0.6)]   # Spearman 1.0, 0.5, 1.0


def _results(true: float, observed: float, factor=None, exam=EXAM) -> dict:
  block = lambda v: {"all": v, "mean_per_scenario": v, "per_scenario": {"1": v, "2": v}}  # noqa
  out = {"auc": block(observed), "gauc": observed, "true_interest_auc": block(true),
         "true_interest_gauc": true, "true_interest_user_auc": true, "c": 1.0}
  if factor is not None:
    mean_f = dict(zip(exam, factor))
    out["scenario_factor"] = {"mean_factor": mean_f, "true_exam_rate": exam,
                              "spearman": metrics_lib.spearman(list(mean_f.values()),
                                                               list(exam.values()))}
  return out


def _predictions() -> dict:
  """Two scenarios of 10 positives, 10 negatives; scenario 1: sigmoid(y_s) = 0.75, y_m 2 for
  positives, 0 for negatives; scenario 2: sigmoid(y_s) = 0.5, y_m 3 and 1. Eq. (12) orders a
  scenario-1 positive above a scenario-2 negative iff (2 - c) 0.75 > (1 - c) 0.5, i.e. c < 4:
  #All AUC and each user's pooled AUC (two users, 5 of each kind per scenario) are 1 for c < 4 and
  1 - 25 / 100 = 0.75 for c > 4."""
  label = np.tile(np.r_[np.ones(10), np.zeros(10)], 2)
  y_m = np.r_[2.0 * label[:20], 1.0 + 2.0 * label[20:]].astype(np.float32)
  y_s = np.r_[np.full(20, np.log(3.0)), np.zeros(20)].astype(np.float32)
  return {"sample_id": np.arange(40), "user_id": np.arange(40) % 2,
          "scenario": np.repeat([1, 2], 20), "label": label, "true_like": label,
          "score": y_m, "y_m": y_m, "y_s": y_s}


def _write(root: str, model: str, key, level: str, results: dict, pred=None, **switches) -> None:
  seed, data_seed = key
  ov = {"model": model, "seed": seed, **switches, **LEVELS[level]}
  if data_seed:
    ov["data.seed"] = data_seed
  name = grids.run_name(ov) + f"-d{data_seed}"
  wd = os.path.join(root, "runs", name)
  os.makedirs(wd)
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump({"name": name, "overrides": ov}, f)
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump({"model": model, "data_seed": data_seed, **results}, f)
  if pred is not None:
    pq.write_table(pa.table(pred), os.path.join(wd, "predictions.parquet"))


def make_mechanism_grid(root: str, levels=tuple(LEVELS)) -> None:
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "grid.json"), "w") as f:
    json.dump({"dataset": "synthetic", "size": "tiny", "grids": ["mechanisms"]}, f)
  pred = _predictions()
  for level in levels:
    exam = {s: 0.5 for s in EXAM} if level == "exposure placebo" else EXAM
    for i, key in enumerate(KEYS):
      g, s = G_TRUE[level][i], S_TRUE.get(level, (0, 0, 0))[i]
      _write(root, "mscan", key, level, _results(0.70 + g, 0.70 + G_OBS[i], FACTORS[i], exam),
             pred)
      _write(root, "mscan", key, level, _results(0.70, 0.70, FACTORS[i], exam),
             **{"mscan.use_saca": False})
      _write(root, "mscan", key, level, _results(0.70 + g - s, 0.70 + G_OBS[i]),
             **{"mscan.use_sbe": False})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("mech"))
  make_mechanism_grid(root)
  return report.load_folder(root)


@pytest.fixture(scope="module")
def study(folder):
  return mech.build_study(folder)


TI = "true_interest_auc.mean_per_scenario"
TRANSFER_PLACEBO, EXPOSURE_PLACEBO = ("transfer", "placebo"), ("exposure_bias", "placebo")


def test_confidence_interval_by_hand():
  t = 4.302652729911275                                     # t(0.975, 2 degrees of freedom)
  mean, lo, hi = mech.mean_ci([0.010, 0.012, 0.014])
  assert mean == pytest.approx(0.012)
  assert lo == pytest.approx(0.012 - t * 0.002 / math.sqrt(3))   # 0.0070318
  assert hi == pytest.approx(0.0169682, abs=1e-7)
  mean, lo, hi = mech.mean_ci([0.01, 0.02, 0.03])
  assert (lo, hi) == pytest.approx((-0.0048414, 0.0448414), abs=1e-7)
  assert math.isnan(mech.mean_ci([0.5])[1])                 # one pair: no interval
  assert mech.fmt_interval(0.012, 0.0070318, 0.0169682, 3) == "+0.0120, CI +0.0070..+0.0170"


def test_gains_are_paired_by_seed_pair(study):
  assert list(study.contrasts) == ["SACA", "SBE"]          # no run without both
  assert study.dials == ["exposure_bias", "transfer"]
  g = study.get("SACA", mech.DEFAULT, TI)
  assert sorted(g.diffs) == sorted(KEYS)
  assert [g.diffs[k] for k in KEYS] == pytest.approx([0.01, 0.02, 0.03])
  assert g.treatment_mean == pytest.approx(0.72) and g.control_mean == pytest.approx(0.70)
  assert not g.helps and not g.lowers                       # CI -0.0048..+0.0448
  strong = study.get("SACA", ("transfer", "strong"), TI)
  assert strong.helps and strong.text == "+0.0120, CI +0.0070..+0.0170"
  assert study.get("SACA", mech.DEFAULT, "auc.mean_per_scenario").lowers
  sbe = study.get("SBE", mech.DEFAULT, TI)
  assert sbe.helps and sbe.mean == pytest.approx(0.012)
  assert study.get("SBE", TRANSFER_PLACEBO, TI).mean == pytest.approx(0.0)


def test_placebo_gain_is_flagged(study):
  """SACA claims transfer: its gain there at placebo is flagged; it does not claim
  exposure_bias: the same gain at that placebo is not."""
  at_transfer = study.get("SACA", TRANSFER_PLACEBO, TI)
  assert at_transfer.placebo_check and at_transfer.flagged
  at_exposure = study.get("SACA", EXPOSURE_PLACEBO, TI)
  assert at_exposure.helps and not at_exposure.placebo_check and not at_exposure.flagged
  assert not study.get("SACA", TRANSFER_PLACEBO, "auc.mean_per_scenario").flagged   # lowers
  assert {(g.level, g.measure) for g in study.flags("SACA")} == {
      (TRANSFER_PLACEBO, TI), (TRANSFER_PLACEBO, "true_interest_user_auc")}
  assert study.flags("SBE") == []                           # a gain of 0 at exposure placebo
  table = mech.module_table_markdown(study, "SACA")
  row = next(l for l in table if l.startswith("| transfer | placebo (0) (check)"))
  assert row.count("**⚠ placebo flag**") == 2
  row = next(l for l in table if l.startswith("| exposure_bias | placebo (0) |"))
  assert "⚠" not in row                                     # not a dial SACA claims
  text = summary.module_paragraph(study, "SACA")
  assert ("Placebo check FLAGGED, a possible leak or overfit: at transfer placebo (0), where the "
          "mechanism it claims is off, it helps true-interest AUC, mean per scenario "
          "(+0.0120, CI +0.0070..+0.0170), per-user pooled true-interest AUC "
          "(+0.0120, CI +0.0070..+0.0170) [Table M: SACA].") in text
  assert "Not checked (no runs at their placebo level): scenario_interest." in text
  assert "Placebo check passed: at the placebo level of exposure_bias no gain's CI lies above 0 " \
         "[Table M: SBE]." in summary.module_paragraph(study, "SBE")


def _cell(lines, first, column):
  head = [c.strip() for c in lines[0].strip("|").split("|")]
  row = next(l for l in lines if l.startswith(f"| {first} |"))
  return [c.strip() for c in row.strip("|").split("|")][head.index(column)]


def test_summary_quotes_the_table(study):
  table = mech.default_table_markdown(study)
  saca_ti = _cell(table, "SACA", "true-interest AUC (mean per scen.)")
  saca_auc = _cell(table, "SACA", "AUC (mean per scen.)")
  sbe_ti = _cell(table, "SBE", "true-interest AUC (mean per scen.)")
  assert saca_ti == "+0.0200, CI -0.0048..+0.0448"
  text = summary.module_paragraph(study, "SACA")
  assert (f"At the default data it has no measurable effect on true-interest AUC, mean per "
          f"scenario ({saca_ti}), per-user pooled true-interest AUC ({saca_ti}) [Table G].") in text
  assert (f"In observed clicks (what it costs) it lowers observed-click AUC, mean per scenario "
          f"({saca_auc}), observed-click AUC #All") in text
  sbe = summary.module_paragraph(study, "SBE")
  assert f"it helps true-interest AUC, mean per scenario ({sbe_ti})" in sbe
  strong = _cell(mech.module_table_markdown(study, "SACA"), "transfer",
                 "true-interest AUC (mean per scen.)")   # the first transfer row: placebo
  assert strong.startswith("+0.0120, CI +0.0070..+0.0170")
  assert ("Against the dials, on true-interest AUC, mean per scenario, it helps at "
          "exposure_bias placebo (0) (+0.0120, CI +0.0070..+0.0170), transfer placebo (0) "
          "(+0.0120, CI +0.0070..+0.0170), transfer strong (0.9) (+0.0120, CI +0.0070..+0.0170) "
          "[Table M: SACA, Figure `mechanism_saca.png`].") in text


def test_c_tradeoff_per_level(folder):
  rows = mech.sbe_c_data(folder, (0.0, 2.0, 5.0))
  got = {(r["dial"], r["level"], r["metric"], r["c"]): r["mean"] for r in rows}
  for level in (("", "moderate"), ("transfer", "strong"), ("exposure_bias", "placebo")):
    for metric in ("auc", "true_interest_user_auc"):
      assert got[(*level, metric, 2.0)] == pytest.approx(1.0)
      assert got[(*level, metric, 5.0)] == pytest.approx(0.75)
      assert got[(*level, metric, 1.0)] == pytest.approx(1.0)      # the runs' own c
  t = {x.level: x for x in mech.c_tradeoffs(rows)}[("exposure_bias", "placebo")]
  assert (t.best_c, t.best_user, t.default_c, t.default_user) == (0.0, 1.0, 1.0, 1.0)


def test_spearman_table(folder):
  points = mech.scenario_factor_points(folder)
  assert len(points) == 4 * 2 * 3 * 3                       # levels x variants x runs x scenarios
  cells = mech.spearman_cells(points)
  paper = cells[("M-scan (paper's form)", mech.DEFAULT)]
  assert [paper.values[k] for k in KEYS] == pytest.approx([1.0, 0.5, 1.0])
  # mean 0.8333, sd 0.2887: 0.8333 ± 4.3027 x 0.2887 / √3 = 0.116..1.550
  assert paper.text == "0.833, CI 0.116..1.000 (n=3)"             # clipped to [-1, 1]
  placebo = cells[("M-scan, use_saca=False", EXPOSURE_PLACEBO)]
  assert placebo.n == 0 and placebo.undefined == 3 and placebo.text == "undefined (3 runs)"
  lines = mech.spearman_markdown(cells)
  assert lines[0].startswith("| Variant | default (every dial moderate) | exposure_bias placebo")
  assert lines[2].startswith("| M-scan (paper's form) | 0.833, CI 0.116..1.000 (n=3) |")


def test_report_writes_the_section_and_figures(folder, tmp_path):
  path = report.write_report([folder], str(tmp_path), c_values=(0.0, 5.0))
  md = open(path).read()
  for name in ("mechanism_saca.png", "mechanism_sbe.png",
               "mechanism_sbe_c.png", "mechanism_scenario_factor.png", "module_gains.csv",
               "mechanism_sbe_c.csv", "scenario_factor.csv", "scenario_factor_spearman.csv"):
    assert os.path.getsize(tmp_path / name) > 0, name
  summary_at = md.index("## Summary: what each module buys")
  assert summary_at < md.index("## Table 1") < md.index("## What each module buys, measured")
  assert "![SACA](mechanism_saca.png)" in md and "### Table M: SACA" in md
  assert "Placebo check FLAGGED" in md[summary_at:md.index("## Table 1")]
  rows = list(csv.DictReader(open(tmp_path / "module_gains.csv")))
  flagged = {(r["module"], r["dial"], r["measure"]) for r in rows if r["flagged"] == "True"}
  assert flagged == {("SACA", "transfer", TI), ("SACA", "transfer", "true_interest_user_auc")}


def test_report_from_the_committed_copy_reproduces_it(folder, tmp_path):
  """The SBE's c trade-off per dial level is computed from predictions; a report made from the
  --report_dir copy (no predictions) reads it from the copy's record and gives the same report."""
  from test_report import assert_reproduced
  record = assert_reproduced(folder.path, tmp_path / "a", tmp_path / "b", c_values="0,5")
  assert any(k.startswith("mscan-") and "user_auc[true_like] at c=5.0" in k for k in record)
  rows = list(csv.DictReader(open(tmp_path / "b" / "mechanism_sbe_c.csv")))
  assert {r["dial"] for r in rows} >= {"transfer", "exposure_bias"}


def test_table_grids_only_summarise_table2_at_default(tmp_path):
  """No dial level: the paragraphs cover SACA and the SBE at the default data, no Table M and no
  dose-response figure, and say the placebo check was not made."""
  make_mechanism_grid(str(tmp_path / "grid"), levels=("default",))
  path = report.write_report([report.load_folder(str(tmp_path / "grid"))], str(tmp_path / "out"))
  md = open(path).read()
  assert "holds no run at a moved dial level" in md
  assert "**SACA**: M-scan against M-scan without SACA" in md
  assert "Placebo check: not made (no runs at a dial's placebo level" in md
  assert "Table M:" not in md and not os.path.exists(tmp_path / "out" / "mechanism_saca.png")
  assert "### Table G: gains at the default data" in md


def test_module_contrasts_are_trained_by_the_mechanisms_grid():
  runs = grids.build("mechanisms", seeds=[0], data_seeds=[0], baselines=("mix", "ple"))
  trained = {mech.setting_of(r.overrides) for r in runs}
  contrasts = grids.module_contrasts(["mix", "ple"])
  for name, c in contrasts.items():
    assert mech.setting_of(c.treatment) in trained, name
    assert mech.setting_of(c.control) in trained, name
    assert set(c.claims) <= set(datasets.dials("synthetic"))
  mscan_sides = {mech.setting_of(side) for c in contrasts.values()
                 for side in (c.treatment, c.control)}
  for v in grids.MECHANISM_VARIANTS:                        # every variant is compared
    assert mech.setting_of({"model": "mscan", **v}) in mscan_sides, v
  assert contrasts["H_u with context for PLE"].treatment == {
      "model": "ple", "baseline.behaviours": "cur+all+context"}
  assert set(contrasts) <= set(grids.MODULE_CONTRASTS)
