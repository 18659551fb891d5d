"""The model registry: everything about a model, in one entry.

Every model takes the batch of `mscan_jax.data.schema` and returns a dict of named logits
(`y_m`, and `y_s` where the Scenario Bias Eliminator is on); see `mscan_jax.training.objective`.

A `ModelSpec` carries, besides the factory, everything the rest of the code needs to know about
a model: its display title, what information its input holds, its training stages (e.g.
`finetune` = train `mix`, then continue on one scenario from Mix's best checkpoint), whether it
is trained and evaluated on one target scenario, which tables it is a column of, and whether it
is a model, a cheap reference scorer or an oracle that reads the recorded truth. The grids, the
report, the paper's numbers, the benchmarks and the tests all derive their lists from here: a
model registered here is trained by `launch.py`, run by the grid, titled in the report and
shape-, gradient- and routing-tested, with no other file touched.

Registration order is display order (the paper's Table 1 order, App. A.2).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Callable, Iterator, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema

ModelFactory = Callable[[ml_collections.ConfigDict, Schema], nn.Module]
# stages(config) -> [(subdir, stage_config), ...]; "" = the run's own workdir. The last stage is
# the one whose results are the run's results; an earlier stage only makes the checkpoint the
# next one starts from (`stage_config.train.init_from` names its subdir).
StagesFn = Callable[[ml_collections.ConfigDict], list]

KINDS = ("model", "reference", "oracle")
TABLES = ("table1", "table2")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the code knows about one model.

  factory:          (config, schema) -> a Flax module returning named logits.
  title:            its name in tables and figures ("M-scan", "MMOE").
  sees:             the information its input holds, for the tables' "sees" column.
  description:      one line for `--help` texts and the README.
  stages:           training stages (None: one stage, the run itself).
  target_scenario:  trained and evaluated on `config.single.scenario` only: the grids make one
                    run per target scenario and the report puts it in that scenario's row.
  tables:           the paper tables it is a column of (`TABLES`).
  kind:             "model"; "reference" (a cheap scorer with no sequence features and nothing
                    of M-scan, shown beside every table); "oracle" (reads the recorded truth).
  trainable:        False: scored with its initial (empty) parameters, no training loop.
  needs_truth:      reads `true_*` batch keys (only datasets that record the truth have them).
  """
  factory: ModelFactory
  title: str
  sees: str
  description: str = ""
  stages: Optional[StagesFn] = None
  target_scenario: bool = False
  tables: tuple[str, ...] = ()
  kind: str = "model"
  trainable: bool = True
  needs_truth: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ModelSpec.kind={self.kind!r}; valid: {', '.join(KINDS)}")
    unknown = set(self.tables) - set(TABLES)
    if unknown:
      raise ValueError(f"ModelSpec.tables: unknown {sorted(unknown)}; valid: {', '.join(TABLES)}")


_REGISTRY: dict[str, ModelSpec] = {}


def _builtin() -> dict[str, ModelSpec]:
  from mscan_jax.models import (aesm2, m2m, mix, mmoe, mscan, ple, references, shared_bottom,
                                star)
  din = "u, i, s + DIN(S_u)"   # what every baseline sees by default (inputs.py)
  t1 = ("table1",)
  return {
      # Baselines (Appendix A.2): same batch, same objective, only "y_m".
      "single": ModelSpec(mix.from_config, "Single", din + "; target scenario only",
                          "3-layer MLP trained on config.single.scenario only",
                          stages=mix.single_stages, target_scenario=True, tables=t1),
      "mix": ModelSpec(mix.from_config, "Mix", din, "3-layer MLP trained on all scenarios",
                       tables=t1),
      "shared_bottom": ModelSpec(shared_bottom.from_config, "Shared bottom", din,
                                 "shared embeddings, one tower per scenario", tables=t1),
      "finetune": ModelSpec(mix.from_config, "Finetune", din + "; Mix, then target scenario",
                            "mix, then trained on config.single.scenario from its checkpoint",
                            stages=mix.finetune_stages, target_scenario=True, tables=t1),
      "mmoe": ModelSpec(mmoe.from_config, "MMOE", din, "MMoE (Ma et al., KDD 2018)", tables=t1),
      "ple": ModelSpec(ple.from_config, "PLE", din, "PLE (Tang et al., RecSys 2020)", tables=t1),
      "aesm2": ModelSpec(aesm2.from_config, "AESM2", din, "AESM2 (Zou et al., SIGIR 2022)",
                         tables=t1),
      "m2m": ModelSpec(m2m.from_config, "M2M", din, "M2M (Zhang et al., WSDM 2022)", tables=t1),
      "star": ModelSpec(star.from_config, "STAR", din, "STAR (Sheng et al., CIKM 2021)",
                        tables=t1),
      "mscan": ModelSpec(mscan.from_config, "M-scan", "u, i, s + GRU(S_u) + SACA(H_u, S_u)",
                         "M-scan (this paper)", tables=("table1", "table2")),
      # Reference scorers: no sequence features, nothing of M-scan (references.py).
      "popularity": ModelSpec(references.popularity, "Popularity", "i (item bias only)",
                              "logistic regression on the item id alone", stages=references.stages,
                              kind="reference"),
      "logreg": ModelSpec(references.logreg, "Bias LR", "u, i, s biases",
                          "logistic regression on user + item + scenario biases",
                          stages=references.stages, kind="reference"),
      "mf": ModelSpec(references.mf, "MF", "u, i, s biases + <p_u, q_i>",
                      "matrix factorisation with biases", stages=references.stages,
                      kind="reference"),
      "oracle_click": ModelSpec(references.oracle_click, "Oracle (exam x like)",
                                "the recorded truth: true_exam * true_prob",
                                "the true click probability", kind="oracle", trainable=False,
                                needs_truth=True),
      "oracle_like": ModelSpec(references.oracle_like, "Oracle (like)",
                               "the recorded truth: true_prob",
                               "the true like probability (interest)", kind="oracle",
                               trainable=False, needs_truth=True),
  }


def _specs() -> dict[str, ModelSpec]:
  if not _REGISTRY:
    _REGISTRY.update(_builtin())
  return _REGISTRY


def register(name: str, spec: ModelSpec) -> None:
  """Adds a model (appended to the display order); a name may be registered once."""
  specs = _specs()
  if name in specs:
    raise ValueError(f"model {name!r} is already registered")
  specs[name] = spec


def unregister(name: str) -> None:
  _specs().pop(name)


@contextlib.contextmanager
def registered(name: str, spec: ModelSpec) -> Iterator[None]:
  """`with registered(name, spec):` the model exists inside the block (tests)."""
  register(name, spec)
  try:
    yield
  finally:
    unregister(name)


def specs() -> dict[str, ModelSpec]:
  """name -> spec, in display order (a copy)."""
  return dict(_specs())


def names(*, table: str | None = None, kind: str | None = None,
          target_scenario: bool | None = None) -> tuple[str, ...]:
  """Registered names in display order, filtered by table, kind and target_scenario."""
  return tuple(n for n, s in _specs().items()
               if (table is None or table in s.tables) and (kind is None or s.kind == kind)
               and (target_scenario is None or s.target_scenario == target_scenario))


def model_names() -> tuple[str, ...]:
  """Every registered name, sorted (for error messages and config validation)."""
  return tuple(sorted(_specs()))


def get_spec(name: str) -> ModelSpec:
  registry = _specs()
  if name not in registry:
    raise ValueError(f"config.model={name!r} is unknown; valid: {', '.join(sorted(registry))}")
  return registry[name]


def title(name: str) -> str:
  """Display title of a registered model (the name itself if it is not registered)."""
  spec = _specs().get(name)
  return spec.title if spec is not None else name


def build_model(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  spec = get_spec(config.model)
  if spec.needs_truth and not schema.has_truth:
    raise ValueError(f"config.model={config.model!r} reads the recorded truth, which dataset "
                     f"{schema.name!r} does not have (only simulated data such as the synthetic "
                     "benchmark records it)")
  if spec.target_scenario:
    target_scenario(config, schema)
  return spec.factory(config, schema)


def stages(config: ml_collections.ConfigDict) -> list:
  """The training stages of `config.model`: [(subdir, stage_config), ...].

  With `config.train.init_from` set, the starting checkpoint is given (e.g. a grid's sibling
  `mix` run), so only the last stage runs.
  """
  spec = get_spec(config.model)
  if spec.stages is None:
    return [("", config)]
  out = spec.stages(config)
  if config.train.init_from:
    subdir, last = out[-1]
    last = copy.deepcopy(last)
    last.train.init_from = config.train.init_from
    return [(subdir, last)]
  return out


def target_scenario(config: ml_collections.ConfigDict, schema: Schema | None = None) -> int:
  """`config.single.scenario`, checked: required (>= 1) for models with a target scenario;
  a ConfigError (the user's to fix) otherwise."""
  from mscan_jax.config import ConfigError
  s = int(config.single.scenario)
  if s < 1:
    raise ConfigError(f"config.model={config.model!r} needs a target scenario: set "
                     f"--config.single.scenario=ID (a scenario id >= 1), got {s}")
  if schema is not None and s > schema.num_scenarios:
    raise ConfigError(f"config.single.scenario={s} does not exist: the dataset has scenario ids "
                     f"1..{schema.num_scenarios}")
  return s


def activation_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
