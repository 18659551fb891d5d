"""Configuration: one typed ConfigDict, overridable from the command line, saved as JSON per run.

    python launch.py --config.model=mscan --config.mscan.use_sbe=False --config.seed=1

Defaults follow the authors' configs: embedding 32, FFN [512, 256], attention FFN
[200, 80], dropout 0.2, Adam lr 1e-3 with weight decay 1e-4, global-norm clip 5, batch 1024,
alpha = 0.1, c per dataset.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from ml_collections import config_dict

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """An invalid configuration: the message names the field and what is valid."""


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
  # The synthetic benchmark's dials (mscan_jax.data.synthetic.DIALS: one per causal arrow of
  # Figure 2, 0 = the mechanism off); < 0 = the preset's value.
  from mscan_jax.data import synthetic
  c.data.synthetic = ml_collections.ConfigDict({dial: -1.0 for dial in synthetic.DIALS})
  # Building a log or a public dataset (`log` on the fly, `python -m mscan_jax.data.prepare`);
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
  c.train.num_epochs = 5
  c.train.max_steps = 0            # 0 = num_epochs over the training split
  c.train.eval_every_steps = 0     # 0 = once per epoch
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 0  # 0 = at every evaluation
  c.train.patience = 2             # evaluations without validation-AUC gain before stopping
  # Validation metric of early stopping and the best checkpoint (metrics.SELECT_METRICS): the
  # mean per-scenario AUC (what the paper reports); auc_all mostly measures scenario base rates.
  c.train.select_metric = "mean_scenario_auc"
  c.train.init_from = ""           # workdir whose best parameters initialise this run (finetune)
  c.train.progress = True          # progress bar with examples/s
  c.train.export_predictions = True
  c.train.sync_every_steps = 0     # 0 = auto (every 4 steps on multi-device CPU, else at log steps)

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
  """Raises ConfigError on the first invalid field, listing what is valid."""
  if model_names is not None and config.model not in model_names:
    raise ConfigError(f"config.model={config.model!r} is unknown; valid: {', '.join(sorted(model_names))}")
  from mscan_jax.data import datasets
  datasets.validate_data(config.data)   # the data section, its column lists normalised
  if config.dtype not in DTYPES:
    raise ConfigError(f"config.dtype={config.dtype!r} is unknown; valid: {', '.join(DTYPES)}")
  if config.mscan.alpha < 0:
    raise ConfigError(f"config.mscan.alpha must be >= 0, got {config.mscan.alpha}")
  from mscan_jax.models.sequence import COATTENTION_IMPLS   # the model owns its valid values
  if config.mscan.coattention not in COATTENTION_IMPLS:
    raise ConfigError(f"config.mscan.coattention={config.mscan.coattention!r}; valid: {', '.join(COATTENTION_IMPLS)}")
  from mscan_jax.models.mscan import FUSION_OUTPUT
  if config.mscan.fusion not in FUSION_OUTPUT:
    raise ConfigError(f"config.mscan.fusion={config.mscan.fusion!r}; valid: {', '.join(FUSION_OUTPUT)}")
  if not 0 <= config.mscan.dropout < 1:
    raise ConfigError(f"config.mscan.dropout must be in [0, 1), got {config.mscan.dropout}")
  for key in ("batch_size", "eval_batch_size"):
    if config.train[key] < 1:
      raise ConfigError(f"config.train.{key} must be >= 1, got {config.train[key]}")
  from mscan_jax.evaluation import metrics
  if config.train.select_metric not in metrics.SELECT_METRICS:
    raise ConfigError(f"config.train.select_metric={config.train.select_metric!r} is unknown; "
                      f"valid: {', '.join(metrics.SELECT_METRICS)}")
  if config.train.learning_rate <= 0:
    raise ConfigError(f"config.train.learning_rate must be > 0, got {config.train.learning_rate}")
  if config.train.num_epochs < 1 and config.train.max_steps < 1:
    raise ConfigError("config.train.num_epochs or config.train.max_steps must be >= 1")
  if config.embed_dim < 1:
    raise ConfigError(f"config.embed_dim must be >= 1, got {config.embed_dim}")


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
