"""The report at convergence, on hand-made runs (no training): Table C (the settings each run used,
the share of converged runs, the median best epoch), the learning curves from metrics.jsonl, the
ladder from Mix to M-scan (`grids.LADDER`) with its paired steps, and the "not converged" rule:
a comparison with a run whose step budget ran out is printed "not converged" and not judged.

Seed pairs (0, 0), (1, 0), (2, 0); noise d = (0, 0.002, 0.004) per pair, shared by every row, so
a step's difference is the same in every pair where the rows below say so. Every measure of a run
(mean per-scenario AUC, #All, GAUC, per-user true-interest AUC) is one value v:

  Mix                   0.70 + d              lr 0.003 (config.json)
  Mix with GRU(S_u)     0.66 + d              step -0.04 in every pair: lowers
  + SACA over H_u       0.68 + d              step +0.02 in every pair: helps
  + SBE (M-scan)        0.68 + e + d          e = (0.01, -0.01, 0): CI -0.0248..+0.0248, no
                                              measurable effect

Each run validates once per epoch (10 steps) for 5 epochs; its validation curve rises to v at its
best epoch (1 + seed) and falls by 0.01 an epoch after it. Every run stopped early but, in
`unconverged=True` folders, M-scan (seed 1), which ran out of steps.
"""

import csv
import json
import os

import pytest

from experiments import grids, report
from experiments.report import convergence as conv
from experiments.report import ladder as ladder_lib
from experiments.report import mechanisms as mech
from experiments.report import summary, tables
from tests.experiments.test_report import assert_reproduced

KEYS = [(0, 0), (1, 0), (2, 0)]
D = (0.0, 0.002, 0.004)
BASE = {"Mix": 0.70, "Mix with GRU(S_u)": 0.66, "+ SACA over H_u": 0.68, "+ SBE (M-scan)": 0.68}
E = (0.01, -0.01, 0.0)
SPE, EPOCHS = 10, 5


def _write(root, overrides, value, best_epoch, stop_reason, lr=0.001, curve=True):
  name = grids.run_name(overrides)
  wd = os.path.join(root, "runs", name)
  os.makedirs(wd)
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump({"name": name, "overrides": overrides}, f)
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump({"model": overrides["model"], "train": {"learning_rate": lr,
                                                      "weight_decay": 0.0}}, f)
  block = {"all": value, "mean_per_scenario": value, "per_scenario": {"1": value}}
  res = {"auc": block, "gauc": value, "true_interest_user_auc": value, "c": 1.0,
         "select_metric": "mean_scenario_auc"}
  if stop_reason is not None:
    res.update(stop_reason=stop_reason, steps=EPOCHS * SPE, best_step=best_epoch * SPE,
               steps_per_epoch=SPE, best_epoch=float(best_epoch))
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump(res, f)
  if curve:
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
      for e in range(1, EPOCHS + 1):
        f.write(json.dumps({"step": e * SPE, "split": "train", "loss": 0.5}) + "\n")
        v = value - 0.02 * (best_epoch - e) if e <= best_epoch else value - 0.01 * (e - best_epoch)
        f.write(json.dumps({"step": e * SPE, "split": "valid", "mean_scenario_auc": v}) + "\n")


def make_ladder_grid(root, unconverged=False):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "grid.json"), "w") as f:
    json.dump({"dataset": "synthetic", "size": "tiny", "grids": ["table1", "table2"]}, f)
  for title, ov in grids.LADDER:
    for i, (seed, _) in enumerate(KEYS):
      v = BASE[title] + D[i] + (E[i] if title == "+ SBE (M-scan)" else 0.0)
      stop = "max_steps" if unconverged and title == "+ SBE (M-scan)" and seed == 1 else (
          "early_stopping")
      _write(root, {**ov, "seed": seed}, v, 1 + seed, stop,
             lr=0.003 if ov["model"] == "mix" else 0.001)
  # An older run (no stop reason) and an oracle (nothing to train).
  _write(root, {"model": "ple", "seed": 0}, 0.6, 1, None, curve=False)
  _write(root, {"model": "oracle_like", "seed": 0}, 0.9, 0, "not_trainable", curve=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  out = {}
  for flag in (False, True):
    root = str(tmp_path_factory.mktemp("unconverged" if flag else "converged"))
    make_ladder_grid(root, flag)
    out[flag] = report.load_folder(root)
  return out


def test_convergence_table(folders):
  rows = {r.key: r for r in conv.convergence_rows(folders[True])}
  assert list(rows) == ["mix", "ple", "mscan", "mscan-saca=False-sbe=False", "mscan-sbe=False",
                       "oracle_like"]                           # registry order, oracle last
  mix, mscan, ple, oracle = rows["mix"], rows["mscan"], rows["ple"], rows["oracle_like"]
  assert mix.settings()["train.learning_rate"] == [0.003]          # from config.json
  assert mix.converged == 3 and mix.share == 1.0
  assert (mscan.converged, mscan.budget, mscan.unknown) == (2, 1, 0)
  assert mscan.best_epochs() == [1.0, 2.0, 3.0]
  assert (ple.unknown, ple.converged, ple.budget) == (1, 0, 0)
  assert not oracle.trained
  lines = "\n".join(conv.convergence_markdown(list(rows.values())))
  assert "| Mix | 3 | 0.003 | 0 | 3/3 (100 %) | 2 (1–3) |" in lines
  assert "| M-scan | 3 | 0.001 | 0 | 2/3 (67 %) | 2 (1–3) |" in lines
  assert "| PLE | 1 | 0.001 | 0 | –, 1 unknown | – |" in lines
  assert "– (not trained)" in lines
  assert "| M-scan, use_sbe=False | 3 |" in lines


def test_report_says_how_many_runs_converged(folders, tmp_path):
  """report.md's opening line counts, over the trained runs, those early stopping ended, those
  that ran out of steps and the older ones without a stop reason (the oracle is left out)."""
  text = open(report.write_report([folders[True]], str(tmp_path))).read()
  assert ("**Training to convergence.** Of 13 trained runs, early stopping ended 11; 1 ran out "
          "of steps first (not converged); 1 record no stop reason") in text
  assert "## Tuning and convergence" in text and "![Learning curves](learning_curves.png)" in text
  assert os.path.getsize(tmp_path / "learning_curves.png") > 0
  runs = {r["name"]: r for r in csv.DictReader(open(tmp_path / "runs.csv"))}
  assert runs["mscan-s1"]["stop_reason"] == "max_steps" and runs["mscan-s1"]["best_epoch"] == "2"


def test_learning_curves(folders):
  curves, best = conv.curve_data(folders[False])
  mix = {r["epoch"]: r for r in curves if r["row"] == "mix"}
  assert sorted(mix) == [1.0, 2.0, 3.0, 4.0, 5.0]
  # Epoch 1: seed 0 at its best (0.70), seed 1 one epoch before (0.702 - 0.02), seed 2 two
  # before (0.704 - 0.04).
  assert mix[1.0]["n_runs"] == 3
  assert mix[1.0]["mean"] == pytest.approx((0.70 + 0.682 + 0.664) / 3)
  assert mix[1.0]["min"] == pytest.approx(0.664) and mix[1.0]["max"] == pytest.approx(0.70)
  assert {(p["seed"], p["epoch"]) for p in best if p["row"] == "mix"} == {(0, 1), (1, 2), (2, 3)}
  assert all(p["value"] == pytest.approx(0.70 + D[p["seed"]]) for p in best if p["row"] == "mix")
  assert not [r for r in curves if r["row"] in ("ple", "oracle_like")]   # no metrics.jsonl


def test_ladder_steps_and_summary(folders):
  lad = ladder_lib.build_ladder(folders[False])
  assert [t for t, _ in lad.rows] == [t for t, _ in grids.LADDER]
  m = "auc.mean_per_scenario"
  assert lad.stats[("Mix", m)].mean == pytest.approx(0.702)
  gru, saca, sbe = (lad.steps[(t, m)] for t in ("Mix with GRU(S_u)", "+ SACA over H_u",
                                                 "+ SBE (M-scan)"))
  assert gru.mean == pytest.approx(-0.04) and gru.lowers
  assert saca.mean == pytest.approx(0.02) and saca.helps
  assert sbe.mean == pytest.approx(0.0, abs=1e-12) and not sbe.helps and not sbe.lowers
  assert sbe.hi == pytest.approx(4.3027 * 0.01 / 3 ** 0.5, abs=1e-4)
  text = "\n".join(ladder_lib.ladder_markdown(lad))
  assert "| Mix | u, i, s + DIN(S_u) | 3 | **0.7020** (CI " in text        # 0.04 above GRU
  assert "without SACA(H_u, S_u): H_u unread" in text
  assert "step: -0.0400, CI -0.0400..-0.0400" in text
  para = summary.ladder_paragraph(lad)
  assert "Mix with GRU(S_u) lowers observed-click AUC, mean per scenario (-0.0400" in para
  assert "+ SACA over H_u helps observed-click AUC, mean per scenario (+0.0200" in para
  assert "+ SBE (M-scan) has no measurable effect on" in para


def test_not_converged_is_not_judged(folders):
  """M-scan seed 1 ran out of steps: the SBE's step and contrasts are printed "not converged" and
  get no verdict; Table 2's M-scan cell says so and is not bold; the summary does not judge."""
  folder = folders[True]
  lad = ladder_lib.build_ladder(folder)
  m = "auc.mean_per_scenario"
  step = lad.steps[("+ SBE (M-scan)", m)]
  assert step.unconverged == ("mscan-s1",) and not step.judged
  assert lad.steps[("+ SACA over H_u", m)].helps                  # its runs all converged
  text = "\n".join(ladder_lib.ladder_markdown(lad))
  assert "step: not converged: 1 of 6 runs" in text
  para = summary.ladder_paragraph(lad)
  sbe = para.split("+ SBE (M-scan)")[1]
  assert sbe.startswith(" is not judged on")
  assert "helps" not in sbe and "lowers" not in sbe and "no measurable" not in sbe
  # The module contrasts (Table G) and their summary paragraph.
  study = mech.build_study(folder)
  g = study.get("SBE", mech.DEFAULT, m)
  assert g.text.startswith("not converged") and not g.helps and not g.lowers
  sbe_para = summary.module_paragraph(study, "SBE")
  assert "is not judged on" in sbe_para
  assert "helps" not in sbe_para and "lowers" not in sbe_para
  assert study.get("SACA + SBE", mech.DEFAULT, m).text.startswith("not converged")  # M-scan
  # Table 2: the paper's M-scan cell has the run; it is flagged and never bold.
  t2 = report.build_table2(folder, "auc")
  assert t2[(True, True)].unconverged == ("mscan-s1",)
  md = "\n".join(report.table2_markdown([folder], "auc"))
  assert "(not converged: 1/3)" in md
  # Converged, the same numbers are judged.
  assert summary.ladder_paragraph(ladder_lib.build_ladder(folders[False])).count("not judged") == 0


def test_significance_star_needs_converged_runs(tmp_path):
  """M-scan far above Mix in every pair (a `*` when converged); with one M-scan run out of steps
  the `*` column says "not converged", and neither cell is bold."""
  def grid(root, stop):
    for i, (seed, _) in enumerate(KEYS):
      _write(root, {"model": "mscan", "seed": seed}, 0.80 + D[i], 1, stop if seed == 0 else
             "early_stopping")
      _write(root, {"model": "mix", "seed": seed}, 0.70 + D[i] / 2, 1, "early_stopping")
    return report.build_table1(report.load_folder(root), "auc")
  ok = grid(str(tmp_path / "a"), "early_stopping")
  assert ok.tests["all"].star and ok.bold["all"] == "mscan"
  bad = grid(str(tmp_path / "b"), "max_steps")
  assert not bad.tests["all"].star and bad.tests["all"].unconverged == ("mscan-s0",)
  assert "all" not in bad.bold
  assert "| not converged |" in "\n".join(tables.significance_markdown([bad]))


def test_copy_reproduces_curves_and_tables(folders, tmp_path):
  """The `--report_dir` copy has no metrics.jsonl: the curves come from its derived.json."""
  record = assert_reproduced(folders[True].path, tmp_path / "a", tmp_path / "b")
  assert not list((tmp_path / "a").glob("runs/*/metrics.jsonl"))
  assert record["mix-s0 | validation curve"]["value"][0] == [1.0, pytest.approx(0.70)]
  for name in ("learning_curves.csv", "convergence.csv", "ladder.csv"):
    assert len(list(csv.DictReader(open(tmp_path / "b" / name)))) > 0, name
  md = open(tmp_path / "b" / "report.md").read()
  assert "![Learning curves](learning_curves.png)" in md and "Table L" in md


def test_older_runs_without_stop_reason(tmp_path):
  """A folder of older runs (no stop_reason): the opening line says convergence is unknown, an
  oracle is not counted as trained, and nothing is marked "not converged"."""
  root = str(tmp_path)
  for seed in (0, 1):
    _write(root, {"model": "mix", "seed": seed}, 0.7, 1, None)
  _write(root, {"model": "oracle_like", "seed": 0}, 0.9, 0, None, curve=False)
  folder = report.load_folder(root)
  assert conv.training_line([folder])[1].startswith(
      "**Training to convergence.** None of the 2 trained runs records why it stopped")
  rows = {r.key: r for r in conv.convergence_rows(folder)}
  assert rows["mix"].unknown == 2 and not rows["oracle_like"].trained
