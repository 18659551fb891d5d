"""mscan_jax.config: every numeric and structural value is validated, with its valid range."""

import re

import pytest

from mscan_jax import config as config_lib
from mscan_jax import models


def _with(key, value):
  c = config_lib.get_tiny_config()
  node = c
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = value
  return c


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key, value, message", [
    ("train.clip_norm", -1.0, "config.train.clip_norm must be a finite number > 0, got -1.0"),
    ("train.clip_norm", 0.0, "config.train.clip_norm must be a finite number > 0"),
    ("train.learning_rate", NAN, "config.train.learning_rate must be a finite number > 0, got nan"),
    ("train.learning_rate", INF, "config.train.learning_rate must be a finite number > 0"),
    ("train.weight_decay", -1e-4, "config.train.weight_decay must be a finite number >= 0"),
    ("train.patience", -1, "config.train.patience must be an integer >= 0, got -1"),
    ("train.eval_every_steps", -1, "config.train.eval_every_steps must be an integer >= 0"),
    ("train.log_every_steps", -5, "config.train.log_every_steps must be an integer >= 0"),
    ("train.checkpoint_every_steps", -1, "config.train.checkpoint_every_steps must be an integer >= 0"),
    ("train.sync_every_steps", -1, "config.train.sync_every_steps must be an integer >= 0"),
    ("train.max_steps", -1, "config.train.max_steps must be an integer >= 0"),
    ("data.prefetch", -1, "config.data.prefetch must be an integer >= 0, got -1"),
    ("data.seed", -1, "config.data.seed must be an integer >= 0"),
    ("data.train_scenarios", (0,), "config.data.train_scenarios must be a list of scenario ids"),
    ("data.synthetic.transfer", 2.0, "config.data.synthetic.transfer must be in [0, 1], got 2.0"),
    ("data.synthetic.drift", NAN, "config.data.synthetic.drift must be a finite number"),
    ("mscan.mlp", (0,), "config.mscan.mlp must be a list of layer widths (each an integer >= 1"),
    ("mscan.scenario_mlp", (8, -1), "config.mscan.scenario_mlp must be a list of layer widths"),
    ("mscan.attn_mlp", (), "config.mscan.attn_mlp must be a list of layer widths (at least one"),
    ("baseline.tower", (0,), "config.baseline.tower must be a list of layer widths"),
    ("baseline.expert", (4, 0), "config.baseline.expert must be a list of layer widths"),
    ("baseline.num_experts", -1, "config.baseline.num_experts must be an integer >= 0"),
    ("baseline.dropout", 1.0, "config.baseline.dropout must be a finite number < 1"),
    ("mscan.gru_hidden", -1, "config.mscan.gru_hidden must be an integer >= 0"),
    ("mscan.coattention_tile", -1, "config.mscan.coattention_tile must be an integer >= 0"),
    ("mscan.coattention_backward", "exact", "config.mscan.coattention_backward='exact'; valid: max, autodiff"),
    ("mscan.dropout", 1.0, "config.mscan.dropout must be a finite number >= 0 and < 1"),
    ("mscan.alpha", NAN, "config.mscan.alpha must be a finite number >= 0, got nan"),
    ("mscan.alpha", -1.0, "config.mscan.alpha must be a finite number >= 0"),
    ("mscan.c", INF, "config.mscan.c must be a finite number (< 0: the dataset's default), got inf"),
    ("train.divergence_factor", 0.5, "config.train.divergence_factor must be a finite number: "
     "0 (off) or > 1, got 0.5"),
    ("train.divergence_factor", NAN, "config.train.divergence_factor must be a finite number"),
    ("seed", -1, "config.seed must be an integer >= 0, got -1"),
    ("embed_dim", 0, "config.embed_dim must be an integer >= 1"),
    ("reference.dim", 0, "config.reference.dim must be an integer >= 1"),
    ("reference.learning_rate", 0.0, "config.reference.learning_rate must be a finite number > 0"),
    ("reference.weight_decay", NAN, "config.reference.weight_decay must be a finite number >= 0"),
    ("reference.num_epochs", 0, "config.reference.num_epochs must be an integer >= 1"),
    ("single.scenario", -1, "config.single.scenario must be an integer >= 0"),
    ("distributed.num_processes", -1, "config.distributed.num_processes must be an integer >= 0"),
    ("baseline.behaviours", "all", "config.baseline.behaviours='all'; valid: cur, cur+all"),
    ("baseline.grouped_matmul", "x", "config.baseline.grouped_matmul='x'; valid: auto"),
])
def test_invalid_values_are_refused_with_their_valid_range(key, value, message):
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(_with(key, value), models.model_names())


def test_the_default_and_tiny_configs_are_valid():
  config_lib.validate(config_lib.get_config(), models.model_names())
  config_lib.validate(config_lib.get_tiny_config(), models.model_names())


@pytest.mark.parametrize("argv, message", [
    (["--config.train.nonexistent=1"],
     "--config.train.nonexistent: config.train has no field 'nonexistent'; valid: batch_size, "),
    (["--config.nope.x=1"], "--config.nope.x: config has no field 'nope'; valid: baseline, "),
    (["--config.seed.x=1"], "--config.seed.x: config.seed is a value, not a group of fields"),
    ([f"--config={config_lib.__file__}:huge"], "unknown config variant 'huge'"),
])
def test_unknown_override_keys_list_the_valid_ones(argv, message):
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.check_override_keys(["launch.py", *argv])
  config_lib.check_override_keys(["launch.py", "--config.train.clip_norm=1"])
