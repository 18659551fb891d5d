"""report.md's opening summary: one short paragraph per module, every sentence generated from
the cells of the table it names (`mechanisms`), so regenerating the report from the runs
regenerates every number it quotes; none is typed by hand.

The words follow the cells' confidence intervals only: "helps" where the 95 % CI of the paired
gain lies above 0, "lowers" where it lies below, otherwise "has no measurable effect" with the
interval quoted. The placebo check is always stated: made and passed, FLAGGED (a gain in the
module's favour where the mechanism it claims is off), or why it was not made. On a folder of the
table grids only (no dial level), the paragraphs cover the modules with runs at the default data
(Table 2's SACA and SBE). A gain that uses a run which did not converge
(`loading.not_converged`) is named "not converged" and judged neither way.
"""

from __future__ import annotations

from typing import Optional, Sequence

from experiments.report.ladder import LADDER_TABLE, Ladder
from experiments.report.mechanisms import (DEFAULT, DEFAULT_TABLE, MEASURES, OBSERVED,
                                           SPEARMAN_TABLE, TRUE_INTEREST, CTradeoff, Gain,
                                           Level, SpearmanCell, Study, dial_levels, level_label,
                                           module_table_name, variant_label)

SBE_MODULE = "SBE"                 # the module whose c trade-off is quoted
SBE_C_FIGURE = "mechanism_sbe_c.png"
SCENARIO_FACTOR_FIGURE = "mechanism_scenario_factor.png"

RULES = ("Every sentence below is written by `experiments.report.summary` from the table cell it "
         "quotes, named in brackets. A module **helps** a measure only where the 95 % t-based "
         "confidence interval of its gain over its control (treatment − control per seed pair, "
         "over the pairs) lies above 0, **lowers** it where the interval lies below 0; otherwise "
         "it has no measurable effect; where a run of the comparison did not converge (its step "
         "budget ran out before early stopping fired) it is **not judged**. **Placebo check**: at the placebo level of a dial whose "
         "mechanism the module claims to use, that mechanism is off, so a gain there is FLAGGED "
         "as a possible leak or overfit.")


NOT_JUDGED = "is not judged on"


def verdict(g: Gain) -> str:
  """"helps", "lowers" or "has no measurable effect on": the words of `g`'s interval; nothing
  but `NOT_JUDGED` for a gain whose runs did not all converge."""
  if not g.judged:
    return NOT_JUDGED
  return "helps" if g.helps else "lowers" if g.lowers else "has no measurable effect on"


def phrase(gains: Sequence[Gain]) -> str:
  """"helps A (<cell>), B (<cell>); has no measurable effect on C (<cell>)": the measures of
  `gains` grouped by verdict, each with its table cell."""
  groups: dict[str, list[Gain]] = {}
  for g in gains:
    groups.setdefault(verdict(g), []).append(g)
  return "; ".join(f"{v} " + ", ".join(f"{MEASURES[g.measure].title} ({g.text})" for g in sel)
                   for v, sel in groups.items())


def _at_default(study: Study, module: str, measures: Sequence[str]) -> list[Gain]:
  return [g for m in measures if (g := study.get(module, DEFAULT, m)) is not None]


def _dose_sentence(study: Study, module: str) -> Optional[str]:
  main = study.main_measure()
  if not study.dials or main is None:
    return None
  gains = [g for lv in study.levels(module) if lv != DEFAULT
           and (g := study.get(module, lv, main)) is not None]
  if not gains:
    return None
  parts = []
  for verb, sel in (("helps at", [g for g in gains if g.helps]),
                    ("lowers it at", [g for g in gains if g.lowers]),
                    ("has no measurable effect at",
                     [g for g in gains if g.judged and not g.helps and not g.lowers]),
                    ("is not judged at", [g for g in gains if not g.judged])):
    if sel:
      parts.append(f"{verb} " + ", ".join(f"{level_label(g.level)} ({g.text})" for g in sel))
  return (f"Against the dials, on {MEASURES[main].title}, it " + "; ".join(parts)
          + f" [{module_table_name(module)}, Figure `{study.figure_file(module)}`].")


def _placebo_sentence(study: Study, module: str) -> str:
  claims = study.contrasts[module].claims
  if not claims:
    return "Placebo check: none (it claims no dial's mechanism)."
  if not study.dials:
    return ("Placebo check: not made (no runs at a dial's placebo level in this folder; the "
            "`mechanisms` grid trains them).")
  present = [d for d in claims if (d, "placebo") in study.levels(module)]
  unjudged = [d for d in present if any(
      not g.judged for m in study.measures if (g := study.get(module, (d, "placebo"), m)))]
  checked = [d for d in present if d not in unjudged]
  missing = [d for d in claims if d not in present]
  if not checked:
    why = (f"no runs of it at the placebo level of {', '.join(missing)}" if missing else "")
    why += ("; " if why and unjudged else "") + (
        f"runs not converged at the placebo level of {', '.join(unjudged)}" if unjudged else "")
    return f"Placebo check: not made ({why})."
  table = module_table_name(module)
  flags = study.flags(module)
  if flags:
    by_level: dict[Level, list[Gain]] = {}
    for g in flags:
      by_level.setdefault(g.level, []).append(g)
    text = ("Placebo check FLAGGED, a possible leak or overfit: "
            + "; ".join(f"at {level_label(lv)}, where the mechanism it claims is off, it "
                        f"{phrase(gs)}" for lv, gs in by_level.items()) + f" [{table}].")
  else:
    text = (f"Placebo check passed: at the placebo level of {', '.join(checked)} no gain's CI "
            f"lies above 0 [{table}].")
  if missing:
    text += f" Not checked (no runs at their placebo level): {', '.join(missing)}."
  if unjudged:
    text += f" Not checked (runs not converged at their placebo level): {', '.join(unjudged)}."
  return text


def _c_sentence(study: Study, tradeoffs: Sequence[CTradeoff]) -> Optional[str]:
  wanted = dial_levels("exposure_bias")
  sel = sorted((t for t in tradeoffs if t.level in wanted), key=lambda t: wanted.index(t.level))
  if not sel:
    return None
  return ("Its c trade-off, " + "; ".join(
      f"at {level_label(t.level)}: the per-user pooled true-interest AUC is highest at c = "
      f"{t.best_c:g} ({t.best_user:.4f}, against {t.default_user:.4f} at the runs' c = "
      f"{t.default_c:g}), where observed-click AUC #All is {t.best_auc:.4f} (against "
      f"{t.default_auc:.4f})" for t in sel)
      + f" [Figure `{study.prefix}{SBE_C_FIGURE}`, `mechanism_sbe_c.csv`].")


def _spearman_sentence(study: Study, module: str,
                       cells: dict[tuple[str, Level], SpearmanCell]) -> Optional[str]:
  treatment = study.contrasts[module].treatment
  label = variant_label({k: v for k, v in treatment.items() if k != "model"})
  wanted = dial_levels("exposure_bias")
  sel = [(lv, cells[(label, lv)]) for lv in [DEFAULT, *(w for w in wanted if w != DEFAULT)]
         if (label, lv) in cells]
  if not sel:
    return None
  return (f"Does its scenario factor learn the scenario bias? For {label}, the Spearman "
          "correlation over scenarios of the mean factor with the true examination rate is "
          + "; ".join(f"{c.text} at {level_label(lv)}" for lv, c in sel)
          + f" [{SPEARMAN_TABLE}, Figure `{study.prefix}{SCENARIO_FACTOR_FIGURE}`].")


def module_paragraph(study: Study, module: str, tradeoffs: Sequence[CTradeoff] = (),
                     spearman: Optional[dict] = None) -> str:
  """The summary paragraph of `module`: its contrast, then templated sentences."""
  c = study.contrasts[module]
  sentences = [f"**{module}**: {c.description}."]
  true = _at_default(study, module, TRUE_INTEREST)
  if true:
    sentences.append(f"At the default data it {phrase(true)} [{DEFAULT_TABLE}].")
  observed = _at_default(study, module, OBSERVED)
  if observed:
    sentences.append(f"In observed clicks (what it costs) it {phrase(observed)} "
                     f"[{DEFAULT_TABLE}].")
  if (dose := _dose_sentence(study, module)) is not None:
    sentences.append(dose)
  sentences.append(_placebo_sentence(study, module))
  if module == SBE_MODULE and (cs := _c_sentence(study, tradeoffs)) is not None:
    sentences.append(cs)
  if spearman and c.claims == ("exposure_bias",) and (
      ss := _spearman_sentence(study, module, spearman)) is not None:
    sentences.append(ss)
  return " ".join(sentences)


def ladder_paragraph(ladder: Ladder, several: bool = False) -> str:
  """The ladder's paragraph: each step from the row above, its measures grouped by verdict
  (helps, lowers, no measurable effect, not judged where its runs did not converge)."""
  steps = [f"{title} {phrase(gains)}" for title, _ in ladder.rows
           if (gains := ladder.step_gains(title))]
  where = f" on {ladder.dataset}" if several else ""
  if not steps:
    return f"**From Mix to M-scan**{where}: no step has a seed pair on both rows [{LADDER_TABLE}]."
  return (f"**From Mix to M-scan**{where}, each step against the row above at the default data: "
          + "; ".join(steps) + f" [{LADDER_TABLE}].")


def summary_markdown(studies: Sequence[tuple[Study, Sequence[CTradeoff], dict]],
                     ladders: Sequence[Ladder] = ()) -> list[str]:
  """The opening section of report.md: the rules, then one paragraph per module (per dataset
  when several have modules), then the ladder's (`ladder.Ladder`) where one is present."""
  studies = [s for s in studies if s[0].contrasts]
  L = ["## Summary: what each module buys", ""]
  ladder_lines = [p for lad in ladders
                  for p in (ladder_paragraph(lad, len(ladders) > 1), "")]
  if not studies:
    return L + ladder_lines + ["No module has runs on both sides of its contrast (`grids.MODULE_CONTRASTS`): "
                "run `--grid=table2` (SACA, SBE at the default data) or `--grid=mechanisms`.", ""]
  L += [RULES, ""]
  for study, tradeoffs, spearman in studies:
    if len(studies) > 1:
      L += [f"### {study.dataset}", ""]
    if not study.dials:
      L += [f"{study.dataset} holds no run at a moved dial level: the paragraphs cover the "
            "modules with runs at the default data.", ""]
    for module in study.contrasts:
      L += [module_paragraph(study, module, tradeoffs, spearman), ""]
  return L + ladder_lines
