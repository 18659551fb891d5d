"""The synthetic causal benchmark: a multi-scenario log drawn from the paper's causal graph,
with one named dial per causal arrow.

    python -m mscan_jax.data.synthetic --preset=default --out=DIR [--seed=N] [--exposure_bias=X]
        [--scenario_interest=X] [--transfer=X] [--drift=X]

(The reference scorers' check of a preset: `python -m mscan_jax.training.references`.)

Paper §2.2 / Figure 2: U -> M <- I (users and items make the interest M), S -> M (the scenario
changes the interest), M -> Y (interest drives clicks) and S -> Y (the scenario decides whether
an item is seen at all). Real logs only record Y. This generator also records the liked outcome
(M), its probability and the examination probability of every impression, so that how well a
model recovers interest with the scenario bias removed (Eq. 12) can be *measured*, not argued.

It is a measuring instrument, designed without looking at any model's result: each mechanism is
one named field of `SyntheticConfig` (a dial), and each dial's placebo value 0 switches its
mechanism off exactly while every random draw stays the same (common random numbers: the same
seed gives the same users, items, events and noise at every dial setting, so a grid that moves
one dial changes nothing else).

The dials
---------
  dial               arrow                       placebo 0 means
  exposure_bias      S -> Y                      every impression is examined with prob exam_base
  scenario_interest  S -> M                      a user has the same interest in every scenario
  transfer           S -> M, shared by related   scenario-specific parts of different scenarios
                     scenarios (what SACA reads    are independent
                     from H_u)
  drift              interest moves over time    a user's interest is constant over the timeline

`dial_statistics` computes the generator's own statistic of each mechanism from the hidden
latents and the log (no model); `DIAL_LEVELS` fixes placebo / moderate / strong from them, on
the default preset (seed 0):

  exposure_bias      exam_ratio: mean examination probability of the impressions of the most
                     examined scenario / of the least examined one. 1 at 0; moderate 1.1 gives
                     3.0, strong 2.2 gives 8.8 (seeds 1-4: 2.7-3.0 and 5.9-8.8: the ratio also
                     depends on which slope b_s the least prominent scenario drew). Side
                     statistics: exam_ratio_median_item, the same ratio for an item of median
                     popularity between the most and least prominent scenarios (seed-free:
                     e^exposure_bias at exam_base 0.5); popularity_rank_corr, the mean over
                     scenarios of the rank correlation between item popularity and the item's
                     click/like ratio in that scenario (0 at 0: > 0 means the raw click rate
                     overstates popular items; 0.40 moderate, 0.53 strong).
  scenario_interest  specific_share: the share of the interest variance that is specific to
                     (user, scenario) (= sigma in expectation). 0 at 0; moderate 0.3, strong 0.6.
  transfer           related_corr: the correlation of the scenario-specific parts d_us of one
                     user in two related scenarios (= tau in expectation; unrelated_corr, the
                     same between unrelated scenarios, is 0 at every tau). moderate 0.5,
                     strong 0.9.
  drift              start_end_corr: the correlation of a user's interest at the start and at the
                     end of the timeline (= cos(delta pi / 2)). 1 at 0; moderate 0.7
                     (delta 0.506), strong 0.2 (delta 0.872).

The default preset sits at the moderate level of every dial.

The generative process (per seed; every draw vectorised, no per-event Python loop)
-----------------------------------------------------------------------------------
  Scenarios s = 1..P. Traffic share g_s ∝ s^-scenario_zipf (scenario 1 the largest). Related
    scenarios: the scenarios in a random order, cut into groups of `scenario_groups` (pairs by
    default; independent of traffic, so a small scenario may be related to a large one).
    Prominence a_s: evenly spaced in [-1, 1], randomly permuted (independent of traffic);
    popularity slope b_s: evenly spaced in [0, SLOPE_MAX = 0.5], independently permuted.
  Items i. Category k(i) uniform over `num_categories` centres c_k ~ N(0, I_d); latent
    v_i = sqrt(w) c_k(i) + sqrt(1-w) n_i (w = category_weight); like bias
    b_i ~ N(0, item_bias_std^2); popularity pop_i ~ LogNormal(0, popularity_sigma), drawn
    independently of b_i and v_i (popular items are not better liked); a home scenario (every
    scenario gets a few items, the rest ∝ sqrt(g_s)). z_i = log pop_i standardised over the
    impressions (mean 0, sd 1 when weighted by popularity, as impressions are drawn).
  Examination (S -> Y), per (scenario, item):
      logit e_si = logit(exam_base) + exposure_bias * (a_s + b_s z_i).
    It depends on the scenario and on the item, differently per scenario, and never on the
    user's interest. Since b_s >= 0, popular items are examined more in most scenarios, so a
    raw click rate overstates popular items' interest.
  Users u. Activity n_u ~ max(min_events_per_user, LogNormal with mean events_per_user);
    `favourite_scenarios` favourites drawn from g. Profile field `user_segment`: which of
    `num_user_segments` random prototypes has the largest inner product with a noisy copy of
    the user's starting base taste (a coarse, observable hint).
  Interest (S -> M, transfer). Two independent draws k = 0, 1 of the whole structure, each
    component N(0, I_d):
      d^k_us = sqrt(tau) g^k_{u,group(s)} + sqrt(1 - tau) eps^k_us         (tau = transfer)
      X^k_us = sqrt(1 - sigma) t^k_u + sqrt(sigma) d^k_us        (sigma = scenario_interest)
    so every X has unit variance per coordinate.
  Drift. An event at time fraction f in [0, 1) (of the whole timeline) sees
      t_us(f) = cos(delta pi/2 f) X^0_us + sin(delta pi/2 f) X^1_us        (delta = drift),
    which keeps the variance.
  Events. Each event of u happens at a uniform random time; rows are sorted by time, and
    timestamps strictly increase (TIME_ORIGIN + seconds over a TIMELINE_SECONDS timeline, ties
    moved one second apart). Its scenario is one of u's favourites (uniformly) or, with
    probability `explore`, a draw from g; its item is drawn by popularity, from the whole
    catalogue with probability `pool_overlap`, else from the scenario's home pool. Which items
    are shown never depends on the user's interest. The first `warmup_fraction` of the
    timeline is history only (EventLog.is_sample = False): those events enter S_u and H_u but
    no split, so training samples see histories about as long as test samples.
  Outcome. p_like = sigmoid(a <t_us(f), v_i> / sqrt(d) + b_i + b_0) (a = interest_scale,
    b_0 = like_bias); liked ~ Bernoulli(p_like) (M); examined ~ Bernoulli(e_si), independent
    of liked (S -> Y); observed click y = liked AND examined. Truth: true_like = liked,
    true_prob = p_like, true_exam = e_si; P(click) = e_si * p_like.

Where the simulation differs from M-scan's own form (so that no model is built in):
  - the click probability is a product of probabilities e_si * p_like; M-scan fuses an
    unbounded interest score with a scenario gate, y = y_m * sigmoid(y_s) (Eq. 8), fits
    sigmoid(y) to the click (Eq. 9) and infers (y_m - c) * sigmoid(y_s) (Eq. 12);
  - the examination depends on the item (its popularity, with a scenario-specific slope) as
    well as on the scenario; M-scan's scenario tower y_s sees only the scenario;
  - interest is a bilinear latent factor model with a smooth drift, transfer between scenarios
    follows fixed groups of related scenarios (a block structure), and nothing is a sequence
    model: the co-attention and the GRU have to discover this structure from the behaviours.

Fields: user (user_id, user_segment), item (item_id, item_category), scenario (scenario_id).
Ids are contiguous and every id occurs in the log (ids are compacted in order), so the
generic-log path (`mscan_jax.data.log`, which re-indexes by sorted raw value) re-indexes the
written log to the very same ids. `sample_id` is the row number (warm-up rows included).

Presets in `PRESETS`:
  tiny     tests: 200 users, 300 items, 4 scenarios, ~6.8k events, ~4k samples; < 1 s.
  default  the embedded benchmark; its sizes are the first fields of `SyntheticConfig` (one
           place to change them): 400 users, 1,000 items, 6 scenarios (zipf 1.0), ~500
           events per user of which 40% warm-up: ~200k events, ~120k samples, every scenario
           with >= 2,000 test samples; ~1 s. Chosen from the learning curve of the reference
           scorers (`benchmarks/learning_curve.py`): at a constant ~200k events, moving data
           from users to events per user (1200 x 165, 800 x 250, 600 x 330, 400 x 500) raised
           MF's mean gain over popularity from 0.06 to 0.10 AUC; 400 x 500 is the first size
           whose mean gain is twice the 0.05 that every scenario must show.
  large    benchmarks only: 100k users, 100k items, 64 scenarios, ~7M events, ~4.2M samples;
           ~20 s, ~2 GB.
`build_synthetic` also records, in the built dataset's statistics,
the dial statistics and model-free reference figures (`reference_figures`): the share of
samples with an empty S_u per split, and per scenario the AUC against the observed click of
the oracle (true_prob, and e_si * p_like) and of the item click rate counted on the training
split (popularity).
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
from mscan_jax.data.schema import ALL_SEQ_MODES, SPLITS, BuiltDataset, Field, save_json
from mscan_jax.evaluation import metrics

LOG_FILE = "log.parquet"          # the generic-log copy written beside the built dataset
TIME_ORIGIN = 1_700_000_000       # timestamp of the start of the timeline (seconds)
TIMELINE_SECONDS = 180 * 86_400   # length of the timeline (ties are moved one second apart)
_CHUNK = 1 << 20                  # events per block when computing p_like (bounds memory)
_STATS_USERS = 4096               # users whose latents enter the transfer statistic
SLOPE_MAX = 0.5                   # popularity slopes b_s are evenly spaced in [0, SLOPE_MAX]

DIALS = ("exposure_bias", "scenario_interest", "transfer", "drift")

# Placebo / moderate / strong of each dial, fixed from `dial_statistics` on the default preset
# (module docstring): the statistic each level maps to is in DIAL_STATISTIC.
DIAL_LEVELS: dict[str, dict[str, float]] = {
    "exposure_bias": {"placebo": 0.0, "moderate": 1.1, "strong": 2.2},      # exam_ratio 3.0, 8.8
    "scenario_interest": {"placebo": 0.0, "moderate": 0.3, "strong": 0.6},  # specific_share
    "transfer": {"placebo": 0.0, "moderate": 0.5, "strong": 0.9},           # related_corr
    "drift": {"placebo": 0.0, "moderate": 0.506, "strong": 0.872},          # start_end_corr .7, .2
}
DIAL_STATISTIC = {"exposure_bias": "exam_ratio", "scenario_interest": "specific_share",
                  "transfer": "related_corr", "drift": "start_end_corr"}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of the generator (module docstring); the defaults are the default preset."""
  # Sizes of the default preset: the one place where they are set.
  num_users: int = 400
  num_items: int = 1000
  num_scenarios: int = 6
  events_per_user: float = 500.0      # mean events per user, warm-up included
  latent_dim: int = 6                 # d
  scenario_zipf: float = 1.0          # traffic share g_s ∝ s^-zipf (a mild long tail)
  num_categories: int = 12
  num_user_segments: int = 8
  max_cur_len: int = 10               # Ls
  max_all_len: int = 20               # Lh
  # The dials (one per causal arrow; 0 switches the mechanism off exactly).
  exposure_bias: float = DIAL_LEVELS["exposure_bias"]["moderate"]          # S -> Y, >= 0
  scenario_interest: float = DIAL_LEVELS["scenario_interest"]["moderate"]  # S -> M, sigma
  transfer: float = DIAL_LEVELS["transfer"]["moderate"]                    # tau
  drift: float = DIAL_LEVELS["drift"]["moderate"]                          # delta
  # The rest of the world.
  exam_base: float = 0.5              # examination probability at exposure_bias 0
  scenario_groups: int = 2            # size of a group of related scenarios
  warmup_fraction: float = 0.4        # leading share of the timeline that is history only
  events_per_user_sigma: float = 0.5  # log-normal spread of user activity
  min_events_per_user: int = 4
  favourite_scenarios: int = 3        # scenarios a user mostly visits
  explore: float = 0.2                # share of a user's events in a scenario drawn from g
  pool_overlap: float = 0.2           # share of a scenario's impressions from the whole catalogue
  category_weight: float = 0.7        # share of the item latent's variance set by its category
  interest_scale: float = 2.5         # a
  item_bias_std: float = 0.5
  like_bias: float = -1.0             # b_0
  popularity_sigma: float = 1.0
  all_seq_mode: str = "impressions"
  seed: int = 0

  def __post_init__(self):
    checks = [
        (self.num_users >= 1, "num_users must be >= 1"),
        (self.num_items >= 1, "num_items must be >= 1"),
        (self.num_scenarios >= 2, "num_scenarios must be >= 2 (a multi-scenario log)"),
        (self.events_per_user > 0, "events_per_user must be > 0"),
        (self.latent_dim >= 1, "latent_dim must be >= 1"),
        (self.scenario_zipf >= 0, "scenario_zipf must be >= 0"),
        (self.num_categories >= 1, "num_categories must be >= 1"),
        (self.num_user_segments >= 1, "num_user_segments must be >= 1"),
        (self.max_cur_len >= 1 and self.max_all_len >= 1, "max_cur_len and max_all_len must be >= 1"),
        (self.exposure_bias >= 0, "exposure_bias must be >= 0"),
        (0 <= self.scenario_interest <= 1, "scenario_interest must be in [0, 1]"),
        (0 <= self.transfer <= 1, "transfer must be in [0, 1]"),
        (0 <= self.drift <= 1, "drift must be in [0, 1]"),
        (0 < self.exam_base < 1, "exam_base must be in (0, 1)"),
        (self.scenario_groups >= 1, "scenario_groups must be >= 1"),
        (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
        (self.events_per_user_sigma >= 0, "events_per_user_sigma must be >= 0"),
        (self.min_events_per_user >= 1, "min_events_per_user must be >= 1"),
        (self.favourite_scenarios >= 1, "favourite_scenarios must be >= 1"),
        (0 <= self.explore <= 1, "explore must be in [0, 1]"),
        (0 <= self.pool_overlap <= 1, "pool_overlap must be in [0, 1]"),
        (0 <= self.category_weight <= 1, "category_weight must be in [0, 1]"),
        (self.item_bias_std >= 0 and self.popularity_sigma >= 0, "standard deviations must be >= 0"),
        (self.all_seq_mode in ALL_SEQ_MODES, f"all_seq_mode must be one of {ALL_SEQ_MODES}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f"SyntheticConfig: {message}")


PRESETS: dict[str, SyntheticConfig] = {
    # Tests: ~4k samples (~6.8k events with the warm-up), 4 scenarios; builds in under a second.
    "tiny": SyntheticConfig(num_users=200, num_items=300, num_scenarios=4, events_per_user=34.0,
                            latent_dim=6, num_categories=8, num_user_segments=4, max_cur_len=5,
                            max_all_len=10),
    # The embedded benchmark: the defaults above.
    "default": SyntheticConfig(),
    # Benchmarks only: ~4.2M samples, 64 scenarios, Ls 20, Lh 50.
    "large": SyntheticConfig(num_users=100_000, num_items=100_000, num_scenarios=64,
                             events_per_user=70.0, latent_dim=8, scenario_zipf=1.1,
                             num_categories=200, num_user_segments=16, max_cur_len=20,
                             max_all_len=50),
}


def get_preset(preset: str, **overrides: Any) -> SyntheticConfig:
  if preset not in PRESETS:
    raise ValueError(f"unknown synthetic preset {preset!r}; valid: {', '.join(PRESETS)}")
  return dataclasses.replace(PRESETS[preset], **overrides)


# ---------------------------------------------------------------------------------------
# Generation


@dataclasses.dataclass
class Truth:
  """World parameters that a real log never reveals (for the dial statistics and reports).

  Per-scenario arrays are indexed by scenario id (entry 0 unused), per-item arrays by item id.
  The interest latents are stored per (user, scenario) pair that occurs in the log.
  """
  traffic: np.ndarray         # (P+1,) g_s
  prominence: np.ndarray      # (P+1,) a_s
  slope: np.ndarray           # (P+1,) b_s
  group: np.ndarray           # (P+1,) group of related scenarios (-1 at index 0)
  item_z: np.ndarray          # (N+1,) standardised log popularity z_i
  pair_user: np.ndarray       # (K,) user index (user id - 1) of each (user, scenario) pair
  pair_scen: np.ndarray       # (K,) scenario id of each pair
  base: np.ndarray            # (2, K, d) t^k_u of the pair's user, draws k = 0, 1
  specific: np.ndarray        # (2, K, d) d^k_us


def _interest_pairs(truth: Truth, cfg: SyntheticConfig) -> np.ndarray:
  """X^k_us (2, K, d) of every stored pair."""
  s = cfg.scenario_interest
  return (np.sqrt(1 - s) * truth.base + np.sqrt(s) * truth.specific).astype(np.float32)


def generate(cfg: SyntheticConfig) -> tuple[builder.EventLog, Truth]:
  """Draws the event log (rows in time order, warm-up rows first) and the hidden world."""
  rng_scen, rng_item, rng_user, rng_event, rng_outcome, rng_latent = (
      np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6))
  p, n_items, n_users, d = cfg.num_scenarios, cfg.num_items, cfg.num_users, cfg.latent_dim

  # Scenarios: long-tailed traffic; groups, prominence and slope independent of traffic.
  traffic = np.arange(1, p + 1, dtype=np.float64) ** -cfg.scenario_zipf
  traffic /= traffic.sum()                                              # (P,)
  group = np.empty(p, np.int64)
  group[rng_scen.permutation(p)] = np.arange(p) // cfg.scenario_groups  # (P,)
  prominence = rng_scen.permutation(np.linspace(-1.0, 1.0, p))          # (P,) a_s
  slope = rng_scen.permutation(np.linspace(0.0, SLOPE_MAX, p))          # (P,) b_s

  # Items: category centres, latents, like bias, popularity (independent), home scenario.
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
  log_pop = np.log(popularity)
  wt = popularity / popularity.sum()                                    # impression weights
  mean = float(wt @ log_pop)
  sd = float(np.sqrt(wt @ (log_pop - mean) ** 2))
  z = (log_pop - mean) / sd if sd > 0 else np.zeros(n_items)            # (N,)

  # Users: activity, favourite scenarios.
  sigma = cfg.events_per_user_sigma
  n_events = rng_user.lognormal(np.log(cfg.events_per_user) - sigma ** 2 / 2, sigma, n_users)
  n_events = np.maximum(cfg.min_events_per_user, np.rint(n_events)).astype(np.int64)
  favourites = _sample(traffic, (n_users, cfg.favourite_scenarios), rng_user)  # (U, k)

  # Events: user, time, scenario, item (exposure by popularity and scenario only).
  ev_user = np.repeat(np.arange(n_users), n_events)                     # (E,)
  e = ev_user.shape[0]
  frac = rng_event.random(e)                                            # (E,) time fraction f
  order = np.argsort(frac, kind="stable")
  ev_user, frac = ev_user[order], frac[order]                           # time order from here
  pick = rng_event.integers(cfg.favourite_scenarios, size=e)
  explore = rng_event.random(e) < cfg.explore
  ev_scen = np.where(explore, _sample(traffic, e, rng_event), favourites[ev_user, pick])
  catalogue = rng_event.random(e) < cfg.pool_overlap
  ev_item = np.where(catalogue, _sample(popularity, e, rng_event),
                     _draw_from_pools(home, popularity, ev_scen, p, rng_event))

  # Interest latents of every (user, scenario) pair that occurs: two draws k = 0, 1.
  pair_key, pair = np.unique(ev_user * p + ev_scen, return_inverse=True)   # (K,), (E,)
  pair_u, pair_s = pair_key // p, pair_key % p
  group_key, pair_g = np.unique(pair_u * p + group[pair_s], return_inverse=True)
  taste = rng_latent.standard_normal((2, n_users, d)).astype(np.float32)   # t^k_u
  shared = rng_latent.standard_normal((2, group_key.shape[0], d)).astype(np.float32)  # g^k
  own = rng_latent.standard_normal((2, pair_key.shape[0], d)).astype(np.float32)      # eps^k
  tau = cfg.transfer
  specific = (np.sqrt(tau) * shared[:, pair_g] + np.sqrt(1 - tau) * own).astype(np.float32)
  base = taste[:, pair_u]                                               # (2, K, d)
  prototypes = rng_user.standard_normal((cfg.num_user_segments, d))
  noisy = taste[0] + 0.5 * rng_user.standard_normal((n_users, d))
  segment = np.argmax(noisy @ prototypes.T, axis=1)                     # (U,)

  # Outcome: interest at the event's time (S -> M, drift), examination (S -> Y).
  sc = cfg.scenario_interest
  x = (np.sqrt(1 - sc) * base + np.sqrt(sc) * specific).astype(np.float32)  # (2, K, d) X^k_us
  v32 = v.astype(np.float32)
  angle = cfg.drift * np.pi / 2 * frac                                  # (E,)
  cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
  match = np.empty(e, np.float64)                                       # <t_us(f), v_i> / sqrt(d)
  for lo in range(0, e, _CHUNK):                                        # blocks bound memory
    sl = slice(lo, lo + _CHUNK)
    t_us = cos[sl, None] * x[0, pair[sl]] + sin[sl, None] * x[1, pair[sl]]  # (C, d)
    match[sl] = np.einsum("cd,cd->c", t_us, v32[ev_item[sl]]) / np.sqrt(d)
  logit = cfg.interest_scale * match + item_bias[ev_item] + cfg.like_bias
  p_like = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)           # (E,)
  exam_logit = (np.log(cfg.exam_base / (1 - cfg.exam_base))
                + cfg.exposure_bias * (prominence[ev_scen] + slope[ev_scen] * z[ev_item]))
  p_exam = (1.0 / (1.0 + np.exp(-exam_logit))).astype(np.float32)      # (E,) e_si
  liked = rng_outcome.random(e) < p_like
  examined = rng_outcome.random(e) < p_exam
  click = liked & examined

  # Contiguous ids in which every id occurs.
  item_id = _compact(ev_item)
  item_cat = _compact(category[ev_item])
  user_seg = _compact(segment[ev_user])
  scen_id = _compact(ev_scen)
  user_ids = _compact(ev_user)

  def field(name, ids):
    return Field(name, int(ids.max()) + 1)

  seconds = np.floor(frac * TIMELINE_SECONDS).astype(np.int64)
  steps = np.arange(e, dtype=np.int64)
  seconds = np.maximum.accumulate(seconds - steps) + steps              # strictly increasing
  log = builder.EventLog(
      user=np.stack([user_ids, user_seg], 1), item=np.stack([item_id, item_cat], 1),
      scenario=scen_id[:, None], label=click.astype(np.int8),
      user_id=(user_ids - 1).astype(np.int32),
      user_fields=(field("user_id", user_ids), field("user_segment", user_seg)),
      item_fields=(field("item_id", item_id), field("item_category", item_cat)),
      scenario_fields=(field("scenario_id", scen_id),),
      time=TIME_ORIGIN + seconds, sample_id=steps.copy(),
      is_sample=frac >= cfg.warmup_fraction,
      true_like=liked.astype(np.int8), true_prob=p_like, true_exam=p_exam,
      source=f"synthetic(seed={cfg.seed})")

  def by_id(ids, originals, values, fill):
    out = np.full(int(ids.max()) + 1, fill, np.asarray(values).dtype)
    out[ids] = np.asarray(values)[originals]
    return out

  truth = Truth(
      traffic=by_id(scen_id, ev_scen, traffic, 0.0),
      prominence=by_id(scen_id, ev_scen, prominence, 0.0),
      slope=by_id(scen_id, ev_scen, slope, 0.0),
      group=by_id(scen_id, ev_scen, group, -1),
      item_z=by_id(item_id, ev_item, z, 0.0),
      pair_user=_compact_lookup(ev_user, user_ids, pair_u) - 1,
      pair_scen=_compact_lookup(ev_scen, scen_id, pair_s),
      base=base, specific=specific)
  return log, truth


def _compact_lookup(originals: np.ndarray, ids: np.ndarray, query: np.ndarray) -> np.ndarray:
  """The compact id of each original value in `query` (every one occurs in `originals`)."""
  table = np.zeros(int(originals.max()) + 1, np.int64)
  table[originals] = ids
  return table[query]


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
# The generator's own statistics of each mechanism (no model)


def dial_statistics(cfg: SyntheticConfig, log: builder.EventLog, truth: Truth, *,
                    min_likes: int = 5) -> dict[str, dict[str, Any]]:
  """Per dial, its value and the statistics of its mechanism (module docstring).

  Computed from the hidden latents (`truth`) and the log (all events, warm-up included), never
  from a model. The headline statistic of each dial is `DIAL_STATISTIC[dial]`.
  `min_likes`: an item enters the popularity rank correlation of a scenario when it has at
  least this many liked impressions there.
  """
  return {"exposure_bias": _exposure_statistics(cfg, log, truth, min_likes),
          "scenario_interest": _scenario_interest_statistics(cfg, truth),
          "transfer": _transfer_statistics(cfg, truth),
          "drift": _drift_statistics(cfg, truth)}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _exposure_statistics(cfg: SyntheticConfig, log: builder.EventLog, truth: Truth,
                         min_likes: int) -> dict[str, Any]:
  scen, item = log.scenario[:, 0], log.item[:, 0]
  p1 = truth.traffic.shape[0]                                           # P + 1
  exam = np.bincount(scen, weights=log.true_exam, minlength=p1)[1:]
  n = np.bincount(scen, minlength=p1)[1:]
  mean_exam = _ratio(exam, n)                                           # (P,)
  liked = log.true_like == 1
  click = log.label.astype(np.float64)
  per_scen = _ratio(np.bincount(scen[liked], weights=click[liked], minlength=p1)[1:],
                    np.bincount(scen[liked], minlength=p1)[1:])         # click/like per scenario
  # Popularity quintiles of the catalogue (items that occur), pooled over scenarios.
  z = truth.item_z[1:]
  edges = np.quantile(z, [0.2, 0.4, 0.6, 0.8])
  quint = np.searchsorted(edges, truth.item_z[item[liked]], side="right")  # (likes,) 0..4
  likes_quint = np.bincount(quint, minlength=5)
  per_quint = _ratio(np.bincount(quint, weights=click[liked], minlength=5), likes_quint)
  # Within each scenario: rank correlation of popularity and the item's click/like ratio.
  n_items = truth.item_z.shape[0]
  cell = scen[liked].astype(np.int64) * n_items + item[liked]
  likes = np.bincount(cell, minlength=p1 * n_items).reshape(p1, n_items)
  clicks = np.bincount(cell, weights=click[liked], minlength=p1 * n_items).reshape(p1, n_items)
  corr, counted = {}, {}
  for s in range(1, p1):
    ok = likes[s] >= min_likes
    if ok.sum() >= 3:
      corr[str(s)] = _spearman(truth.item_z[ok], clicks[s, ok] / likes[s, ok])
      counted[str(s)] = int(ok.sum())
  finite = [c for c in corr.values() if np.isfinite(c)]
  base = np.log(cfg.exam_base / (1 - cfg.exam_base))
  a = truth.prominence[1:]
  typical = 1 / (1 + np.exp(-(base + cfg.exposure_bias * np.array([a.max(), a.min()]))))
  return {
      "value": cfg.exposure_bias,
      "exam_ratio": float(np.nanmax(mean_exam) / np.nanmin(mean_exam)),
      "exam_ratio_median_item": float(typical[0] / typical[1]),
      "exam_per_scenario": {str(k + 1): float(x) for k, x in enumerate(mean_exam)},
      "click_like_per_scenario": {str(k + 1): float(x) for k, x in enumerate(per_scen)},
      "click_like_per_popularity_quintile": [float(x) for x in per_quint],
      "likes_per_popularity_quintile": [int(x) for x in likes_quint],
      "popularity_rank_corr": float(np.mean(finite)) if finite else float("nan"),
      "popularity_rank_corr_per_scenario": corr,
      "popularity_rank_corr_items_per_scenario": counted,
  }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Rank correlation with average ranks for ties; nan when either side is constant."""
  ra, rb = _average_ranks(a), _average_ranks(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt((ra @ ra) * (rb @ rb))
  return float(ra @ rb / den) if den > 0 else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  xs = x[order]
  start = np.r_[True, xs[1:] != xs[:-1]]
  run = np.cumsum(start) - 1                                            # run index of each
  first = np.flatnonzero(start)
  last = np.r_[first[1:], xs.shape[0]] - 1
  ranks = np.empty(x.shape[0])
  ranks[order] = ((first + last) / 2.0)[run]
  return ranks


def _scenario_interest_statistics(cfg: SyntheticConfig, truth: Truth) -> dict[str, Any]:
  x = _interest_pairs(truth, cfg).astype(np.float64)                    # (2, K, d)
  part = np.sqrt(cfg.scenario_interest) * truth.specific.astype(np.float64)
  return {"value": cfg.scenario_interest,
          "specific_share": float(np.sum(part ** 2) / np.sum(x ** 2))}


def _transfer_statistics(cfg: SyntheticConfig, truth: Truth) -> dict[str, Any]:
  """Pooled correlation of d_us and d_us' of one user, over related and unrelated s != s'."""
  p1 = truth.traffic.shape[0]
  n_users = min(int(truth.pair_user.max()) + 1, _STATS_USERS)
  sel = truth.pair_user < n_users
  u, s = truth.pair_user[sel], truth.pair_scen[sel]
  d = truth.specific.shape[-1]
  dots = np.zeros((p1, p1))
  cross = np.zeros((p1, p1))                                            # Σ_u |d_up|^2 [q present]
  present = np.zeros((n_users, p1))
  present[u, s] = 1.0
  for k in range(truth.specific.shape[0]):
    dense = np.zeros((n_users, p1, d))
    dense[u, s] = truth.specific[k][sel]
    dots += np.einsum("upd,uqd->pq", dense, dense)
    cross += np.einsum("up,uq->pq", (dense ** 2).sum(-1), present)
  g = truth.group
  valid = (g[:, None] >= 0) & (g[None, :] >= 0) & ~np.eye(p1, dtype=bool)
  related = valid & (g[:, None] == g[None, :])
  unrelated = valid & (g[:, None] != g[None, :])

  def corr(mask):
    den = np.sqrt(cross[mask].sum() * cross.T[mask].sum())
    return float(dots[mask].sum() / den) if den > 0 else float("nan")

  groups: dict[str, list[int]] = {}
  for sid in range(1, p1):
    groups.setdefault(str(int(g[sid])), []).append(sid)
  return {"value": cfg.transfer, "related_corr": corr(related),
          "unrelated_corr": corr(unrelated), "groups": list(groups.values())}


def _drift_statistics(cfg: SyntheticConfig, truth: Truth) -> dict[str, Any]:
  x = _interest_pairs(truth, cfg).astype(np.float64)                    # (2, K, d)
  angle = cfg.drift * np.pi / 2
  start, end = x[0], np.cos(angle) * x[0] + np.sin(angle) * x[1]
  return {"value": cfg.drift,
          "start_end_corr": float(np.sum(start * end)
                                  / np.sqrt(np.sum(start ** 2) * np.sum(end ** 2)))}


# ---------------------------------------------------------------------------------------
# Model-free reference figures of a built dataset


POPULARITY_PRIOR = 10.0   # item click rate = (clicks + m * mean rate) / (impressions + m)


def reference_figures(ds: BuiltDataset) -> dict[str, Any]:
  """Model-free figures of a built synthetic dataset.

  empty_cur_seq_share / empty_all_seq_share: per split, the share of samples whose S_u / H_u
  is empty. test_auc: per scenario (and "all"), the AUC against the observed click on the
  test split of: true_prob (the oracle of interest), exam_x_like = true_exam * true_prob (the
  oracle of the click) and item_click_rate (popularity: each item's click rate counted on the
  training split, smoothed towards the mean with POPULARITY_PRIOR impressions).
  """
  lg = ds.log
  out: dict[str, Any] = {"empty_cur_seq_share": {}, "empty_all_seq_share": {}}
  for split in SPLITS:
    rows = np.asarray(ds.splits[split])
    out["empty_cur_seq_share"][split] = float(np.mean(~(lg["cur_idx"][rows] >= 0).any(1)))
    out["empty_all_seq_share"][split] = float(np.mean(~(lg["all_idx"][rows] >= 0).any(1)))
  train, test = np.asarray(ds.splits["train"]), np.asarray(ds.splits["test"])
  item = np.asarray(lg["item"][:, 0])
  label = np.asarray(lg["label"], np.float64)
  n_items = int(item.max()) + 1
  imps = np.bincount(item[train], minlength=n_items)
  clicks = np.bincount(item[train], weights=label[train], minlength=n_items)
  mean = label[train].mean()
  rate = (clicks + POPULARITY_PRIOR * mean) / (imps + POPULARITY_PRIOR)
  y, scen = label[test], np.asarray(lg["scenario"][test, 0])
  scores = {"item_click_rate": rate[item[test]]}
  if ds.schema.has_truth:
    scores["true_prob"] = np.asarray(lg["true_prob"][test], np.float64)
  if ds.schema.has_exam:
    scores["exam_x_like"] = scores["true_prob"] * np.asarray(lg["true_exam"][test], np.float64)
  aucs = {}
  for name, score in scores.items():
    per = {str(k): v for k, v in metrics.grouped_auc(y, score, scen).items()}
    per["all"] = metrics.auc(y, score)
    aucs[name] = per
  out["test_auc"] = aucs
  if "exam_x_like" in aucs:
    gap = [aucs["exam_x_like"][k] - aucs["item_click_rate"][k] for k in aucs["exam_x_like"]
           if k != "all"]
    out["min_gap_exam_x_like_minus_popularity"] = float(np.min(gap))
  return out


# ---------------------------------------------------------------------------------------
# Writing


LOG_COLUMNS_KW = dict(user="user_id", item="item_id", scenario="scenario_id", label="label",
                      time="timestamp", user_extra=("user_segment",),
                      item_extra=("item_category",), true_like="true_like",
                      true_prob="true_prob", true_exam="true_exam", is_sample="is_sample")


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
  if log.true_exam is not None:
    cols["true_exam"] = np.asarray(log.true_exam, np.float32)
  if log.is_sample is not None:
    cols["is_sample"] = np.asarray(log.is_sample, np.int8)
  pq.write_table(pa.table(cols), path)


def world_stats(cfg: SyntheticConfig, log: builder.EventLog, truth: Truth) -> dict[str, Any]:
  """The generator's parameters, hidden truth per scenario and dial statistics (stats.json).

  The builder adds the observed click rate and the true-interest rate per scenario.
  """
  def per_scenario(values):
    return {str(k): round(float(values[k]), 4) for k in range(1, values.shape[0])}

  return {
      "generator": dataclasses.asdict(cfg),
      "generated_events": int(log.label.shape[0]),
      "warmup_events": int((~log.is_sample).sum()),
      "traffic_share_per_scenario": per_scenario(truth.traffic),
      "prominence_per_scenario": per_scenario(truth.prominence),
      "popularity_slope_per_scenario": per_scenario(truth.slope),
      "dials": dial_statistics(cfg, log, truth),
  }


def format_world(stats: dict[str, Any]) -> str:
  """Per scenario: group, prominence a_s, slope b_s, mean examination, click and true rates."""
  exposure = stats["dials"]["exposure_bias"]
  exam, ratio = exposure["exam_per_scenario"], exposure["click_like_per_scenario"]
  group = {str(s): i for i, members in enumerate(stats["dials"]["transfer"]["groups"])
           for s in members}
  a, b = stats["prominence_per_scenario"], stats["popularity_slope_per_scenario"]
  click, true = stats["click_rate_per_scenario"], stats.get("true_interest_rate_per_scenario", {})
  lines = [f"{'scenario':>9} {'group':>6} {'a_s':>6} {'b_s':>6} {'mean e':>7} {'click/like':>11} "
           f"{'click rate':>11} {'true rate':>10}"]
  for k in exam:
    lines.append(f"{'#' + k:>9} {group.get(k, -1):>6} {a[k]:>6.2f} {b[k]:>6.2f} {exam[k]:>7.3f} "
                 f"{ratio[k]:>11.3f} {click.get(k, float('nan')):>11.4f} "
                 f"{true.get(k, float('nan')):>10.4f}")
  return "\n".join(lines)


def format_dials(stats: dict[str, Any]) -> str:
  """Each dial's value, its headline statistic and the levels it is read against."""
  dials = stats["dials"]
  lines = [f"{'dial':>18} {'value':>7} {'statistic':>16} {'measured':>9}   levels (value)"]
  for dial in DIALS:
    st = dials[dial]
    levels = ", ".join(f"{k} {v:g}" for k, v in DIAL_LEVELS[dial].items())
    lines.append(f"{dial:>18} {st['value']:>7.3f} {DIAL_STATISTIC[dial]:>16} "
                 f"{st[DIAL_STATISTIC[dial]]:>9.3f}   {levels}")
  ex, tr = dials["exposure_bias"], dials["transfer"]
  lines.append(f"exposure: exam ratio for a median-popularity item {ex['exam_ratio_median_item']:.3f}; "
               f"popularity rank corr of click/like within scenarios "
               f"{ex['popularity_rank_corr']:.3f}; click/like per popularity quintile "
               + " ".join(f"{x:.3f}" for x in ex["click_like_per_popularity_quintile"]))
  lines.append(f"transfer: unrelated-scenario corr {tr['unrelated_corr']:.3f}; groups "
               f"{tr['groups']}")
  return "\n".join(lines)


def format_reference(ref: dict[str, Any]) -> str:
  """Empty-history shares per split and the model-free AUCs per scenario (test split)."""
  lines = ["empty S_u share: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                           ref["empty_cur_seq_share"].items()),
           "empty H_u share: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                           ref["empty_all_seq_share"].items())]
  aucs = ref["test_auc"]
  names = [n for n in ("true_prob", "exam_x_like", "item_click_rate") if n in aucs]
  lines.append("test AUC against the click (model-free):")
  lines.append(f"{'scenario':>9} " + " ".join(f"{n:>16}" for n in names)
               + (f" {'oracle - pop':>13}" if "exam_x_like" in aucs else ""))
  for k in aucs["item_click_rate"]:
    line = f"{('#' + k) if k != 'all' else 'all':>9} " + " ".join(f"{aucs[n][k]:>16.4f}"
                                                                   for n in names)
    if "exam_x_like" in aucs:
      line += f" {aucs['exam_x_like'][k] - aucs['item_click_rate'][k]:>13.4f}"
    lines.append(line)
  return "\n".join(lines)


def build_synthetic(cfg: SyntheticConfig, out_dir: str, *, write_log_file: bool = True,
                    name: str = "synthetic") -> dict[str, Any]:
  """Generates the log, writes the built dataset into `out_dir` (and `out_dir/log.parquet`).

  The statistics get the dial statistics (`dials`) and the model-free `reference` figures.
  """
  log, truth = generate(cfg)
  stats = builder.build_dataset(
      out_dir, log, max_cur_len=cfg.max_cur_len, max_all_len=cfg.max_all_len,
      all_seq_mode=cfg.all_seq_mode, name=name, extra_stats=world_stats(cfg, log, truth))
  stats["reference"] = reference_figures(BuiltDataset(out_dir))
  save_json(os.path.join(out_dir, "stats.json"), stats)
  if write_log_file:
    write_log(log, os.path.join(out_dir, LOG_FILE))
  return stats


def ensure_synthetic(preset: str, seed: int, cache_dir: str, **overrides: Any) -> str:
  """Path of the built synthetic dataset `preset`/`seed`, generated once into `cache_dir`.

  Built into a temporary directory and renamed into place, so a crashed or concurrent build
  never leaves a half-written dataset under the final name. Overrides of generator
  parameters (e.g. a dial: exposure_bias=0.0) get their own directory.
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


_SIZE_FLAGS = ("num_users", "num_items", "num_scenarios")


def _define_flags():
  from absl import flags
  flags.DEFINE_enum("preset", "default", list(PRESETS), "Generator preset.")
  flags.DEFINE_string("out", None, "Output directory of the built dataset.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the generator.")
  flags.DEFINE_float("exposure_bias", None, "Dial S -> Y: scale of the examination logit's "
                     "scenario and popularity terms (0 = placebo).")
  flags.DEFINE_float("scenario_interest", None, "Dial S -> M: share of interest variance "
                     "specific to (user, scenario) (0 = placebo).")
  flags.DEFINE_float("transfer", None, "Dial: share of the scenario-specific interest shared "
                     "with related scenarios (0 = placebo).")
  flags.DEFINE_float("drift", None, "Dial: interest drift over the timeline (0 = placebo).")
  for name in _SIZE_FLAGS:
    flags.DEFINE_integer(name, None, f"Override: {name}.")


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  overrides = {k: getattr(f, k) for k in DIALS + _SIZE_FLAGS if getattr(f, k) is not None}
  cfg = get_preset(f.preset, seed=f.seed, **overrides)
  start = time.perf_counter()
  stats = build_synthetic(cfg, f.out, name=f"synthetic-{f.preset}")
  seconds = time.perf_counter() - start
  print(builder.format_stats(stats))
  print("scenarios: related group, prominence a_s, popularity slope b_s, mean examination "
        "(S -> Y), click/like, click and true-interest rates")
  print(format_world(stats))
  print("dials: the generator's own statistic of each mechanism")
  print(format_dials(stats))
  print(format_reference(stats["reference"]))
  print(f"built dataset: {f.out}")
  print(f"generic log:   {os.path.join(f.out, LOG_FILE)}")
  print(f"generated and built in {seconds:.1f} s")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
