"""python -m experiments.report --out=DIR [--also=DIR2,DIR3] [--report_dir=DIR] [--c_values=...]

writes the paper's tables and figures (§4) from the finished runs of `experiments.run_grid` into DIR
(or --report_dir): report.md (a summary per module, Table 1, Table 2, Figures 5 and 6, what each
module buys), table1.csv, significance.csv, table2.csv, figure5_c.csv, figure6_alpha.csv,
figure5_c.png, figure6_alpha.png, module_gains.csv, mechanism_sbe_c.csv, scenario_factor.csv,
scenario_factor_spearman.csv, the mechanism figures (mechanism_*.png) and runs.csv.

Reads every `DIR/runs/<name>/` holding `run.json` and `results.json` (unfinished runs are listed,
not used). With --report_dir=OTHER the files go there, beside grid.json and each used run's
results.json and config.json (no checkpoints, no predictions, no absolute path): a folder small
enough to commit. Several folders (`--also`), one dataset each, give one line per dataset in the
figures and one block per dataset in the tables. The rules behind the numbers (RelaImpr, `*`,
bold, reference columns) are in `experiments.report.tables` and at the top of report.md.

A user error (a missing folder, a folder with no finished run, a bad flag value) prints
`error: <message>` and exits with code 2.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags

from experiments.report import cli

cli.define_flags(flags.FLAGS, module_name=sys.argv[0])   # listed by --help


def main(argv: Sequence[str]) -> None:
  sys.exit(cli.report_from(flags.FLAGS, argv[1:]))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; a bad flag is one `error:` line and exit code 2 (absl's own is 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
