"""experiments.report on hand-made runs with predictions: the expected Table 1 (means, stds,
RelaImpr, bold, `*` and its tests on joined predictions), Table 2, the c sweep over saved
y_m / y_s (Figure 5), the alpha figure (Figure 6), the command line and the committable copy.
The rules of the tables on results alone (every scenario, references, RelaImpr "–", bold, `*`,
titles from the registry) are tested in test_report_tables.py.

The fake runs have 2 scenarios of 10 positives and 10 negatives each. A model's score is 1 for
the first `j` positives of a scenario and 0 for everything else, so its AUC there is
(10 j + 0.5 (10 - j) 10) / 100 = 0.5 + j / 20, and over both scenarios (20 x 20 pairs, every
negative at 0) 0.5 + (number of positives at 1) / 40. results.json comes from the library's
`evaluate_predictions` on these predictions; the expectations below are computed by hand.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from experiments import report
from mscan_jax.evaluation.metrics import evaluate_predictions

N = 10   # positives (and negatives) per scenario
SEEDS = (0, 1, 2)
KEYS = [(s, 0) for s in SEEDS]     # (seed, data_seed): one data seed
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = "/machine/that/ran/the/grid/data_cache"   # an absolute path in grid.json, config.json


def _scenario_block(scenario: int, j: int, offset: int) -> dict:
  label = np.r_[np.ones(N), np.zeros(N)]
  score = np.r_[np.ones(j), np.zeros(2 * N - j)]
  return {"sample_id": np.arange(offset, offset + 2 * N, dtype=np.int64),
          "user_id": np.arange(offset, offset + 2 * N, dtype=np.int64) % 7,
          "scenario": np.full(2 * N, scenario, np.int64), "label": label, "score": score}


def _write_run(root: str, name: str, overrides: dict, pred: dict | None,
               results: dict | None = None, init_from: str = "") -> None:
  """run.json, results.json (from `pred` if given), predictions.parquet and a config.json with
  absolute paths, as `experiments.run_grid` writes them (init_from: a sibling run's name)."""
  wd = os.path.join(root, "runs", name)
  os.makedirs(wd)
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump({"name": name, "overrides": overrides}, f)
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump({"model": overrides["model"], "data": {"cache_dir": CACHE, "path": ""},
               "train": {"init_from": os.path.join(os.path.abspath(root), "runs", init_from)
                         if init_from else ""}}, f)
  if pred is not None:
    pred = {**pred, "prob": np.full(len(pred["label"]), 0.5), "true_like": pred["label"]}
    pq.write_table(pa.table(pred), os.path.join(wd, "predictions.parquet"))
    results = evaluate_predictions(pred["label"], pred["score"], pred["prob"], pred["scenario"],
                                   pred["user_id"], true_like=pred["true_like"])
    results.update(model=overrides["model"], dataset="synthetic-tiny", seed=overrides["seed"],
                   c=1.0)
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump(results, f)


def _concat(*blocks: dict) -> dict:
  return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _mscan_pred(seed: int) -> dict:
  """Scenario 1 perfect (j = 10); scenario 2 j = seed + 1. Plus y_m, y_s for the c sweep:
  scenario 1: sigmoid(y_s) = 0.75, positives y_m = 2, negatives 0; scenario 2: sigmoid(y_s) =
  0.5, positives 3, negatives 1. A scenario-1 positive outranks a scenario-2 negative iff
  (2 - c) 0.75 > (1 - c) 0.5, i.e. c < 4; every other cross pair is ordered right for c >= 0,
  so #All AUC(c) = 1 for c < 4 and 1 - (10 x 10) / (20 x 20) = 0.75 for c > 4."""
  p = _concat(_scenario_block(1, N, 0), _scenario_block(2, seed + 1, 2 * N))
  pos1, pos2 = np.r_[np.ones(N), np.zeros(N)], np.r_[np.ones(N), np.zeros(N)]
  p["y_m"] = np.r_[2.0 * pos1, 1.0 + 2.0 * pos2].astype(np.float32)
  p["y_s"] = np.r_[np.full(2 * N, np.log(3.0)), np.zeros(2 * N)].astype(np.float32)
  return p


def make_fake_grid(root: str) -> None:
  """Writes the hand-made grid folder described in the module docstring into `root`."""
  with open(os.path.join(root, "grid.json"), "w") as f:
    json.dump({"dataset": "synthetic-tiny", "size": "tiny", "scenarios": [1, 2],
               "shared": {"data.cache_dir": CACHE, "mscan.mlp": [8, 4]}, "grids": ["all"]}, f)
  for s in SEEDS:
    _write_run(root, f"mscan-s{s}", {"model": "mscan", "seed": s}, _mscan_pred(s))
    # Mix: scenario 1 j = 2 (0.6), scenario 2 j = 8 (0.9); #All 0.5 + 10/40 = 0.75.
    _write_run(root, f"mix-s{s}", {"model": "mix", "seed": s},
               _concat(_scenario_block(1, 2, 0), _scenario_block(2, 8, 2 * N)))
    # PLE: scenario 1 j = 4 (0.7), scenario 2 j = 0 (0.5); #All 0.6.
    _write_run(root, f"ple-s{s}", {"model": "ple", "seed": s},
               _concat(_scenario_block(1, 4, 0), _scenario_block(2, 0, 2 * N)))
    # Single: scenario 1 j = 2 (0.6), scenario 2 j = 1 (0.55); their own scenario only. (Its
    # config.json names the Mix run as init_from, as a grid's finetune run does.)
    _write_run(root, f"single-scenario=1-s{s}", {"model": "single", "seed": s,
                                                 "single.scenario": 1}, _scenario_block(1, 2, 0),
               init_from=f"mix-s{s}")
    _write_run(root, f"single-scenario=2-s{s}", {"model": "single", "seed": s,
                                                 "single.scenario": 2},
               _scenario_block(2, 1, 2 * N))
    # A reference scorer: scenario 1 j = 1 (0.55), scenario 2 j = 10 (1.0, above every model).
    _write_run(root, f"popularity-s{s}", {"model": "popularity", "seed": s},
               _concat(_scenario_block(1, 1, 0), _scenario_block(2, 10, 2 * N)))
    # Table 2 and Figure 6: results only.
    for name, ov, auc in ((f"mscan-sbe=False-s{s}", {"mscan.use_sbe": False}, 0.70 + 0.01 * s),
                          (f"mscan-saca=False-s{s}", {"mscan.use_saca": False}, 0.65),
                          (f"mscan-alpha=0.3-s{s}", {"mscan.alpha": 0.3}, 0.60 + 0.02 * s)):
      _write_run(root, name, {"model": "mscan", "seed": s, **ov}, None,
                 {"auc": {"all": auc, "per_scenario": {"1": auc, "2": auc}}, "c": 1.0})
  # An unfinished run: listed, not used.
  os.makedirs(os.path.join(root, "runs", "m2m-s0"))
  with open(os.path.join(root, "runs", "m2m-s0", "run.json"), "w") as f:
    json.dump({"name": "m2m-s0", "overrides": {"model": "m2m", "seed": 0}}, f)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("grid"))
  make_fake_grid(root)
  return report.load_folder(root)


def test_table1_means_relaimpr_bold_and_star(folder):
  t = report.build_table1(folder, "auc")
  assert t.rows == ["1", "2", "all"]
  assert t.models == ["single", "mix", "ple", "mscan"]           # the registry's order
  assert t.references == ["popularity"]
  st = t.stats
  assert st[("1", "mscan")].mean == pytest.approx(1.0)
  assert st[("2", "mscan")].mean == pytest.approx(0.6)           # 0.55, 0.60, 0.65
  assert st[("2", "mscan")].std == pytest.approx(0.05)
  assert st[("all", "mscan")].mean == pytest.approx(0.8)         # 0.5 + (11, 12, 13) / 40
  assert sorted(st[("all", "mscan")].values) == KEYS
  assert st[("1", "single")].mean == pytest.approx(0.6)
  assert st[("2", "single")].mean == pytest.approx(0.55)
  assert st[("all", "single")].n == 0                            # no #All for Single
  assert st[("all", "mix")].mean == pytest.approx(0.75)
  assert st[("all", "ple")].mean == pytest.approx(0.6)
  assert st[("2", "popularity")].mean == pytest.approx(1.0)
  # RelaImpr = ((AUC - 0.5) / (AUC_ref - 0.5) - 1) * 100, ref Single per scenario, Mix on #All.
  assert t.relaimpr[("1", "ple")] == pytest.approx(100.0)        # 0.2 / 0.1
  assert t.relaimpr[("1", "mscan")] == pytest.approx(400.0)      # 0.5 / 0.1
  assert t.relaimpr[("2", "mscan")] == pytest.approx(100.0)      # 0.1 / 0.05
  assert t.relaimpr[("all", "mscan")] == pytest.approx(20.0)     # 0.3 / 0.25
  assert t.relaimpr[("all", "ple")] == pytest.approx(-60.0)      # 0.1 / 0.25
  assert ("1", "single") not in t.relaimpr and ("all", "mix") not in t.relaimpr
  assert ("2", "popularity") not in t.relaimpr                   # no RelaImpr for references
  # The reference (1.0 on scenario 2) is never the best model nor the best baseline.
  assert t.best == {"1": "mscan", "2": "mix", "all": "mscan"}
  # Bold: #1 1.0 ± 0 vs PLE 0.7 ± 0; #2 Mix 0.9 ± 0 vs M-scan 0.6 ± 0.05; #All 0.8 ± 0.025 vs
  # Mix 0.75 ± 0: every lead exceeds the larger std.
  assert t.bold == {"1": "mscan", "2": "mix", "all": "mscan"}
  # Scenario 1: M-scan 1.0 vs PLE 0.7 in every seed: paired t p = 0 (the star); DeLong p ~ 2e-4
  # per seed (auxiliary).
  s1 = t.tests["1"]
  assert s1.baseline == "ple" and s1.keys == KEYS
  assert s1.ttest_p == 0.0 and s1.star
  assert all(p < 1e-3 for p in s1.delong_p) and s1.fisher_p < 1e-6
  # Scenario 2: Mix is better than M-scan: no star.
  assert t.tests["2"].baseline == "mix" and not t.tests["2"].star
  # #All: M-scan ahead of Mix by 0.025, 0.05, 0.075: paired t = 3.46 with 2 df, p = 0.074.
  s_all = t.tests["all"]
  assert s_all.baseline == "mix" and not s_all.star
  assert s_all.mean_diff == pytest.approx(0.05)
  assert s_all.ttest_p == pytest.approx(0.0742, abs=1e-3)


def test_table1_markdown(folder):
  lines = report.table1_markdown(report.build_table1(folder, "auc"))
  assert lines[0] == "| Scenario | Single | Mix | PLE | M-scan | Popularity [ref] |"
  row1 = lines[2].split(" | ")
  assert row1[0] == "| #1"
  assert row1[1] == "0.6000 ± 0.0000"
  assert row1[4].startswith("**1.0000** ± 0.0000\\*<br>+400.00%")
  assert row1[5] == "0.5500 ± 0.0000 |"                        # no RelaImpr for references
  row2 = lines[3].split(" | ")
  assert row2[2].startswith("**0.9000**") and "\\*" not in row2[4]
  assert row2[5].startswith("1.0000 ±")                        # above every model, not bold
  all_row = lines[4].split(" | ")
  assert all_row[0] == "| #All" and all_row[1] == "–"
  text = "\n".join(lines)
  assert ("Sees (what each column's input holds): Single: u, i, s + DIN(S_u); target "
          "scenario only; Mix, PLE: u, i, s + DIN(S_u);") in text
  assert "Popularity [ref]: i (item bias only)" in text
  assert "**Bold**: the best model of the row, only where its lead" in text


def test_star_needs_the_paired_ttest(tmp_path):
  """Per-seed DeLong tests all far below 0.05 (2e-9, 5e-6, 2e-4; Fisher p 2e-15), but the seeds
  disagree in sign: M-scan (j = 10, 9, 2: AUC 1.0, 0.95, 0.6) against Mix (j = 2, 2, 8: 0.6, 0.6,
  0.9). Its mean is higher (0.85 vs 0.7), yet the paired t-test of the differences (0.4, 0.35,
  -0.3) gives p = 0.57: no star. Fisher's p alone would have called it significant."""
  root = str(tmp_path)
  for s, (j_m, j_b) in enumerate([(10, 2), (9, 2), (2, 8)]):
    _write_run(root, f"mscan-s{s}", {"model": "mscan", "seed": s}, _scenario_block(1, j_m, 0))
    _write_run(root, f"mix-s{s}", {"model": "mix", "seed": s}, _scenario_block(1, j_b, 0))
  t = report.build_table1(report.load_folder(root), "auc")
  s = t.tests["1"]
  assert s.baseline == "mix" and s.mean_diff == pytest.approx(0.15)
  assert max(s.delong_p) < 1e-3 and s.fisher_p < 1e-12
  assert s.ttest_p == pytest.approx(0.57, abs=0.01)
  assert not s.star
  assert "\\*" not in "\n".join(report.table1_markdown(t)[:4])


def test_equal_information_columns(tmp_path):
  """Runs of Table 1's models with an information switch (`grids.INFORMATION`) get columns of
  their own after their model's, titled and described by what they add; M-scan's own variant is
  never the best baseline, and a switch outside `grids.INFORMATION` is not a Table 1 column."""
  root = str(tmp_path)
  for s in SEEDS:
    _write_run(root, f"mscan-s{s}", {"model": "mscan", "seed": s}, _scenario_block(1, 4, 0))
    _write_run(root, f"mscan-ctx=True-s{s}", {"model": "mscan", "seed": s,
                                              "mscan.history_context": True},
               _scenario_block(1, 10, 0))
    _write_run(root, f"mix-s{s}", {"model": "mix", "seed": s}, _scenario_block(1, 2, 0))
    _write_run(root, f"mix-sees=cur+all-s{s}", {"model": "mix", "seed": s,
                                                "baseline.behaviours": "cur+all"},
               _scenario_block(1, 6, 0))
    _write_run(root, f"mix-sees=none-s{s}", {"model": "mix", "seed": s,
                                             "baseline.behaviours": "none"},
               _scenario_block(1, 8, 0))
  t = report.build_table1(report.load_folder(root), "auc")
  mix_h, mscan_ctx = "mix|baseline.behaviours=cur+all", "mscan|mscan.history_context=True"
  assert t.models == ["mix", mix_h, "mscan", mscan_ctx]
  assert t.stats[("1", mix_h)].mean == pytest.approx(0.8)        # 0.5 + 6 / 20
  assert t.stats[("1", mscan_ctx)].mean == pytest.approx(1.0)
  assert t.best["1"] == mscan_ctx
  assert t.tests["1"].baseline == mix_h                          # not M-scan's own variant
  lines = report.table1_markdown(t)
  assert lines[0] == "| Scenario | Mix | Mix + DIN(H_u) | M-scan | M-scan + click flags |"
  text = "\n".join(lines)
  assert "Mix + DIN(H_u): u, i, s + DIN(S_u) + DIN(H_u);" in text
  assert "M-scan + click flags: u, i, s + GRU(S_u) + SACA(H_u, S_u); H_u with click flags" in text
  assert "equal-information rows" in text


def test_report_says_how_many_runs_converged_per_model(tmp_path):
  """report.md counts the trained runs that early stopping ended (results.json `stop_reason`),
  those whose step budget ran out first and those that record no reason (older runs), and Table C
  gives the share and the median best epoch per model."""
  root = str(tmp_path / "grid")
  os.makedirs(root)
  with open(os.path.join(root, "grid.json"), "w") as f:
    json.dump({"dataset": "synthetic-tiny", "size": "tiny",
               "shared": {"train.num_epochs": 3}, "grids": ["table1"]}, f)
  auc = {"all": 0.6, "per_scenario": {"1": 0.6}}
  for s, (best, reason) in enumerate(((30, "max_steps"), (20, "early_stopping"),
                                      (30, "max_steps"))):
    _write_run(root, f"mix-s{s}", {"model": "mix", "seed": s}, None,
               {"auc": auc, "steps": 30, "best_step": best, "stop_reason": reason,
                "steps_per_epoch": 10, "best_epoch": best / 10})
    _write_run(root, f"mscan-s{s}", {"model": "mscan", "seed": s}, None,
               {"auc": auc, "steps": 30, "best_step": 10})
  text = open(report.make_report(root)).read()
  assert ("**Training to convergence.** Of 6 trained runs, early stopping ended 1; 2 ran out of "
          "steps first (not converged); 3 record no stop reason") in text
  assert "| Mix | 3 | 0.001 | 0.0001 | 1/3 (33 %) | 3 (2–3) |" in text
  assert "| M-scan | 3 | 0.001 | 0.0001 | –, 3 unknown | – |" in text    # no steps_per_epoch


def test_true_interest_table_and_unfinished(folder):
  t = report.build_table1(folder, "true_interest_auc")
  assert t is not None   # true_like == label here, so the same numbers
  assert t.stats[("all", "mscan")].mean == pytest.approx(0.8)
  assert folder.unfinished == ["m2m-s0"]


def test_table2_and_figures(folder):
  t2 = report.build_table2(folder, "auc")
  assert t2[(True, True)].mean == pytest.approx(0.8)
  assert t2[(True, False)].mean == pytest.approx(0.71)
  assert t2[(True, False)].std == pytest.approx(0.01)
  assert t2[(False, True)].mean == pytest.approx(0.65)
  assert t2[(False, False)].n == 0
  md = report.table2_markdown([folder], "auc")
  assert md[0] == "| Model | SACA | SBE | synthetic-tiny |"
  assert md[2].startswith("| M-scan | ✓ | ✓ | **0.8000** ± 0.0250 (n=3)")   # 0.09 ahead of 0.71
  assert md[6].startswith("| Popularity [ref] | – | – | 0.7750 ± 0.0000 (n=3)")
  fig6 = {(r["metric"], r["alpha"]): r for r in report.figure6_data(folder)}
  assert fig6[("auc", 0.1)]["mean"] == pytest.approx(0.8)      # the default M-scan runs
  assert fig6[("auc", 0.3)]["mean"] == pytest.approx(0.62)
  assert fig6[("auc", 0.3)]["min"] == pytest.approx(0.60)
  fig5 = {(r["metric"], r["c"]): r for r in report.figure5_data(folder, (0.0, 2.0, 5.0, 8.0))}
  assert fig5[("auc", 0.0)]["mean"] == pytest.approx(1.0)
  assert fig5[("auc", 2.0)]["mean"] == pytest.approx(1.0)
  assert fig5[("auc", 5.0)]["mean"] == pytest.approx(0.75)
  assert fig5[("auc", 8.0)]["mean"] == pytest.approx(0.75)
  assert fig5[("auc", 1.0)]["n_seeds"] == 3                     # the runs' own c is added


def test_write_report_files(folder, tmp_path):
  path = report.write_report([folder], str(tmp_path))
  md = open(path).read()
  for name in ("table1.csv", "significance.csv", "table2.csv", "figure5_c.csv",
               "figure6_alpha.csv", "runs.csv", "figure5_c.png", "figure6_alpha.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert "## Table 1" in md and "## Table 2" in md and "![Figure 5](figure5_c.png)" in md
  assert "true-interest AUC" in md and "m2m-s0" in md
  assert "### synthetic-tiny: GAUC" in md                      # evaluate_predictions has gauc
  assert "Fisher's method, which assumes they are, overstates significance" in md
  rows = list(csv.DictReader(open(tmp_path / "table1.csv")))
  star = [r for r in rows if r["star"] == "True"]
  assert {(r["metric"], r["scenario"], r["model"]) for r in star} == {
      ("auc", "1", "mscan"), ("true_interest_auc", "1", "mscan")}
  assert {r["kind"] for r in rows} == {"model", "reference"}
  t2 = list(csv.DictReader(open(tmp_path / "table2.csv")))
  assert len([r for r in t2 if r["metric"] == "auc" and r["model"] == "mscan"]) == 3
  runs = list(csv.DictReader(open(tmp_path / "runs.csv")))
  assert {r["data_seed"] for r in runs} == {"0"}


def test_paper_numbers_beside_ours(folder, tmp_path):
  """On the paper's dataset, the paper's row follows ours (its #All here)."""
  aliccp = report.Folder(folder.path, "aliccp", {**folder.info, "dataset": "aliccp"},
                         folder.runs, [])
  lines = report.table1_markdown(report.build_table1(aliccp, "auc"))
  paper_all = [l for l in lines if l.startswith("| #All paper")]
  assert len(paper_all) == 1
  cells = paper_all[0].split(" | ")
  assert cells[1] == "–" and cells[2] == "_0.6574_"            # Single has no #All; Mix
  assert cells[4].startswith("_0.6714\\*")                     # M-scan, starred in the paper
  assert cells[5] == "n/a |"                                   # a reference: not in the paper
  t2 = report.table2_markdown([aliccp], "auc")
  assert "aliccp (paper)" in t2[0] and "_0.6714_" in t2[2]
  assert t2[6].endswith("| n/a |")                             # Popularity: not in the paper


def test_label_mismatch_is_an_error(folder, tmp_path):
  a = next(r for r in folder.runs if r.name == "mscan-s0")
  b = next(r for r in folder.runs if r.name == "mix-s0")
  table = pq.read_table(os.path.join(b.workdir, "predictions.parquet"))
  table = table.set_column(table.column_names.index("label"), "label",
                           pa.array(1.0 - table.column("label").to_numpy()))
  pq.write_table(table, tmp_path / "predictions.parquet")
  bad = report.RunResult(b.name, b.dataset, b.overrides, b.results, str(tmp_path))
  with pytest.raises(report.ReportError, match="disagree on label of sample_id 0"):
    report.joined_scores(a, bad, "1", "label")


def _json_strings(x):
  if isinstance(x, dict):
    for v in x.values():
      yield from _json_strings(v)
  elif isinstance(x, list):
    for v in x:
      yield from _json_strings(v)
  elif isinstance(x, str):
    yield x


def test_cli_report_dir_is_committable(folder, tmp_path):
  """The real entry point, `python -m experiments.report --out=DIR --report_dir=OTHER`: OTHER gets
  the report, grid.json and each finished run's results.json and config.json, no predictions,
  and no absolute path anywhere (init_from relative to its run folder, other paths reduced)."""
  dest = tmp_path / "results"
  proc = subprocess.run([sys.executable, "-m", "experiments.report", f"--out={folder.path}",
                         f"--report_dir={dest}"], capture_output=True, text=True, cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr
  assert (dest / "report.md").exists() and (dest / "grid.json").exists()
  assert (dest / "runs" / "mscan-s0" / "results.json").exists()
  assert not (dest / "runs" / "mscan-s0" / "predictions.parquet").exists()
  assert not (dest / "runs" / "m2m-s0").exists()                 # unfinished: not copied
  config = json.load(open(dest / "runs" / "single-scenario=1-s0" / "config.json"))
  assert config["train"]["init_from"] == os.path.join("..", "mix-s0")
  assert config["data"]["cache_dir"] == "data_cache"
  assert json.load(open(dest / "grid.json"))["shared"]["data.cache_dir"] == "data_cache"
  n_json = 0
  for base, _, files in os.walk(dest):
    for name in files:
      path = os.path.join(base, name)
      if name.endswith(".json"):
        n_json += 1
        bad = [s for s in _json_strings(json.load(open(path))) if s.startswith("/")]
        assert not bad, (path, bad)
      if name.endswith((".json", ".md", ".csv")):
        text = open(path).read()
        for absolute in (os.path.abspath(folder.path), str(tmp_path), CACHE):
          assert absolute not in text, (path, absolute)
  assert n_json == 2 + 3 * len(folder.runs)          # grid.json, derived.json; 3 per run


def assert_reproduced(grid_dir, copy_dir, again_dir, c_values="0,4"):
  """`--report_dir=copy_dir` from the grid, then a report from that copy alone (no predictions:
  the c sweeps and DeLong p-values come from its derived.json) into `again_dir`: the same
  report.md but the line naming its source (and the list of unfinished runs, which are not
  copied), and the same CSVs and record."""
  assert report.main([f"--out={grid_dir}", f"--report_dir={copy_dir}",
                      f"--c_values={c_values}"]) == 0
  assert not list(copy_dir.glob("runs/*/predictions.parquet"))
  assert report.main([f"--out={copy_dir}", f"--report_dir={again_dir}",
                      f"--c_values={c_values}"]) == 0
  first, again = (open(d / "report.md").read().splitlines() for d in (copy_dir, again_dir))
  at = [i for i, line in enumerate(first) if line.startswith("Unfinished runs (not used)")]
  if at:                                     # unfinished runs are not copied: the copy has none
    del first[at[0] - 1:at[0] + 1]
  assert len(first) == len(again)
  differ = [(a, b) for a, b in zip(first, again) if a != b]
  assert len(differ) == 1 and differ[0][0].startswith("Generated by"), differ[:3]
  names = sorted(p.name for p in copy_dir.iterdir() if p.suffix in (".csv", ".json"))
  assert "derived.json" in names
  for name in names:
    assert (copy_dir / name).read_bytes() == (again_dir / name).read_bytes(), name
  return json.load(open(copy_dir / "derived.json"))


def test_report_from_the_committed_copy_reproduces_it(folder, tmp_path):
  record = assert_reproduced(folder.path, tmp_path / "a", tmp_path / "b")
  assert any("delong" in k for k in record) and any("at c=4.0" in k for k in record)
  fig5 = list(csv.DictReader(open(tmp_path / "b" / "figure5_c.csv")))
  assert {float(r["c"]) for r in fig5} == {0.0, 1.0, 4.0}
  # Without the record the copy has nothing to sweep c over: Figure 5 comes from the record.
  os.remove(tmp_path / "a" / "derived.json")
  assert report.main([f"--out={tmp_path / 'a'}", f"--report_dir={tmp_path / 'c'}",
                      "--c_values=0,4"]) == 0
  assert not list(csv.DictReader(open(tmp_path / "c" / "figure5_c.csv")))


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
  missing = subprocess.run([sys.executable, "-m", "experiments.report",
                            f"--out={tmp_path / 'nowhere'}"], capture_output=True, text=True,
                           cwd=REPO_ROOT)
  assert missing.returncode == 2
  assert missing.stderr.startswith("error: ") and "runs does not exist" in missing.stderr
  assert "Traceback" not in missing.stderr
  bad_flag = subprocess.run([sys.executable, "-m", "experiments.report", f"--out={tmp_path}",
                             "--no_such_flag=1"], capture_output=True, text=True, cwd=REPO_ROOT)
  assert bad_flag.returncode == 2, bad_flag.stderr
  assert bad_flag.stderr.strip().splitlines() == ["error: Unknown command line flag 'no_such_flag'"]


def test_main_in_process(folder, tmp_path, capsys):
  """`report.main(argv)`: the command line in-process, flags parsed into a fresh set each call."""
  assert report.main([f"--out={folder.path}", f"--report_dir={tmp_path / 'a'}",
                      "--c_values=0,4"]) == 0
  rows = list(csv.DictReader(open(tmp_path / "a" / "figure5_c.csv")))
  assert {float(r["c"]) for r in rows} == {0.0, 1.0, 4.0}            # 1.0: the runs' own c
  assert report.main([f"--out={folder.path}", f"--report_dir={tmp_path / 'b'}"]) == 0
  rows = list(csv.DictReader(open(tmp_path / "b" / "figure5_c.csv")))
  assert len({r["c"] for r in rows}) == 10                            # the default c values
  capsys.readouterr()
  for argv, message in (([], "--out=DIR (a grid folder) is required"),
                        ([f"--out={folder.path}", "--c_values=1,x"], "not a list of numbers"),
                        ([f"--out={folder.path}", "stray"], "unexpected arguments: stray"),
                        (["--outt=x"], "Unknown command line flag 'outt'")):
    assert report.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_no_finished_run_is_a_user_error(tmp_path):
  os.makedirs(tmp_path / "runs" / "mix-s0")
  with open(tmp_path / "runs" / "mix-s0" / "run.json", "w") as f:
    json.dump({"name": "mix-s0", "overrides": {"model": "mix", "seed": 0}}, f)
  with pytest.raises(report.ReportError, match="no finished run .1 unfinished"):
    report.make_report(str(tmp_path))


def test_portable_paths():
  grid = "/g/grid"
  assert report.portable({"a": ["/g/grid/runs/mix-s0", "/data/built", "rel/x", 3]},
                         grid_dir=grid, base="/g/grid/runs/ft-s0") == {
      "a": ["../mix-s0", "built", "rel/x", 3]}
  assert report.portable("/g/gridother/x", grid_dir=grid, base=grid) == "x"   # not inside
