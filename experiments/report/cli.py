"""The command line of `python -m experiments.report` (`__main__.py`), also callable in-process.

`define_flags(flag_values)` defines its flags; `run(argv)` parses `argv` with a fresh set of
flags (nothing global is touched) and writes the report, returning the exit code: 0, or 2 after
printing `error: <message>` for a user error (a missing folder, a folder with no finished run, a
bad flag value).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import flags

from experiments import grids
from experiments.report.loading import ReportError, load_folder
from experiments.report.writing import copy_run_files, write_record, write_report
from mscan_jax.data.schema import DataError
from mscan_jax.errors import ConfigError

PROG = "python -m experiments.report"


def define_flags(fv: flags.FlagValues, module_name: Optional[str] = None) -> None:
  """Defines the flags on `fv` (under `module_name`: `--help` lists the main module's flags)."""
  kw = {"flag_values": fv, "module_name": module_name}
  flags.DEFINE_string("out", None, "Grid folder (from experiments.run_grid).", **kw)
  flags.DEFINE_list("also", [], "More grid folders (other datasets), comma-separated.", **kw)
  flags.DEFINE_string(
      "report_dir", "", "Where to write (default: --out); a folder other than --out also gets "
      "grid.json and each run's results.json and config.json (no absolute path in them), so it "
      "can be committed without checkpoints or predictions.", **kw)
  flags.DEFINE_list("c_values", [f"{c:g}" for c in grids.C_VALUES],
                    "c values of Figure 5, comma-separated.", **kw)


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
  else:
    for f in folders:
      write_record(f, f.path)
  return path


def report_from(fv: flags.FlagValues, extra_args: Sequence[str] = ()) -> int:
  """Writes the report the parsed flags `fv` ask for; the exit code (2 on a user error)."""
  try:
    if extra_args:
      raise ReportError(f"unexpected arguments: {' '.join(extra_args)}")
    if not fv.out:
      raise ReportError("--out=DIR (a grid folder) is required")
    try:
      c_values = [float(x) for x in fv.c_values]
    except ValueError:
      raise ReportError(f"--c_values={','.join(fv.c_values)}: not a list of numbers") from None
    path = make_report(fv.out, fv.also, fv.report_dir, c_values)
  except (ReportError, ConfigError, DataError) as e:   # the user's to fix; a bug keeps its traceback
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


def run(argv: Sequence[str]) -> int:
  """`run(["--out=DIR", ...])`: the command line in-process (flags parsed into a fresh set)."""
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    rest = fv([PROG, *argv])
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return report_from(fv, rest[1:])
