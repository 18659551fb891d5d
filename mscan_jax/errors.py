"""The configuration error and the checks of one config value, at the bottom of the package.

`ConfigError` is raised by every layer that reads a config value (the data registry, the
models' checks, `mscan_jax.config.validate`, the commands), so it lives below all of them and
imports nothing of the project (README, "Layout": layer 0). Each check raises one
`ConfigError` whose message names the field and what is valid; a command turns it into one
`error: ...` line, exit code 2.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class ConfigError(ValueError):
  """An invalid configuration: the message names the field and what is valid."""


def integer_at_least(field: str, value: Any, low: int) -> None:
  """A ConfigError unless `value` is an integer >= `low`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")


def number_in(field: str, value: Any, low: float | None = None, high: float | None = None, *,
              low_open: bool = False, what: str = "") -> None:
  """A ConfigError unless `value` is a finite number in the range: [low, high) by default,
  (low, high) with `low_open`; `what` replaces the range in the message."""
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or value < high))
  if not ok:
    if not what:
      parts = []
      if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
      if high is not None:
        parts.append(f"< {high:g}")
      what = " and ".join(parts)
      what = f"a finite number {what}".rstrip()
    elif not what.startswith("a "):
      what = f"a finite number {what}"
    raise ConfigError(f"{field} must be {what}, got {value!r}")


def widths(field: str, value: Any, empty_ok: bool = True) -> None:
  """A ConfigError unless `value` is a list of layer widths, each an integer >= 1."""
  items = list(value) if isinstance(value, (tuple, list)) else None
  if (items is None or (not items and not empty_ok)
      or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in items)):
    need = "at least one width, " if not empty_ok else ""
    raise ConfigError(f"{field} must be a list of layer widths ({need}each an integer >= 1, "
                      f"e.g. 64,32), got {value!r}")
