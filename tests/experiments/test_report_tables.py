"""The rules of the report's tables, on hand-written results.json (no predictions): every scenario
shown, reference scorers and oracles beside the models, RelaImpr "–" below a reference AUC of
0.52, the `*` from the paired t-test over seed pairs (seed, data_seed), bold only with a lead
larger than the seed std, GAUC and the per-user true-interest AUC beside the pooled AUCs, and
titles from the model registry.

Six scenarios; three seed pairs (seed, data_seed) = (0, 0), (1, 0), (0, 1): the first an old run
with no "data_seed" in results.json, the last a run on data seed 1 with the same model seed as the
first. Per pair (in that order), AUC:

  row   Single             Mix    PLE                  M-scan               Popularity  Oracle
  #1    0.51               0.60   0.600 0.640 0.660    0.650 0.652 0.651    0.58        0.90
  #2    0.60               0.60   0.690 0.691 0.692    0.700 0.702 0.704    0.58        0.90
  #3-6  –                  0.60   0.60                 0.60                 0.58        0.90
  #All  –                  0.60   0.62                 0.63 0.64 0.65       0.58        0.90

GAUC (one number per run): Single 0.55 (of its scenario), Mix 0.58, PLE 0.59, M-scan 0.60, 0.61,
0.62, Popularity 0.56. Per-user true-interest AUC: Mix 0.57, M-scan 0.66 (the others' runs
predate it). Table 2: M-scan without the SBE 0.62 on #All.
"""

import json
import os

import pytest

from experiments import paper_results, report
from mscan_jax import models

SCENARIOS = [str(s) for s in range(1, 7)]
KEYS = [(0, 0), (1, 0), (0, 1)]
PLE_1 = (0.600, 0.640, 0.660)
MSCAN_1 = (0.650, 0.652, 0.651)
PLE_2 = (0.690, 0.691, 0.692)
MSCAN_2 = (0.700, 0.702, 0.704)


def _block(per: dict[str, float], all_: float) -> dict:
  return {"all": all_, "per_scenario": per}


def _write(root: str, model: str, key: tuple[int, int], results: dict, **overrides) -> None:
  seed, data_seed = key
  name = "-".join([model, *(f"{k}={v}" for k, v in overrides.items()), f"s{seed}d{data_seed}"])
  ov = {"model": model, "seed": seed, **overrides}
  if data_seed:
    ov["data.seed"] = data_seed
  if key != (0, 0):                  # (0, 0): an old run, results.json without data_seed
    results = {**results, "data_seed": data_seed}
  wd = os.path.join(root, "runs", name)
  os.makedirs(wd)
  with open(os.path.join(wd, "run.json"), "w") as f:
    json.dump({"name": name, "overrides": ov}, f)
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump({"model": model, "c": 1.0, **results}, f)


def _multi(root: str, model: str, key, per: dict[str, float], all_: float, **extra) -> None:
  block = _block(per, all_)
  _write(root, model, key, {"auc": block, "true_interest_auc": block, **extra})


def make_grid(root: str) -> None:
  with open(os.path.join(root, "grid.json"), "w") as f:
    json.dump({"dataset": "synthetic-six", "size": "tiny", "shared": {}, "grids": ["all"]}, f)
  flat = lambda v: {s: v for s in SCENARIOS}                      # noqa: E731
  for i, key in enumerate(KEYS):
    for s, auc in (("1", 0.51), ("2", 0.60)):
      _write(root, "single", key, {"auc": _block({s: auc}, auc), "gauc": 0.55},
             **{"single.scenario": int(s)})
    _multi(root, "mix", key, flat(0.60), 0.60, gauc=0.58, true_interest_user_auc=0.57)
    _multi(root, "ple", key, {**flat(0.60), "1": PLE_1[i], "2": PLE_2[i]}, 0.62, gauc=0.59)
    _multi(root, "mscan", key, {**flat(0.60), "1": MSCAN_1[i], "2": MSCAN_2[i]}, 0.63 + 0.01 * i,
           gauc=0.60 + 0.01 * i, true_interest_user_auc=0.66)
    _multi(root, "popularity", key, flat(0.58), 0.58, gauc=0.56)
    _multi(root, "oracle_like", key, flat(0.90), 0.90)
    _write(root, "mscan", key, {"auc": _block(flat(0.62), 0.62)}, **{"mscan.use_sbe": False})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("six"))
  make_grid(root)
  return report.load_folder(root)


@pytest.fixture(scope="module")
def table(folder):
  return report.build_table1(folder, "auc")


def test_every_scenario_is_a_row(table):
  assert table.rows == SCENARIOS + ["all"]
  for row in SCENARIOS[2:]:
    assert table.stats[(row, "single")].n == 0                    # Single: only where it ran
    assert table.stats[(row, "mscan")].mean == pytest.approx(0.60)
  lines = report.table1_markdown(table)
  rows = [l.split(" | ") for l in lines[2:9]]
  assert [r[0] for r in rows] == ["| #1", "| #2", "| #3", "| #4", "| #5", "| #6", "| #All"]
  assert all(r[1] == "–" for r in rows[2:])


def test_seed_pairs_identify_runs(table):
  """Model seed 0 on data seeds 0 and 1 are two runs; an old run without data_seed is seed 0."""
  assert sorted(table.stats[("all", "mscan")].values) == sorted(KEYS)
  assert table.stats[("all", "mscan")].mean == pytest.approx(0.64)
  assert table.tests["all"].keys == sorted(KEYS)


def test_reference_columns_are_shown_labelled_and_never_bold(table):
  assert table.models == ["single", "mix", "ple", "mscan"]
  assert table.references == ["popularity", "oracle_like"]
  assert table.stats[("3", "oracle_like")].mean == pytest.approx(0.90)
  assert "oracle_like" not in table.bold.values() and "oracle_like" not in table.best.values()
  assert all(s.baseline in table.models for s in table.tests.values())
  lines = report.table1_markdown(table)
  assert lines[0].endswith("| M-scan | Popularity [ref] | Oracle (like) [oracle] |")
  text = "\n".join(lines)
  assert ("Popularity [ref]: i (item bias only); Oracle (like) [oracle]: the recorded truth: "
          "true_prob") in text
  assert "M-scan: u, i, s + GRU(S_u) + SACA(H_u, S_u)" in text


def test_relaimpr_is_left_out_below_052(table):
  """#1: Single (the reference) at 0.51 < 0.52: "–" in every model's cell, and the reason."""
  assert not table.relaimpr_shown("1") and table.relaimpr_shown("2")
  assert table.relaimpr[("2", "mscan")] == pytest.approx(102.0)   # 0.202 / 0.1
  assert table.relaimpr[("all", "mscan")] == pytest.approx(40.0)  # 0.14 / 0.1
  lines = report.table1_markdown(table)
  row1 = lines[2].split(" | ")
  assert row1[1] == "0.5100 ± 0.0000"                             # the reference itself
  assert all(c.endswith("<br>–") for c in row1[2:5])             # Mix, PLE, M-scan
  assert lines[3].split(" | ")[4].endswith("<br>+102.00%")
  text = "\n".join(lines)
  assert "RelaImpr –: its reference is below 0.52 in #1 (Single 0.5100)" in text
  rows = report.tables.table1_csv_rows(table)
  assert {r["relaimpr_pct"] for r in rows if r["scenario"] == "1"} == {""}


def test_star_is_the_paired_ttest(table):
  """#2: M-scan ahead of PLE by 0.010, 0.011, 0.012: t = 19.1, p = 0.003: a star, although there
  are no predictions for DeLong's test (auxiliary, "–"). #1: ahead on the mean by 0.018 but
  differences 0.05, 0.012, -0.009: p = 0.42, no star. #All: 0.01, 0.02, 0.03: p = 0.074."""
  s2 = table.tests["2"]
  assert s2.baseline == "ple" and s2.ttest_p == pytest.approx(0.0027, abs=2e-4) and s2.star
  assert all(p != p for p in s2.delong_p)                         # nan: no predictions
  assert "no predictions.parquet" in s2.note
  s1 = table.tests["1"]
  assert s1.baseline == "ple" and s1.mean_diff > 0 and not s1.star
  assert s1.ttest_p == pytest.approx(0.42, abs=0.01)
  assert not table.tests["all"].star and not table.tests["3"].star   # #3: equal means
  lines = report.table1_markdown(table)
  assert lines[3].split(" | ")[4].startswith("**0.7020** ± 0.0020\\*")
  md = report.tables.significance_markdown([table])
  assert md[0].startswith("| Dataset | Metric | Scenario | Best baseline | M-scan − baseline | "
                          "seed pairs | paired t p | `*` | DeLong p per seed pair (aux.) |")


def test_bold_needs_a_lead_larger_than_the_seed_std(table):
  # #1: M-scan 0.651 ± 0.001 leads PLE 0.633 ± 0.031 by 0.018 < 0.031: no bold.
  assert table.best["1"] == "mscan" and "1" not in table.bold
  # #2: 0.702 ± 0.002 vs 0.691 ± 0.001: lead 0.011 > 0.002. #All: 0.64 ± 0.01 vs 0.62 ± 0.
  assert table.bold["2"] == "mscan" and table.bold["all"] == "mscan"
  # #3..#6: Mix, PLE, M-scan tie at 0.60: no bold.
  assert not any(r in table.bold for r in SCENARIOS[2:])
  row1 = report.table1_markdown(table)[2]
  assert "**" not in row1


def test_user_level_metrics_beside_the_pooled_ones(folder):
  gauc = report.build_table1(folder, "gauc")
  assert gauc.rows == ["1", "2", "all"]                           # Single's scenarios, #All
  assert gauc.stats[("1", "single")].mean == pytest.approx(0.55)
  assert gauc.stats[("1", "mscan")].n == 0
  assert gauc.stats[("all", "mscan")].mean == pytest.approx(0.61)
  assert gauc.stats[("all", "popularity")].mean == pytest.approx(0.56)
  assert gauc.tests["all"].delong_p == []                         # no pooled test for GAUC
  user = report.build_table1(folder, "true_interest_user_auc")
  assert user.rows == ["all"] and user.models == ["mix", "mscan"]
  assert user.stats[("all", "mscan")].mean == pytest.approx(0.66)
  assert list(report.METRICS) == ["auc", "gauc", "true_interest_auc", "true_interest_user_auc"]


def test_table2_has_reference_rows(folder):
  md = report.table2_markdown([folder], "auc")
  assert md[0] == "| Model | SACA | SBE | synthetic-six |"
  assert md[2].startswith("| M-scan | ✓ | ✓ | **0.6400** ± 0.0100 (n=3)")
  assert md[3].startswith("| M-scan | ✓ | × | 0.6200 ± 0.0000 (n=3)")
  assert md[6] == "| Popularity [ref] | – | – | 0.5800 ± 0.0000 (n=3) |"
  assert md[7] == "| Oracle (like) [oracle] | – | – | 0.9000 ± 0.0000 (n=3) |"
  text = "\n".join(md)
  assert "Sees: M-scan with SACA: u, i, s + GRU(S_u) + SACA(H_u, S_u)" in text
  assert "Popularity [ref]: i (item bias only)" in text


def test_titles_and_columns_come_from_the_registry(tmp_path):
  """A model registered for the test is a column titled by its spec, a reference beside it."""
  make = lambda title, sees, **kw: models.ModelSpec(                # noqa: E731
      factory=lambda config, schema: None, title=title, sees=sees, **kw)
  root = str(tmp_path)
  for key in KEYS[:2]:
    _multi(root, "mix", key, {"1": 0.6}, 0.6)
    _multi(root, "toy_net", key, {"1": 0.7}, 0.7)
    _multi(root, "coin", key, {"1": 0.5}, 0.5)
  with models.registered("toy_net", make("Toy net", "u only (a test model)", tables=("table1",))), \
       models.registered("coin", make("Coin flip", "nothing", kind="reference")):
    t = report.build_table1(report.load_folder(root), "auc")
    lines = report.table1_markdown(t)
  assert t.models == ["mix", "toy_net"] and t.references == ["coin"]
  assert lines[0] == "| Scenario | Mix | Toy net | Coin flip [ref] |"
  assert "Toy net: u only (a test model); Coin flip [ref]: nothing" in "\n".join(lines)
  # Unregistered again: its runs are in no table.
  t = report.build_table1(report.load_folder(root), "auc")
  assert t.models == ["mix"] and t.references == []


def test_paper_models_are_registered_table1_models():
  assert set(paper_results.models()) <= set(models.names(table="table1"))
  assert paper_results.models()[0] == "single" and paper_results.models()[-1] == "mscan"
  assert len(paper_results.models()) == 9                          # the paper's nine columns
