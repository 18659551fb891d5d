"""python -m experiments.report --out=DIR [--also=DIR2,DIR3] [--report_dir=DIR] [--c_values=...]

writes the paper's tables and figures (§4) from the finished runs of `experiments.grid` into DIR
(or --report_dir): report.md (Table 1, Table 2, Figures 5 and 6), table1.csv, significance.csv,
table2.csv, figure5_c.csv, figure6_alpha.csv, figure5_c.png, figure6_alpha.png and runs.csv.

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

import os
import sys
from typing import Sequence

from absl import app, flags

from experiments import grids
from experiments.report.loading import ReportError, load_folder
from experiments.report.writing import copy_run_files, write_report

_OUT = flags.DEFINE_string("out", None, "Grid folder (from experiments.grid).")
_ALSO = flags.DEFINE_list("also", [], "More grid folders (other datasets), comma-separated.")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", "", "Where to write (default: --out); a folder other than --out also gets "
    "grid.json and each run's results.json and config.json, so it can be committed without "
    "checkpoints or predictions.")
_C_VALUES = flags.DEFINE_list("c_values", [f"{c:g}" for c in grids.C_VALUES],
                              "c values of Figure 5, comma-separated.")


def make_report(out: str, also: Sequence[str] = (), report_dir: str = "",
                c_values: Sequence[float] = grids.C_VALUES) -> str:
  """Loads the folders, writes the report (and the copy of --report_dir); returns report.md's
  path. Raises ReportError on a user error."""
  folders = [load_folder(x) for x in [out, *also]]
  for f in folders:
    if not f.runs:
      raise ReportError(f"{f.path} holds no finished run"
                        + (f" ({len(f.unfinished)} unfinished)" if f.unfinished else ""))
  path = write_report(folders, report_dir or out, c_values)
  if report_dir and os.path.abspath(report_dir) != os.path.abspath(out):
    copy_run_files(folders, report_dir)
  return path


def main(argv: Sequence[str]) -> None:
  try:
    if len(argv) > 1:
      raise ReportError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _OUT.value:
      raise ReportError("--out=DIR (a grid folder) is required")
    try:
      c_values = [float(x) for x in _C_VALUES.value]
    except ValueError:
      raise ReportError(f"--c_values={','.join(_C_VALUES.value)}: not a list of numbers") from None
    path = make_report(_OUT.value, _ALSO.value, _REPORT_DIR.value, c_values)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
