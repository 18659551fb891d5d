"""Experiment grids (paper §4: Table 1, Table 2, Figures 5-6, the mechanism study), their runner
and their report.

    python -m experiments.run_grid --grid=table2 --dataset=synthetic --preset=tiny --seeds=2 \
        --out=DIR
    python -m experiments.report --out=DIR

`grids` holds the grids as data (lists of config overrides, model lists from the registry),
`run_grid` runs them through `launch.py` (resumable, K at a time), `report` turns the finished
runs into `report.md`, CSVs and figures, and `paper_results` holds the paper's own numbers.
The committed reference result `results/synthetic/` and the commands that regenerate it are
described in the README ("Experiments"). `runs/` holds the checkpoints and predictions and is
not committed; `--report_dir` receives the report, CSVs, PNGs, grid.json and each run's
results.json and config.json.
"""
