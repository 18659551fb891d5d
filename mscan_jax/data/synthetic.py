"""The synthetic causal benchmark: a multi-scenario log drawn from the paper's causal graph.

    python -m mscan_jax.data.synthetic --preset=default --out=DIR [--seed=N]

Paper §2.2 / Figure 2: U -> M <- I, S -> M (scenario-specific interest), M -> Y (interest
drives clicks) and S -> Y (a scenario's position and size decide whether its items are seen
at all). Real logs only record Y. This generator also records M, the liked outcome and its
probability, so that how well a model recovers interest with the scenario bias removed
(Eq. 12) can be *measured* (AUC against `true_like` / `true_prob`) and not only argued.

It is a measuring instrument: every parameter models the causal story and none is tuned to
make one model win. The generative process, per seed (all draws vectorised, no per-event
Python loop):

  Scenarios s = 1..P. Traffic share g_s ∝ s^-zipf (scenario 1 the largest; a long tail of
    small scenarios as in Cloud Theme, App. A.1). Examination probability
    e_s = 0.5 + 0.4 * bias_strength * q_s, with q_s evenly spaced in [-1, 1] and assigned to
    scenarios in a random order independent of size: bias_strength = 1 spans e_s in
    [0.1, 0.9] (barely noticed .. prominent), 0 examines every scenario alike.  (S -> Y)
  Items i. Category k(i) uniform over `num_categories` centres c_k ~ N(0, I_d); latent
    v_i = sqrt(w) c_k(i) + sqrt(1-w) n_i (w = category_weight, n_i ~ N(0, I_d)); like bias
    b_i ~ N(0, item_bias_std^2); popularity pop_i ~ LogNormal(0, popularity_sigma); a home
    scenario (every scenario gets at least a few items, the rest ∝ sqrt(g_s)).
  Users u. Base taste t_u ~ N(0, I_d); profile field `user_segment` = which of
    `num_user_segments` random prototypes has the largest inner product with a noisy copy
    of t_u (a coarse, observable hint of the taste); a number of events
    n_u ~ max(min_events_per_user, LogNormal with mean events_per_user); a set of
    `favourite_scenarios` scenarios drawn from g.
  Scenario-specific interest (S -> M): t_us = sqrt(rho) t_u + sqrt(1-rho) d_us with
    d_us ~ N(0, I_d) independent per (user, scenario) and rho = interest_overlap (1: the
    same interest everywhere; 0: independent interests per scenario).
  Events. Each event of u happens at a uniform random time; its scenario is one of u's
    favourites (uniformly) or, with probability `explore`, a draw from g; its item is drawn
    by popularity, from the whole catalogue with probability `pool_overlap`, else from the
    scenario's home pool. Exposure depends on the scenario and popularity only, NEVER on
    the user's interest.
  Outcome. p_like = sigmoid(a <t_us, v_i> / sqrt(d) + b_i + b_0) (a = interest_scale,
    b_0 = like_bias); liked ~ Bernoulli(p_like) (M); examined ~ Bernoulli(e_s) (S -> Y);
    observed click y = liked AND examined. Recorded truth: true_like = liked,
    true_prob = p_like.

Fields: user (user_id, user_segment), item (item_id, item_category), scenario (scenario_id).
Ids are contiguous and every id occurs in the log (ids are compacted in order), so the
generic-log path (`mscan_jax.data.log`, which re-indexes by sorted raw value) re-indexes the
written log to the very same ids. Rows are in time order; `timestamp` is the global event
order (one tick per event, unique), `sample_id` the row number.

Presets in `PRESETS`: tiny (tests; ~4k samples, 4 scenarios), default (the embedded
benchmark; ~100k samples, 10 scenarios, trains in minutes on 2 CPU cores), large (benchmarks
only; ~5.6M samples, 64 scenarios). Generation is vectorised numpy (large: ~20 s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mscan_jax.data import builder
from mscan_jax.data.log import LogColumns, build_atomically
from mscan_jax.data.schema import ALL_SEQ_MODES, Field

LOG_FILE = "log.parquet"          # the generic-log copy written beside the built dataset
TIME_ORIGIN = 1_700_000_000       # timestamp of the first event (seconds); one tick per event
_CHUNK = 1 << 20                  # events per block when computing p_like (bounds memory)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of the generator (see the module docstring); the defaults are the default preset."""
  num_users: int = 2200
  num_items: int = 2000
  num_scenarios: int = 10
  events_per_user: float = 45.0       # mean events per user
  events_per_user_sigma: float = 0.6  # log-normal spread of user activity
  min_events_per_user: int = 4
  latent_dim: int = 8                 # d
  scenario_zipf: float = 1.2          # traffic share g_s ∝ s^-zipf (long tail of small scenarios)
  favourite_scenarios: int = 3        # scenarios a user mostly visits
  explore: float = 0.2                # share of a user's events in a scenario drawn from g
  bias_strength: float = 1.0          # spread of examination probabilities e_s (S -> Y); 0 = none
  interest_overlap: float = 0.5       # rho: 1 = same interest in every scenario (S -> M off)
  pool_overlap: float = 0.2           # share of a scenario's impressions from the whole catalogue
  num_categories: int = 12
  category_weight: float = 0.7        # share of the item latent's variance set by its category
  num_user_segments: int = 8
  interest_scale: float = 2.0         # a
  item_bias_std: float = 0.5
  like_bias: float = -1.5             # b_0
  popularity_sigma: float = 1.0
  max_cur_len: int = 10               # Ls
  max_all_len: int = 20               # Lh
  all_seq_mode: str = "impressions"
  seed: int = 0

  def __post_init__(self):
    checks = [
        (self.num_users >= 1, "num_users must be >= 1"),
        (self.num_items >= 1, "num_items must be >= 1"),
        (self.num_scenarios >= 2, "num_scenarios must be >= 2 (a multi-scenario log)"),
        (self.events_per_user > 0, "events_per_user must be > 0"),
        (self.events_per_user_sigma >= 0, "events_per_user_sigma must be >= 0"),
        (self.min_events_per_user >= 1, "min_events_per_user must be >= 1"),
        (self.latent_dim >= 1, "latent_dim must be >= 1"),
        (self.scenario_zipf >= 0, "scenario_zipf must be >= 0"),
        (self.favourite_scenarios >= 1, "favourite_scenarios must be >= 1"),
        (0 <= self.explore <= 1, "explore must be in [0, 1]"),
        (0 <= self.bias_strength <= 1, "bias_strength must be in [0, 1]"),
        (0 <= self.interest_overlap <= 1, "interest_overlap must be in [0, 1]"),
        (0 <= self.pool_overlap <= 1, "pool_overlap must be in [0, 1]"),
        (self.num_categories >= 1, "num_categories must be >= 1"),
        (0 <= self.category_weight <= 1, "category_weight must be in [0, 1]"),
        (self.num_user_segments >= 1, "num_user_segments must be >= 1"),
        (self.item_bias_std >= 0 and self.popularity_sigma >= 0, "standard deviations must be >= 0"),
        (self.max_cur_len >= 1 and self.max_all_len >= 1, "max_cur_len and max_all_len must be >= 1"),
        (self.all_seq_mode in ALL_SEQ_MODES, f"all_seq_mode must be one of {ALL_SEQ_MODES}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f"SyntheticConfig: {message}")


PRESETS: dict[str, SyntheticConfig] = {
    # Tests: ~4k events, 4 scenarios; builds in well under a second.
    "tiny": SyntheticConfig(num_users=200, num_items=300, num_scenarios=4, events_per_user=20.0,
                            latent_dim=8, scenario_zipf=1.0, num_categories=8,
                            num_user_segments=4, max_cur_len=5, max_all_len=10),
    # The embedded benchmark: ~100k samples, 10 scenarios with a long tail, Ls 10, Lh 20.
    "default": SyntheticConfig(),
    # Benchmarks only: ~5.6M samples, 64 scenarios, Ls 20, Lh 50.
    "large": SyntheticConfig(num_users=125_000, num_items=100_000, num_scenarios=64,
                             events_per_user=45.0, scenario_zipf=1.1, num_categories=200,
                             num_user_segments=16, max_cur_len=20, max_all_len=50),
}


def get_preset(preset: str, **overrides: Any) -> SyntheticConfig:
  if preset not in PRESETS:
    raise ValueError(f"unknown synthetic preset {preset!r}; valid: {', '.join(PRESETS)}")
  return dataclasses.replace(PRESETS[preset], **overrides)


# ---------------------------------------------------------------------------------------
# Generation


@dataclasses.dataclass
class Truth:
  """World parameters that a real log never reveals (for reports and checks)."""
  examination: np.ndarray     # (P,) e_s of scenario id s = index + 1
  traffic: np.ndarray         # (P,) g_s


def generate(cfg: SyntheticConfig) -> tuple[builder.EventLog, Truth]:
  """Draws the event log (rows in time order) and the hidden world parameters."""
  rng_scen, rng_item, rng_user, rng_event, rng_outcome = (
      np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(5))
  p, n_items, n_users, d = cfg.num_scenarios, cfg.num_items, cfg.num_users, cfg.latent_dim

  # Scenarios: long-tailed traffic, examination probability independent of size (S -> Y).
  traffic = np.arange(1, p + 1, dtype=np.float64) ** -cfg.scenario_zipf
  traffic /= traffic.sum()                                              # (P,)
  spread = rng_scen.permutation(np.linspace(-1.0, 1.0, p))
  examination = 0.5 + 0.4 * cfg.bias_strength * spread                  # (P,)

  # Items: category centres, latents, like bias, popularity, home scenario.
  centres = rng_item.standard_normal((cfg.num_categories, d))
  category = rng_item.integers(cfg.num_categories, size=n_items)        # (N,)
  w = cfg.category_weight
  v = np.sqrt(w) * centres[category] + np.sqrt(1 - w) * rng_item.standard_normal((n_items, d))
  item_bias = cfg.item_bias_std * rng_item.standard_normal(n_items)     # (N,)
  popularity = rng_item.lognormal(0.0, cfg.popularity_sigma, n_items)   # (N,)
  min_pool = max(1, min(5, n_items // p))
  home = np.concatenate([np.repeat(np.arange(p), min_pool)[:n_items],
                         rng_item.choice(p, size=max(0, n_items - p * min_pool),
                                         p=np.sqrt(traffic) / np.sqrt(traffic).sum())])
  home = rng_item.permutation(home)                                     # (N,)

  # Users: taste, profile segment, activity, favourite scenarios.
  taste = rng_user.standard_normal((n_users, d))                        # (U, d)
  prototypes = rng_user.standard_normal((cfg.num_user_segments, d))
  noisy = taste + 0.5 * rng_user.standard_normal((n_users, d))
  segment = np.argmax(noisy @ prototypes.T, axis=1)                     # (U,)
  sigma = cfg.events_per_user_sigma
  n_events = rng_user.lognormal(np.log(cfg.events_per_user) - sigma ** 2 / 2, sigma, n_users)
  n_events = np.maximum(cfg.min_events_per_user, np.rint(n_events)).astype(np.int64)
  favourites = _sample(traffic, (n_users, cfg.favourite_scenarios), rng_user)  # (U, k)

  # Events: user, scenario, item (exposure by popularity only), time.
  ev_user = np.repeat(np.arange(n_users), n_events)                     # (E,)
  e = ev_user.shape[0]
  pick = rng_event.integers(cfg.favourite_scenarios, size=e)
  explore = rng_event.random(e) < cfg.explore
  ev_scen = np.where(explore, _sample(traffic, e, rng_event), favourites[ev_user, pick])
  catalogue = rng_event.random(e) < cfg.pool_overlap
  ev_item = np.where(catalogue, _sample(popularity, e, rng_event),
                     _draw_from_pools(home, popularity, ev_scen, p, rng_event))
  # Times are i.i.d. uniform, so the time order of the events is a uniformly random
  # permutation: drawn directly (O(E)) instead of sorting drawn times.
  order = rng_event.permutation(e)

  # Interest (S -> M) and outcome (M -> Y, S -> Y).
  pair = _compact(ev_user * p + ev_scen) - 1                            # (E,) index of (u, s)
  shift = rng_outcome.standard_normal((int(pair.max()) + 1, d), dtype=np.float32)  # d_us
  rho = cfg.interest_overlap
  taste32, v32 = taste.astype(np.float32), v.astype(np.float32)
  match = np.empty(e, np.float64)                                       # <t_us, v_i> / sqrt(d)
  for lo in range(0, e, _CHUNK):                                        # blocks bound memory
    sl = slice(lo, lo + _CHUNK)
    t_us = np.sqrt(rho) * taste32[ev_user[sl]] + np.sqrt(1 - rho) * shift[pair[sl]]  # (C, d)
    match[sl] = np.einsum("cd,cd->c", t_us, v32[ev_item[sl]]) / np.sqrt(d)
  logit = cfg.interest_scale * match + item_bias[ev_item] + cfg.like_bias
  p_like = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)           # (E,)
  liked = rng_outcome.random(e) < p_like
  examined = rng_outcome.random(e) < examination[ev_scen]
  click = liked & examined

  # Time order, then contiguous ids in which every id occurs.
  ev_user, ev_scen, ev_item = ev_user[order], ev_scen[order], ev_item[order]
  liked, click, p_like = liked[order], click[order], p_like[order]
  item_id = _compact(ev_item)
  item_cat = _compact(category[ev_item])
  user_seg = _compact(segment[ev_user])
  scen_id = _compact(ev_scen)
  user_ids = _compact(ev_user)

  def field(name, ids):
    return Field(name, int(ids.max()) + 1)

  log = builder.EventLog(
      user=np.stack([user_ids, user_seg], 1), item=np.stack([item_id, item_cat], 1),
      scenario=scen_id[:, None], label=click.astype(np.int8),
      user_id=(user_ids - 1).astype(np.int32),
      user_fields=(field("user_id", user_ids), field("user_segment", user_seg)),
      item_fields=(field("item_id", item_id), field("item_category", item_cat)),
      scenario_fields=(field("scenario_id", scen_id),),
      time=TIME_ORIGIN + np.arange(e, dtype=np.int64), sample_id=np.arange(e, dtype=np.int64),
      true_like=liked.astype(np.int8), true_prob=p_like,
      source=f"synthetic(seed={cfg.seed})")
  present = np.unique(ev_scen)
  return log, Truth(examination=examination[present], traffic=traffic[present])


def _draw_from_pools(home: np.ndarray, weight: np.ndarray, scen: np.ndarray, p: int,
                     rng: np.random.Generator) -> np.ndarray:
  """For each event, an item of its scenario's home pool with probability ∝ weight.

  Items sorted by home scenario get keys s + (cumulative weight within the pool), the last
  key of pool s being exactly s + 1; an event of scenario s draws x = s + U[0, 1) and takes
  the first item whose key exceeds x.
  """
  by_home = np.argsort(home, kind="stable")                             # (N,)
  h, wt = home[by_home], weight[by_home]
  pool_total = np.bincount(h, weights=wt, minlength=p)                  # (P,)
  starts = np.searchsorted(h, np.arange(p))
  cum = np.cumsum(wt)
  before = np.concatenate([[0.0], cum])[starts]                         # (P,) weight before pool
  key = h + (cum - before[h]) / pool_total[h]
  last = np.r_[h[1:] != h[:-1], True]
  key[last] = h[last] + 1.0
  pos = np.searchsorted(key, scen + rng.random(scen.shape[0]), side="right")
  return by_home[np.minimum(pos, key.shape[0] - 1)]


def _sample(weights: np.ndarray, size, rng: np.random.Generator) -> np.ndarray:
  """Indices drawn with probability ∝ weights (inverse CDF; like rng.choice, faster)."""
  cdf = np.cumsum(weights, dtype=np.float64)
  idx = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
  return np.minimum(idx, weights.shape[0] - 1)


def _compact(values: np.ndarray) -> np.ndarray:
  """Ids 1..V in sorted order of the distinct values (the generic loader's re-indexing).

  `values` are non-negative integers; O(E + max) with a presence table instead of a sort.
  """
  if int(values.max()) > 8 * values.size:                               # sparse keys: sort
    return (np.unique(values, return_inverse=True)[1] + 1).astype(np.int32)
  present = np.zeros(int(values.max()) + 1, bool)
  present[values] = True
  new_id = np.cumsum(present, dtype=np.int64)                           # 1..V at present values
  return new_id[values].astype(np.int32)


# ---------------------------------------------------------------------------------------
# Writing


LOG_COLUMNS_KW = dict(user="user_id", item="item_id", scenario="scenario_id", label="label",
                      time="timestamp", user_extra=("user_segment",),
                      item_extra=("item_category",), true_like="true_like",
                      true_prob="true_prob")


def log_columns() -> LogColumns:
  """The `LogColumns` of the generic log that `write_log` writes."""
  return LogColumns(**LOG_COLUMNS_KW)


def write_log(log: builder.EventLog, path: str) -> None:
  """Writes the event log as a generic Parquet log (one row per event, columns by field)."""
  cols: dict[str, np.ndarray] = {}
  for fields, arr in ((log.user_fields, log.user), (log.item_fields, log.item),
                      (log.scenario_fields, log.scenario)):
    for j, f in enumerate(fields):
      cols[f.name] = np.asarray(arr[:, j], np.int64)
  cols["label"] = np.asarray(log.label, np.int8)
  cols["timestamp"] = np.asarray(log.time, np.int64)
  if log.true_like is not None:
    cols["true_like"] = np.asarray(log.true_like, np.int8)
    cols["true_prob"] = np.asarray(log.true_prob, np.float32)
  pq.write_table(pa.table(cols), path)


def world_stats(cfg: SyntheticConfig, log: builder.EventLog, truth: Truth) -> dict[str, Any]:
  """The generator's parameters and hidden truth per scenario (merged into stats.json).

  The builder adds the observed click rate and the true-interest rate per scenario.
  """
  return {
      "generator": dataclasses.asdict(cfg),
      "generated_events": int(log.label.shape[0]),
      "examination_prob_per_scenario": {str(k + 1): round(float(x), 4)
                                        for k, x in enumerate(truth.examination)},
      "traffic_share_per_scenario": {str(k + 1): round(float(x), 4)
                                     for k, x in enumerate(truth.traffic)},
  }


def format_world(stats: dict[str, Any]) -> str:
  """Per scenario: examination probability e_s, observed click rate, true-interest rate."""
  exam = stats["examination_prob_per_scenario"]
  click, true = stats["click_rate_per_scenario"], stats.get("true_interest_rate_per_scenario", {})
  lines = [f"{'scenario':>9} {'e_s':>7} {'click rate':>11} {'true rate':>10} {'click/true':>11}"]
  for k, e_s in exam.items():
    c, t = click.get(k, float("nan")), true.get(k, float("nan"))
    lines.append(f"{'#' + k:>9} {e_s:>7.3f} {c:>11.4f} {t:>10.4f} {c / t if t else float('nan'):>11.3f}")
  return "\n".join(lines)


def build_synthetic(cfg: SyntheticConfig, out_dir: str, *, write_log_file: bool = True,
                    name: str = "synthetic") -> dict[str, Any]:
  """Generates the log, writes the built dataset into `out_dir` (and `out_dir/log.parquet`)."""
  log, truth = generate(cfg)
  stats = builder.build_dataset(
      out_dir, log, max_cur_len=cfg.max_cur_len, max_all_len=cfg.max_all_len,
      all_seq_mode=cfg.all_seq_mode, name=name, extra_stats=world_stats(cfg, log, truth))
  if write_log_file:
    write_log(log, os.path.join(out_dir, LOG_FILE))
  return stats


def ensure_synthetic(preset: str, seed: int, cache_dir: str, **overrides: Any) -> str:
  """Path of the built synthetic dataset `preset`/`seed`, generated once into `cache_dir`.

  Built into a temporary directory and renamed into place, so a crashed or concurrent build
  never leaves a half-written dataset under the final name. Overrides of generator
  parameters (e.g. bias_strength=0.0) get their own directory.
  """
  cfg = get_preset(preset, seed=int(seed), **overrides)
  suffix = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
  # The generator's full parameter set is part of the name: a cache built by an earlier
  # version of a preset is never mistaken for the current one.
  digest = hashlib.sha1(repr(cfg).encode()).hexdigest()[:8]
  path = os.path.join(cache_dir, f"synthetic-{preset}-seed{int(seed)}{suffix}-{digest}")
  build_atomically(path, lambda tmp: build_synthetic(cfg, tmp, name=f"synthetic-{preset}"))
  return path


# ---------------------------------------------------------------------------------------
# Command line


def _define_flags():
  from absl import flags
  flags.DEFINE_enum("preset", "default", list(PRESETS), "Generator preset.")
  flags.DEFINE_string("out", None, "Output directory of the built dataset.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the generator.")
  flags.DEFINE_float("bias_strength", None, "Override: spread of the examination probabilities.")
  flags.DEFINE_float("interest_overlap", None, "Override: rho, overlap of interests across scenarios.")
  flags.DEFINE_integer("num_users", None, "Override: number of users.")
  flags.DEFINE_integer("num_items", None, "Override: number of items.")
  flags.DEFINE_integer("num_scenarios", None, "Override: number of scenarios.")


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  overrides = {k: getattr(f, k) for k in ("bias_strength", "interest_overlap", "num_users",
                                          "num_items", "num_scenarios") if getattr(f, k) is not None}
  cfg = get_preset(f.preset, seed=f.seed, **overrides)
  start = time.perf_counter()
  stats = build_synthetic(cfg, f.out, name=f"synthetic-{f.preset}")
  seconds = time.perf_counter() - start
  print(builder.format_stats(stats))
  print("scenario bias (S -> Y): examination probability e_s against the observed click rate")
  print(format_world(stats))
  print(f"built dataset: {f.out}")
  print(f"generic log:   {os.path.join(f.out, LOG_FILE)}")
  print(f"generated and built in {seconds:.1f} s")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
