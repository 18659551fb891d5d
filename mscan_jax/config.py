"""Configuration: one typed ConfigDict, overridable from the command line, saved as JSON per run.

    python launch.py --config.model=mscan --config.mscan.use_sbe=False --config.seed=1

Defaults follow the authors' configs: embedding 32, FFN [512, 256], attention FFN
[200, 80], dropout 0.2, Adam lr 1e-3 with weight decay 1e-4, global-norm clip 5, batch 1024,
alpha = 0.1, c per dataset.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict

from mscan_jax.errors import ConfigError, integer_at_least, number_in, widths

DTYPES = ("float32", "bfloat16")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config; `arg="tiny"` gives `get_tiny_config()` (`--config=mscan_jax/config.py:tiny`)."""
  if arg == "tiny":
    return get_tiny_config()
  if arg:
    raise ConfigError(f"unknown config variant {arg!r}; valid: tiny (or none for the default)")
  c = ml_collections.ConfigDict()
  c.model = "mscan"
  c.seed = 0
  c.embed_dim = 32
  c.dtype = "float32"              # activations; parameters and loss stay float32
  c.shard_embeddings = False       # row-shard embedding tables over the mesh (multi-device)

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"        # one of mscan_jax.data.datasets.DATASETS
  c.data.preset = "default"        # synthetic preset: tiny | default | large
  c.data.path = ""                 # built dataset dir, or the file of a `log`
  c.data.cache_dir = "data_cache"  # where the synthetic benchmark and logs are built once
  c.data.train_scenarios = ()      # restrict TRAINING samples to these scenario ids (() = all)
  c.data.eval_scenarios = ()       # restrict evaluation to these scenario ids (() = all)
  c.data.prefetch = 2              # batches prepared ahead of the device
  c.data.seed = 0                  # seed of the synthetic benchmark (the data, not the model)
  # The synthetic benchmark's dials (datasets.dials: one per causal arrow of Figure 2, 0 = the
  # mechanism off); < 0 = the preset's value.
  from mscan_jax.data import datasets
  c.data.synthetic = ml_collections.ConfigDict({dial: -1.0 for dial in datasets.dials("synthetic")})
  # Building a log or a public dataset (`log` on the fly, `python prepare.py`);
  # the synthetic generator has its own per preset. Paper App. A.1.
  c.data.max_cur_len = 20          # Ls: cap of S_u (most recent kept)
  c.data.max_all_len = 40          # Lh: cap of H_u
  c.data.all_seq_mode = ""         # H_u holds impressions | clicks; "" = the dataset's default
  c.data.test_fraction = 0.4       # the most recent samples (paper: 40%)
  c.data.valid_fraction = 0.1      # of the rest, the most recent, for early stopping
  c.data.min_scenarios_per_user = 2  # keep users with samples in >= this many scenarios
  c.data.duplicates = ""           # exact duplicate rows: drop | keep; "" = the dataset's default
  # Column mapping of a generic CSV/Parquet log (config.data.name=log; mscan_jax/data/log.py).
  # Lists are written `--config.data.columns.user_extra=age,gender`; "" = no such column.
  c.data.columns = ml_collections.ConfigDict()
  c.data.columns.user = "user_id"
  c.data.columns.item = "item_id"
  c.data.columns.scenario = "scenario_id"
  c.data.columns.label = "label"
  c.data.columns.time = "timestamp"    # "" = the file's row order is the time order
  c.data.columns.user_extra = ()       # further categorical user fields (profile)
  c.data.columns.item_extra = ()       # further categorical item fields (category, ...)
  c.data.columns.scenario_extra = ()   # further categorical scenario fields
  c.data.columns.true_like = ""        # recorded true interest, 0/1 (simulated logs)
  c.data.columns.true_prob = ""        # its probability (given with true_like)
  c.data.columns.true_exam = ""        # examination probability (simulated logs)
  c.data.columns.is_sample = ""        # 0/1: 0 = a behaviour only (history, never a sample)
  # Each loader's own options (`prepare --dataset=NAME`); 0 = the loader's default.
  c.data.aliccp = ml_collections.ConfigDict()      # aliccp and aliccp_csv
  c.data.aliccp.block_size_mb = 0.0  # MB per block read (0 = rawio.DEFAULT_BLOCK_SIZE)
  c.data.aliccp.workers = 0        # threads parsing blocks (0 = rawio.DEFAULT_WORKERS)
  c.data.aliccp.missing_common = "error"   # a common_feature_index missing: error | drop
  c.data.cloudtheme = ml_collections.ConfigDict()
  c.data.cloudtheme.negatives = 2  # negatives drawn per click (the authors' protocol)
  c.data.cloudtheme.seed = 0       # seed of the negative sampling
  c.data.cloudtheme.negative_pool = "clicked"  # clicked (pool items seen in the log) | pool
  c.data.cloudtheme.purchases = False          # add the purchase log as behaviours
  c.data.cloudtheme.missing_pool = "error"     # a click whose theme offers no negative: error | drop
  c.data.recbole = ml_collections.ConfigDict()
  c.data.recbole.scenario = ""     # the scenario column, e.g. category:token (required)
  c.data.recbole.user = "user_id"
  c.data.recbole.item = "item_id"
  c.data.recbole.label = "label:float"
  c.data.recbole.label_threshold = config_dict.placeholder(float)   # None: labels are 0/1
  c.data.recbole.time = "timestamp:float"      # "" = file order

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 1024
  c.train.eval_batch_size = 4096
  c.train.learning_rate = 1e-3
  c.train.weight_decay = 1e-4      # L2 added to the gradient, as torch.optim.Adam(weight_decay=)
  c.train.clip_norm = 5.0
  # A cap: early stopping (patience, below) ends a run first. The grids train to convergence
  # with their own cap and patience (experiments.grids.CONVERGENCE).
  c.train.num_epochs = 20
  c.train.max_steps = 0            # 0 = num_epochs over the training split
  c.train.eval_every_steps = 0     # 0 = once per epoch
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 0  # 0 = at every evaluation
  # Early stopping: this many evaluations in a row without a gain of the validation metric stop
  # the run (0 acts as 1: the first evaluation without a gain stops it; mscan_jax/training/loop.py).
  c.train.patience = 2
  # Apply the tuning table's settings of this dataset and model (experiments/tuned/, written by
  # `python -m experiments.tune`) to the tuned keys not given on the command line (launch.py).
  c.train.tuned = True
  # Validation metric of early stopping and the best checkpoint (metrics.SELECT_METRICS): the
  # mean per-scenario AUC (what the paper reports); auc_all mostly measures scenario base rates.
  c.train.select_metric = "mean_scenario_auc"
  c.train.init_from = ""           # workdir whose best parameters initialise this run (finetune)
  c.train.progress = True          # progress bar with examples/s
  c.train.export_predictions = True
  c.train.sync_every_steps = 0     # 0 = auto (every 4 steps on multi-device CPU, else at log steps)
  # Divergence guard (checked at log steps): stop, keeping the last good checkpoint, when the
  # loss or the gradient norm is non-finite or exceeds this multiple of its first-step value
  # (normal training stays within 3x on the tiny preset); 0 = check finiteness only.
  c.train.divergence_factor = 1e3

  c.mscan = ml_collections.ConfigDict()
  c.mscan.use_saca = True          # Scenario-Aware Co-Attention (§3.2); off: no R_h
  c.mscan.use_sbe = True           # Scenario Bias Eliminator (§3.3); off: train/infer on y_m
  c.mscan.alpha = 0.1              # Eq. (11)
  c.mscan.c = -1.0                 # Eq. (12); < 0 = the dataset's default (data/datasets.py)
  c.mscan.mlp = (512, 256)         # matching tower, Eq. (6)
  c.mscan.scenario_mlp = (64,)     # scenario tower, Eq. (7)
  c.mscan.attn_mlp = (200, 80)     # co-attention FFN, Eq. (15)
  c.mscan.dropout = 0.2
  c.mscan.coattention = "factored"  # factored (exact, fast) | pairwise (vmap over pairs)
  # Batch rows per tile of the co-attention's pair scores (memory: at most (tile, Lh, Ls, 200)
  # at a time, models/sequence.py); 0 = the whole batch at once. Same numbers either way.
  c.mscan.coattention_tile = 256
  # Backward pass of the factored co-attention (models/sequence.py): max = differentiate only
  # each j's arg-max pair of Eq. (16) (B x Lh pairs, not B x Lh x Ls; same values, same
  # gradients up to ties) | autodiff = jax.grad through every pair.
  c.mscan.coattention_backward = "max"
  # Switches that are not the paper's form (models/mscan.py; labelled as such in every table):
  c.mscan.history_context = False  # True: H_u behaviours also embed their click flag and scenario
  c.mscan.saca_scenario_aware = True   # False: plain target attention over H_u (no max over S_u)
  c.mscan.scenario_in_matching = True  # False: s kept out of the matching tower (Eq. 6)
  c.mscan.fusion = "logit"         # Eq. (8) y_m * sigmoid(y_s) | probability: sigmoid(y_m) * sigmoid(y_e)
  c.mscan.gru_hidden = 0           # 0 = the behaviour dimension Fi * embed_dim

  # Baselines (Appendix A.2). Sizes left unset take each model's documented DEFAULTS
  # (mscan_jax/models/<name>.py): () for sizes, 0 for counts, < 0 for the dropout rate.
  c.baseline = ml_collections.ConfigDict()
  c.baseline.behaviours = "cur"    # DIN over: cur (paper's w/o SACA, w/o SBE) | cur+all | none
  c.baseline.tower = ()            # hidden widths of the (per-scenario) tower
  c.baseline.expert = ()           # hidden widths of an expert (PLE, AESM2: one width per level)
  c.baseline.num_experts = 0       # shared experts (mmoe, ple, aesm2, m2m)
  c.baseline.num_specific_experts = 0  # experts per scenario (ple)
  c.baseline.dropout = -1.0
  c.baseline.grouped_matmul = "auto"   # per-scenario weights: auto | gather | ragged (experts.py)
  # Reference scorers (mscan_jax/models/references.py).
  c.reference = ml_collections.ConfigDict()
  c.reference.dim = 16             # latent dimension of `mf`
  # Their training settings (they replace train.*): chosen on the validation split of the
  # synthetic default preset (benchmarks/learning_curve.py), before any model ran on it.
  c.reference.learning_rate = 0.01
  c.reference.weight_decay = 1e-4
  c.reference.num_epochs = 20
  c.single = ml_collections.ConfigDict()
  c.single.scenario = 0            # target scenario id of `single` and `finetune` (required)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""   # host:port; "" = single process or from env
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.auto = False               # read the cluster's environment (SLURM, TPU, ...)
  return c


def validate(config: ml_collections.ConfigDict, model_names=None) -> None:
  """Raises ConfigError on the first invalid field, naming it and its valid range or values.

  Every numeric and structural value is checked here (the data section by
  `datasets.validate_data`), so that a bad value stops before any work with one line, never as
  an error deep in the model (a zero-width layer), as silent nonsense (a negative clip norm
  turns training into gradient ascent) or not at all (a NaN learning rate).
  """
  if model_names is not None and config.model not in model_names:
    raise ConfigError(f"config.model={config.model!r} is unknown; valid: {', '.join(sorted(model_names))}")
  from mscan_jax.data import datasets
  datasets.validate_data(config.data)   # the data section, its column lists normalised
  if config.dtype not in DTYPES:
    raise ConfigError(f"config.dtype={config.dtype!r} is unknown; valid: {', '.join(DTYPES)}")
  for key in ("shard_embeddings", "train.progress", "train.export_predictions", "mscan.use_saca",
              "mscan.use_sbe", "mscan.history_context", "mscan.saca_scenario_aware",
              "mscan.scenario_in_matching", "distributed.auto"):
    if not isinstance(get_path(config, key), bool):
      raise ConfigError(f"config.{key} must be True or False, got {get_path(config, key)!r}")
  for key, low in (("seed", 0), ("embed_dim", 1), ("train.batch_size", 1),
                   ("train.eval_batch_size", 1), ("train.num_epochs", 0), ("train.max_steps", 0),
                   ("train.eval_every_steps", 0), ("train.log_every_steps", 0),
                   ("train.checkpoint_every_steps", 0), ("train.patience", 0),
                   ("train.sync_every_steps", 0), ("mscan.gru_hidden", 0),
                   ("mscan.coattention_tile", 0),
                   ("baseline.num_experts", 0), ("baseline.num_specific_experts", 0),
                   ("reference.dim", 1), ("reference.num_epochs", 1), ("single.scenario", 0),
                   ("distributed.num_processes", 0), ("distributed.process_id", -1)):
    integer_at_least(f"config.{key}", get_path(config, key), low)
  if config.train.num_epochs < 1 and config.train.max_steps < 1:
    raise ConfigError("config.train.num_epochs or config.train.max_steps must be >= 1")
  for key in ("train.learning_rate", "train.clip_norm", "reference.learning_rate"):
    number_in(f"config.{key}", get_path(config, key), low=0, low_open=True)
  for key in ("train.weight_decay", "reference.weight_decay", "mscan.alpha"):
    number_in(f"config.{key}", get_path(config, key), low=0)
  number_in("config.train.divergence_factor", config.train.divergence_factor, low=0,
            what="a finite number: 0 (off) or > 1")
  if 0 < config.train.divergence_factor <= 1:
    raise ConfigError("config.train.divergence_factor must be a finite number: 0 (off) or > 1, "
                      f"got {config.train.divergence_factor}")
  number_in("config.mscan.c", config.mscan.c,
            what="a finite number (< 0: the dataset's default)")
  number_in("config.mscan.dropout", config.mscan.dropout, low=0, high=1)
  number_in("config.baseline.dropout", config.baseline.dropout, high=1,
            what="< 1 (< 0: each model's default)")
  for key, empty_ok in (("mscan.mlp", True), ("mscan.scenario_mlp", True),
                        ("mscan.attn_mlp", False), ("baseline.tower", True),
                        ("baseline.expert", True)):
    widths(f"config.{key}", get_path(config, key), empty_ok)
  from mscan_jax.models.sequence import COATTENTION_BACKWARDS, COATTENTION_IMPLS   # the model owns its valid values
  if config.mscan.coattention not in COATTENTION_IMPLS:
    raise ConfigError(f"config.mscan.coattention={config.mscan.coattention!r}; valid: {', '.join(COATTENTION_IMPLS)}")
  if config.mscan.coattention_backward not in COATTENTION_BACKWARDS:
    raise ConfigError(f"config.mscan.coattention_backward={config.mscan.coattention_backward!r}; "
                      f"valid: {', '.join(COATTENTION_BACKWARDS)}")
  from mscan_jax.models.mscan import FUSION_OUTPUT
  if config.mscan.fusion not in FUSION_OUTPUT:
    raise ConfigError(f"config.mscan.fusion={config.mscan.fusion!r}; valid: {', '.join(FUSION_OUTPUT)}")
  from mscan_jax.models.inputs import BEHAVIOURS
  if config.baseline.behaviours not in BEHAVIOURS:
    raise ConfigError(f"config.baseline.behaviours={config.baseline.behaviours!r}; valid: "
                      f"{', '.join(BEHAVIOURS)}")
  from mscan_jax.models.experts import GROUPED_IMPLS
  if config.baseline.grouped_matmul not in GROUPED_IMPLS:
    raise ConfigError(f"config.baseline.grouped_matmul={config.baseline.grouped_matmul!r}; "
                      f"valid: {', '.join(GROUPED_IMPLS)}")
  from mscan_jax.evaluation import metrics
  if config.train.select_metric not in metrics.SELECT_METRICS:
    raise ConfigError(f"config.train.select_metric={config.train.select_metric!r} is unknown; "
                      f"valid: {', '.join(metrics.SELECT_METRICS)}")


# ----------------------------------------------------------------------------- checks

def get_path(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """config.<dotted> (`"train.learning_rate"`); KeyError on an unknown field."""
  node: Any = config
  for part in dotted.split("."):
    node = node[part]
  return node


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """config.<dotted> = value (a JSON list becomes a tuple); a ConfigError names an unknown field
  or a value of the wrong type."""
  *parents, leaf = dotted.split(".")
  node: Any = config
  try:
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(leaf)
    node[leaf] = tuple(value) if isinstance(value, list) else value
  except KeyError:
    raise ConfigError(f"config.{dotted} is not a config field") from None
  except TypeError as e:
    raise ConfigError(f"config.{dotted}={value!r}: {e}") from None


def check_override_keys(argv: Sequence[str]) -> None:
  """Refuses a `--config.KEY=...` whose KEY the config does not have, naming it and the valid
  keys at that level (ml_collections would stop with a bare `AttributeError`). Checked against
  this file's config (`--config=.../mscan_jax/config.py[:tiny]` or none); another config file
  is left to ml_collections."""
  variant = None
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path, _, variant = arg[len("--config="):].partition(":")
      if not os.path.exists(path) or not os.path.samefile(path, __file__):
        return
  config = get_config(variant or None)
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node: Any = config
    for depth, part in enumerate(key.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(["config"] + key.split(".")[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
          raise ConfigError(f"--config.{key}: {where} is a value, not a group of fields")
        raise ConfigError(f"--config.{key}: {where} has no field {part!r}; valid: "
                          f"{', '.join(sorted(node.keys()))}")
      node = node[part]


def define_config_flag(help_text: str):
  """`--config` (this file, `--config=mscan_jax/config.py[:tiny]`) and its `--config.KEY=VALUE`
  overrides, defined for absl; returns the flag holder. An unknown KEY on the command line
  (`sys.argv`) raises ConfigError first (`check_override_keys`): without `--config=` on the
  command line ml_collections applies the overrides while it defines the flag, where an unknown
  key stops with an AttributeError traceback that no flag parser can catch."""
  import sys
  from ml_collections import config_flags
  check_override_keys(sys.argv)
  return config_flags.DEFINE_config_file("config", os.path.abspath(__file__), help_text)


# ----------------------------------------------------------------------------- commands

def fail(message: str, code: int = 2) -> None:
  """A command's end on an error: one line `error: <message>` on stderr and exit code `code`
  (2: the user's to fix), no traceback (launch.py, prepare.py)."""
  import sys
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def define_config_flag_or_fail(help_text: str):
  """`define_config_flag`, an unknown `--config.KEY` ending the command with `fail`."""
  try:
    return define_config_flag(help_text)
  except ConfigError as e:
    fail(str(e))


def parse_flags_or_fail(argv: list[str]) -> list[str]:
  """absl's parsing (a command's `flags_parser`), any bad flag ending it with `fail`."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  return []


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, default=_default)


def _default(o: Any):
  if isinstance(o, tuple):
    return list(o)
  return str(o)


def get_tiny_config() -> ml_collections.ConfigDict:
  """The default config shrunk for tests and smoke runs: tiny synthetic preset, small towers."""
  c = get_config()
  c.data.preset = "tiny"
  c.embed_dim = 8
  c.train.batch_size = 64
  c.train.eval_batch_size = 128
  c.train.num_epochs = 2
  c.train.log_every_steps = 5
  c.train.progress = False
  c.mscan.mlp = (32, 16)
  c.mscan.scenario_mlp = (8,)
  c.mscan.attn_mlp = (16, 8)
  return c
