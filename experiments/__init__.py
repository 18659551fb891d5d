"""Experiment grids (paper §4: Table 1, Table 2, Figures 5-6), their runner and their report.

    python -m experiments.run_grid --grid=table2 --dataset=synthetic --preset=tiny --seeds=2 --out=DIR
    python -m experiments.report --out=DIR

`grids` holds the grids as data (lists of config overrides), `grid` runs them through
`launch.py` (resumable, K at a time), `report` turns the finished runs into `report.md`, CSVs
and figures, and `paper_results` holds the paper's own numbers.

The committed reference result `results/synthetic/` (every grid on the synthetic default preset,
3 seeds, the `small` model size of `grids.SIZES`, 63 trained runs; about 65 CPU-minutes, so
about 35-45 minutes on 2 CPU cores with --jobs=2) is made by:

    python -m experiments.run_grid --grid=all --dataset=synthetic --preset=default --size=small \
        --seeds=3 --jobs=2 --out=runs/grid-synthetic
    python -m experiments.report --out=runs/grid-synthetic --report_dir=results/synthetic

(`runs/` holds the checkpoints and predictions and is not committed; `--report_dir` receives
the report, CSVs, PNGs, grid.json and each run's results.json and config.json.)
"""
