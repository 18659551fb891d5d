"""Turns the finished runs of `experiments.run_grid` into the paper's tables and figures (§4).

    python -m experiments.report --out=DIR [--also=DIR2,DIR3] [--report_dir=DIR]

(the command line is `experiments/report/__main__.py`; `main(argv) -> exit code` runs it
in-process). One module per concern:

  loading   grid folders, their finished runs, per-seed values (`Stat`), joins of predictions
  tables    Table 1, its significance tests, Table 2: the tables as data, markdown and CSV rows
  figures   Figures 5 (c) and 6 (alpha), and the mechanism study's figures: data and plots
  mechanisms  what each module buys: the contrasts of `grids.MODULE_CONTRASTS` paired by seed
            pair at each dial level (mean gain, 95 % t-based CI, placebo flags), the SBE's c
            trade-off per level, and whether y_s learns the scenario bias (Spearman table)
  convergence  tuning and convergence per model row (Table C: settings used, converged share,
            median best epoch) and the learning curves (validation score against epoch)
  ladder    the ladder from Mix to M-scan (`grids.LADDER`, Table L): each row's mean and CI, each
            step's paired difference against the row above
  summary   report.md's opening paragraphs, one per module and one for the ladder, every sentence
            templated from the table cell it quotes
  writing   report.md, the CSVs, and the copy of `--report_dir` (run.json, results.json,
            config.json, and derived.json: the numbers computed from predictions, so that a
            report made from the copy alone is the same)
  cli       the flags, `make_report` and `run` (the command line in-process)

On data that knows the true interest (the synthetic benchmark, `true_like` in
predictions.parquet) every table and figure is also given in true-interest AUC. Where the dataset
is one of the paper's (aliccp, cloudtheme), the paper's numbers (`experiments.paper_results`) are
shown beside ours.

The rules behind the numbers (mean ± std over seed pairs (seed, data_seed), RelaImpr and where
it is left out, the `*` and the bold) are in `experiments.report.tables` and printed at the top
of report.md. Every model list and title comes from the model registry (`mscan_jax.models`):
Table 1's columns are `models.names(table="table1")`, each followed by its equal-information
columns present in the folder (`grids.INFORMATION`), then the reference scorers and oracles
present, labelled as such; a newly registered model appears with no change here.

The c sweep of Figure 5: score = (y_m - c) * sigmoid(y_s) (Eq. 12, `objective.inference_score`)
recomputed from each run's saved y_m and y_s for every c; per-scenario AUCs do not depend on c,
so the figure shows #All.

The mechanism section (`mechanisms`, `summary`): report.md opens with one paragraph per module
(where it helps, where it has no measurable effect, what it costs in observed-click AUC, its
placebo check), written from Table G (gains at the default data) and, on a folder of the
`mechanisms` grid, Table M per module (gain against each dial's placebo, moderate and strong
level) with its dose-response figure `mechanism_<module>.png`, `mechanism_sbe_c.png` (the c
trade-off per level) and Table S with `mechanism_scenario_factor.png`. A module "helps" only
where the 95 % CI of its paired gain lies above 0; a gain in its favour at the placebo level of a
dial it claims is flagged as a possible leak or overfit.

Convergence: a comparison that uses a run whose step budget ran out before early stopping fired
(results.json `stop_reason` "max_steps", `loading.not_converged`) is printed "not converged" and
is not judged: no verdict, no bold, no `*`.
"""

from experiments.report.cli import make_report
from experiments.report.cli import run as main
from experiments.report.figures import figure5_data, figure6_data, plot, sweep_c
from experiments.report.loading import (METRICS, Folder, ReportError, RunResult, Stat,
                                        joined_scores, load_folder)
from experiments.report.tables import (Table1, build_table1, build_table2, significance_test,
                                       table1_markdown, table2_markdown)
from experiments.report.writing import copy_run_files, portable, write_report
