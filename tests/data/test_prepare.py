"""`python prepare.py` (its library: mscan_jax/data/prepare.py): raw files -> built dataset, for
each dataset format.

Checks that the built datasets open, that the loaders' counts are saved with the statistics,
the sequences of the Cloud Theme fixture (negatives never in a history, a click never seen by
its own negatives), the single-scenario refusal, a generic log built by `prepare` and by
`launch.py`'s path alike, and the command line (`--config.data.*` as for `launch.py`, one
`error:` line with exit code 2 for a bad value, the dataset list from the registry).
"""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

from mscan_jax import config as config_lib
from mscan_jax.data import datasets, prepare
from mscan_jax.data.schema import BuiltDataset, DataError
from mscan_jax.errors import ConfigError

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                       "data", "ali-ccp"))
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED),
                                  reason=f"shared Ali-CCP samples not found at {SHARED}")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREPARE = os.path.join(ROOT, "prepare.py")      # the command line

# User 7 clicks in themes 5 and 40 (kept by the >= 2 scenarios filter); user 30's only other
# theme click has clk_cnt 0, so user 30 is filtered out. One item per pool besides the click,
# so the negatives are known: theme 5 {20, 100}, theme 40 {3, 20}.
CLICKS = """user_id,theme_id,item_id,leaf_cate_id,cate_level1_id,clk_cnt,reach_time
30,40,20,8,2,1,20190801120000
7,5,100,9,1,2,2019-08-01 11:00:00
7,40,3,8,2,1,20190801100000
30,5,20,8,2,0,20190801090000
7,5,100,9,1,1,20190801110000
"""
POOL = "theme_id,item_id\n5,100\n5,20\n40,20\n40,3\n"


def data_config(**changes):
  """The default `config.data` with dotted-key changes, e.g. `**{"cloudtheme.seed": 1}`."""
  data = config_lib.get_config().data
  for key, value in changes.items():
    *path, leaf = key.split(".")
    node = data
    for p in path:
      node = node[p]
    node[leaf] = value
  return data


def cloudtheme_dir(tmp_path):
  d = tmp_path / "ct"
  d.mkdir()
  (d / "theme_click_log.csv").write_text(CLICKS)
  (d / "theme_item_pool.csv").write_text(POOL)
  return str(d)


def test_cloudtheme_sequences_hold_clicks_only_and_no_own_negative(tmp_path):
  out = str(tmp_path / "built")
  data = data_config(max_cur_len=3, max_all_len=4, test_fraction=0.34, valid_fraction=0.34)
  stats = prepare.prepare("cloudtheme", cloudtheme_dir(tmp_path), out, data)
  ds = BuiltDataset(out)
  assert ds.schema.all_seq_mode == "clicks"
  assert stats["dropped"]["clk_cnt_0"] == 1
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_users"] == 1   # user 30
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_rows"] == 3
  batch = ds.gather(np.arange(ds.num_events))
  by_id = {int(s): k for k, s in enumerate(batch["sample_id"])}
  # User 7's events in time order: line 4 (10:00, theme 40, item 3), line 3 and line 6
  # (both 11:00, theme 5, item 100), each after its two negatives (item 20). sample_id =
  # line*100+j. Lines 3 and 6 share their time, so neither sees the other.
  assert sorted(by_id) == [300, 301, 302, 400, 401, 402, 600, 601, 602]
  item_raw = {1: 3, 2: 20, 3: 100}          # item ids of the fixture (sorted raw values)

  def seq(sid, key, length):
    k = by_id[sid]
    return [item_raw[int(i)] for i in batch[key][k, :batch[length][k], 0]]

  for sid in (400, 401, 402, 300, 301, 302, 600, 601, 602):
    assert seq(sid, "cur_seq", "cur_len") == []          # no earlier same-theme click
  for sid in (401, 402, 400):
    assert seq(sid, "all_seq", "all_len") == []          # negatives never in a history
  for sid in (301, 302, 300, 601, 602, 600):
    assert seq(sid, "all_seq", "all_len") == [3]         # not each other's click, same time
  k = by_id[600]
  assert batch["all_click"][k, 0] == 1 and batch["all_scenario"][k, 0] == 2   # theme 40


def test_cloudtheme_refuses_impressions_histories(tmp_path):
  data = data_config(all_seq_mode="impressions")
  with pytest.raises(ConfigError, match=r"config.data.all_seq_mode: cloudtheme: .*sampled "
                                        r"negatives of earlier clicks"):
    prepare.prepare("cloudtheme", cloudtheme_dir(tmp_path), str(tmp_path / "o"), data)


def test_existing_output_needs_overwrite(tmp_path):
  raw, out = cloudtheme_dir(tmp_path), str(tmp_path / "built")
  data = data_config(test_fraction=0.34, valid_fraction=0.34)
  prepare.prepare("cloudtheme", raw, out, data)
  with pytest.raises(DataError, match=r"already a built dataset; remove it or pass --overwrite"):
    prepare.prepare("cloudtheme", raw, out, data)
  prepare.prepare("cloudtheme", raw, out, data, overwrite=True)
  assert BuiltDataset(out).num_events > 0


def test_recbole_toy_builds_and_drops_a_scenario_left_without_users(tmp_path):
  d = tmp_path / "toy"
  d.mkdir()
  rows = ["user_id:token\titem_id:token\tlabel:float\ttimestamp:float\tscene:token"]
  for t in range(12):                       # two users, each in scenes s0 and s1
    rows.append(f"u{t % 2}\ti{t % 5}\t{t % 3 == 0:d}\t{t}\ts{t // 2 % 2}")
  rows += ["u9\ti1\t1\t3.5\tsX", "u9\ti2\t0\t4.5\tsX"]   # u9: one scenario only
  (d / "toy.inter").write_text("\n".join(rows) + "\n")
  out = str(tmp_path / "built")
  stats = prepare.prepare("recbole", str(d), out,
                          data_config(**{"recbole.scenario": "scene"}, max_cur_len=2,
                                      max_all_len=3))
  ds = BuiltDataset(out)
  # u9 is filtered out, and with it scenario sX (3 before), which is removed: s0 -> 1, s1 -> 2.
  assert ds.schema.num_scenarios == 2 and ds.num_events == 12
  assert list(np.load(os.path.join(out, "vocab", "scene.npy"))) == ["", "s0", "s1"]
  assert stats["dropped"]["no_scenario"] == 0
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_users"] == 1
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_rows"] == 2
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_scenarios"] == 1
  assert stats["scenarios_removed_raw"] == "sX"
  batch = ds.gather(np.arange(ds.num_events))
  np.testing.assert_array_equal(batch["scenario"][:, 0], [t // 2 % 2 + 1 for t in range(12)])


@needs_shared
def test_single_scenario_samples_are_refused_with_the_reason(tmp_path):
  with pytest.raises(DataError, match=r"no user has samples in at least 2 scenarios.*1 scenario "
                                      r"value\(s\) in field '301': 1 \(.*single-scenario"):
    prepare.prepare("aliccp_csv", os.path.join(SHARED, "torch-rechub"), str(tmp_path / "o"),
                    data_config())


@needs_shared
def test_cli_builds_the_scenario_wise_rec_samples(tmp_path):
  out = str(tmp_path / "built")
  res = subprocess.run(
      [sys.executable, PREPARE, "--dataset=aliccp_csv",
       f"--raw={os.path.join(SHARED, 'scenario-wise-rec')}", f"--out={out}",
       "--config.data.max_cur_len=5", "--config.data.max_all_len=8"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "built dataset:" in res.stdout and "--config.data.name=aliccp_csv" in res.stdout
  ds = BuiltDataset(out)
  assert ds.schema.num_scenarios == 3
  assert [f.name for f in ds.schema.item_fields] == ["205", "206", "207", "210", "216"]
  assert "dropped by policy click0_purchase1: " in res.stdout
  for split in ("train", "valid", "test"):
    assert ds.split_size(split) > 0
  # A bad option is a clear error, not a traceback.
  res = subprocess.run(
      [sys.executable, PREPARE, "--dataset=aliccp_csv",
       f"--raw={os.path.join(SHARED, 'torch-rechub')}", f"--out={tmp_path / 'o2'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2 and res.stderr.startswith("error:"), res.stderr
  assert "no user has samples in at least 2 scenarios" in res.stderr


def test_aliccp_raw_builds(tmp_path):
  def feats(*fs):
    return "\x01".join(f"{f}\x02{i}\x031.0" for f, i in fs)

  d = tmp_path / "raw"
  d.mkdir()
  (d / "common_features_train.csv").write_text(
      "c1,1," + feats(("101", 500)) + "\nc2,1," + feats(("101", 400)) + "\n")
  (d / "sample_skeleton_train.csv").write_text("".join(
      f"{k},{k % 2},0,c{1 + k % 2},2," + feats(("205", 10 + k), ("301", 9001 + k % 3)) + "\n"
      for k in range(1, 13)))
  out = str(tmp_path / "built")
  stats = prepare.prepare("aliccp", str(d), out, data_config(**{"aliccp.block_size_mb": 64 / 2**20}))
  ds = BuiltDataset(out)
  assert ds.num_events == 12 and ds.schema.num_scenarios == 3
  assert stats["source_train_rows_read"] == 12
  np.testing.assert_array_equal(np.sort(ds.gather(np.arange(12))["sample_id"]), np.arange(1, 13))


# ---------------------------------------------------------------------------------------
# A generic log through prepare, and the command line

# Users u0..u3, each in scenarios "a" and "b"; user u9 only in "c", which the user filter
# empties. Column names differ from the config's defaults, so the mapping is exercised.
LOG_ROWS = 48


def write_log(path) -> str:
  lines = ["uid,iid,page,click,ts,age,cat"]
  for t in range(LOG_ROWS):
    lines.append(f"u{t % 4},{100 + t % 7},{'ab'[t // 4 % 2]},{int(t % 3 == 0)},{t},{t % 4 // 2},"
                 f"k{t % 7 % 3}")
  lines += ["u9,101,c,1,5.5,0,k1", "u9,102,c,0,6.5,0,k2"]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


LOG_FLAGS = ["--config.data.columns.user=uid", "--config.data.columns.item=iid",
             "--config.data.columns.scenario=page", "--config.data.columns.label=click",
             "--config.data.columns.time=ts", "--config.data.columns.user_extra=(age)",
             "--config.data.columns.item_extra=cat"]


def log_data(path: str, **changes):
  columns = dict(user="uid", item="iid", scenario="page", label="click", time="ts",
                 user_extra=("age",), item_extra=("cat",))
  data = data_config(**{**{f"columns.{k}": v for k, v in columns.items()}, "max_cur_len": 3,
                        "max_all_len": 5, **changes})
  data.name, data.path = "log", path
  return data


def test_generic_log_through_prepare_equals_the_log_built_by_launch(tmp_path):
  raw = write_log(tmp_path / "clicks.csv")
  out = str(tmp_path / "built")
  data = log_data(raw)
  stats = prepare.prepare("log", raw, out, data)
  ds = BuiltDataset(out)
  assert [f.name for f in ds.schema.user_fields] == ["uid", "age"]
  assert [f.name for f in ds.schema.item_fields] == ["iid", "cat"]
  assert ds.schema.max_cur_len == 3 and ds.schema.max_all_len == 5
  # Scenario c, emptied by the user filter, is removed and counted on both paths alike.
  assert ds.schema.num_scenarios == 2 and ds.num_events == LOG_ROWS
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_scenarios"] == 1
  assert stats["scenarios_removed_raw"] == "c"
  assert list(np.load(os.path.join(out, "vocab", "page.npy"))) == ["", "a", "b"]
  # The name stored is the label that results.json and run folders use, for the file and
  # for the built directory.
  assert ds.schema.name == stats["name"] == datasets.label(data)
  assert ds.schema.name.startswith("log-clicks-")
  for name in ("log", "built"):
    built = data_config()
    built.name, built.path = name, out
    assert datasets.label(built) == ds.schema.name
    assert datasets.built_path(built) == out
  # launch.py's path (the file given as config.data.path, built once into the cache).
  data.cache_dir = str(tmp_path / "cache")
  other = BuiltDataset(datasets.built_path(data))
  assert other.schema == ds.schema
  for key in ds.log:
    np.testing.assert_array_equal(ds.log[key], other.log[key])
  for split in ("train", "valid", "test"):
    np.testing.assert_array_equal(ds.splits[split], other.splits[split])


def test_min_scenarios_per_user_is_one_option_for_both_paths(tmp_path):
  raw = write_log(tmp_path / "clicks.csv")
  data = log_data(raw, min_scenarios_per_user=1, cache_dir=str(tmp_path / "cache"))
  stats = prepare.prepare("log", raw, str(tmp_path / "built"), data)
  assert stats["num_scenarios"] == 3 and stats["num_events"] == LOG_ROWS + 2
  assert BuiltDataset(datasets.built_path(data)).schema.num_scenarios == 3


def test_two_logs_with_the_same_stem_get_different_labels(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  raw_a, raw_b = write_log(tmp_path / "a" / "log.csv"), write_log(tmp_path / "b" / "log.csv")
  label_a, label_b = datasets.label(log_data(raw_a)), datasets.label(log_data(raw_b))
  assert label_a.startswith("log-log-") and label_b.startswith("log-log-") and label_a != label_b
  # The same file read with another mapping is another dataset too.
  assert datasets.label(log_data(raw_a, **{"columns.item_extra": ()})) != label_a
  # ... and the datasets built from them (once, into the cache) store those names.
  for raw, label in ((raw_a, label_a), (raw_b, label_b)):
    data = log_data(raw, cache_dir=os.path.join(os.path.dirname(raw), "cache"))
    assert datasets.open_dataset(data).schema.name == label


def test_a_log_built_with_another_duplicates_policy_is_another_dataset(tmp_path):
  """duplicates=keep (the default for a log is drop): its own name, its own cached build, and
  `prepare` stores the same name; drop spelled out is the default's name."""
  raw = write_log(tmp_path / "clicks.csv")
  default = log_data(raw, cache_dir=str(tmp_path / "cache"))
  keep = log_data(raw, cache_dir=str(tmp_path / "cache"), duplicates="keep")
  assert datasets.label(keep) == datasets.label(default) + "-dupkeep"
  assert datasets.label(log_data(raw, duplicates="drop")) == datasets.label(default)
  paths = [datasets.built_path(d) for d in (default, keep)]
  assert paths[0] != paths[1]
  assert [BuiltDataset(p).schema.name for p in paths] == [datasets.label(default),
                                                           datasets.label(keep)]
  stats = prepare.prepare("log", raw, str(tmp_path / "built"), keep)
  assert stats["name"] == datasets.label(keep)


def test_dataset_list_is_the_registry():
  assert prepare.datasets.prepared_names() == tuple(
      name for name, spec in datasets.DATASETS.items() if spec.prepared)
  assert set(datasets.prepared_names()) == {"log", "aliccp", "aliccp_csv", "cloudtheme", "recbole"}
  res = subprocess.run([sys.executable, PREPARE, "--helpshort"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert f"<{'|'.join(datasets.prepared_names())}>" in res.stdout + res.stderr
  with pytest.raises(ConfigError, match=r"--dataset='synthetic' is unknown; valid: log, aliccp"):
    prepare.prepare("synthetic", "x", "y", data_config())


def test_loader_defaults_are_the_config_defaults():
  """Each loader's keyword defaults and its sub-dict of config.data say the same."""
  from mscan_jax.data import aliccp, cloudtheme, recbole
  data = config_lib.get_config().data

  def defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}

  assert defaults(aliccp.load_aliccp_raw)["missing_common"] == data.aliccp.missing_common
  assert {k: data.cloudtheme[k] for k in defaults(cloudtheme.load_cloudtheme)} == \
      defaults(cloudtheme.load_cloudtheme)
  rb = defaults(recbole.load_recbole)
  assert {k: data.recbole[k] for k in rb} == rb


def run_prepare(*args, timeout=120):
  return subprocess.run([sys.executable, PREPARE, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_builds_a_log_with_launch_column_flags(tmp_path):
  raw = write_log(tmp_path / "clicks.csv")
  out = str(tmp_path / "built")
  res = run_prepare("--dataset=log", f"--raw={raw}", f"--out={out}", *LOG_FLAGS,
                    "--config.data.max_cur_len=3")
  assert res.returncode == 0, res.stderr[-2000:]
  ds = BuiltDataset(out)
  assert [f.name for f in ds.schema.user_fields] == ["uid", "age"] and ds.schema.max_cur_len == 3
  assert "dropped by policy users_in_fewer_than_2_scenarios_scenarios: 1" in res.stdout
  assert f"--config.data.name=log --config.data.path={out}" in res.stdout


@pytest.mark.parametrize("flag, message", [
    ("--config.data.test_fraction=1.5", "config.data.test_fraction must be in (0, 1), got 1.5"),
    ("--config.data.cloudtheme.negatives=0", "config.data.cloudtheme.negatives must be in 1..99"),
    ("--config.data.all_seq_mode=views", "config.data.all_seq_mode='views' is unknown"),
    ("--config.data.columns.user_extra=(age,,x)", "config.data.columns.user_extra="),
    ("--config.data.max_cur_len=abc", "--config.data.max_cur_len=abc"),
    ("--config.data.nope=1", "--config.data.nope: config.data has no field 'nope'; valid: aliccp, "),
    ("--config.data.cloudtheme.seed=-1", "config.data.cloudtheme.seed must be an integer >= 0"),
    ("--config.data.aliccp.block_size_mb=nan", "config.data.aliccp.block_size_mb must be a finite"),
    ("--dataset=synthetic", "flag --dataset=synthetic: value should be one of"),
])
def test_cli_bad_value_is_one_error_line_naming_the_field(tmp_path, flag, message):
  raw = write_log(tmp_path / "clicks.csv")
  args = ["--dataset=log", f"--raw={raw}", f"--out={tmp_path / 'o'}", *LOG_FLAGS, flag]
  if flag.startswith("--config.data.cloudtheme"):
    args[0] = "--dataset=cloudtheme"
  if flag.startswith("--config.data.aliccp"):
    args[0] = "--dataset=aliccp"
  res = run_prepare(*args)
  assert res.returncode == 2, res.stderr
  assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr
  assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "o")


# ---------------------------------------------------------------------------------------
# Names from data never become paths

EVIL = "../../../../PWNED"


def test_a_column_name_holding_a_path_never_leaves_out(tmp_path):
  d = tmp_path / "toy"
  d.mkdir()
  rows = ["user_id:token\titem_id:token\tlabel:float\ttimestamp:float\tscene:token"]
  rows += [f"u{t % 2}\ti{t % 5}\t{t % 3 == 0:d}\t{t}\ts{t // 2 % 2}" for t in range(12)]
  (d / "toy.inter").write_text("\n".join(rows) + "\n")
  (d / "toy.user").write_text(f"user_id:token\t{EVIL}:token\nu0\ta\nu1\tb\n")
  out = tmp_path / "a" / "b" / "c" / "built"
  with pytest.raises(DataError, match=r"'\.\./\.\./\.\./\.\./PWNED'.*path separator"):
    prepare.prepare("recbole", str(d), str(out), data_config(**{"recbole.scenario": "scene"}))
  assert not list(tmp_path.rglob("PWNED*")) and not os.path.exists(out)


@pytest.mark.parametrize("name", ["a/b", "..", "x\\y", "tab\there", "nul\x00"])
def test_field_names_that_would_be_paths_are_refused(tmp_path, name):
  from mscan_jax.data.schema import Field, Schema, write_built
  schema = Schema(user_fields=(Field("u", 3),), item_fields=(Field("i", 3),),
                  scenario_fields=(Field("s", 3),), max_cur_len=1, max_all_len=1)
  with pytest.raises(DataError, match="path separator"):
    write_built(str(tmp_path / "o"), schema, {}, {}, {}, vocab={name: np.zeros(2)})
  assert not os.path.exists(tmp_path / "o")


def test_a_built_dataset_name_holding_a_path_is_refused_as_a_label(tmp_path):
  raw = write_log(tmp_path / "clicks.csv")
  out = tmp_path / "built"
  prepare.prepare("log", raw, str(out), log_data(raw))
  schema = out / "schema.json"
  schema.write_text(schema.read_text().replace('"name": "log-clicks-', f'"name": "{EVIL}-'))
  built = data_config()
  built.name, built.path = "built", str(out)
  with pytest.raises(DataError, match=r"path separator"):
    datasets.label(built)


def test_short_disk_stops_before_anything_is_written(tmp_path, monkeypatch):
  """`prepare` compares the disk the build needs (bytes per event x events) with the free
  space (`shutil.disk_usage`, patched) before it writes: one byte short is a DataError with both
  figures and no file; exactly enough builds, and the estimate bounds the arrays written."""
  raw, out = cloudtheme_dir(tmp_path), str(tmp_path / "deep" / "built")
  data = data_config(test_fraction=0.34, valid_fraction=0.34)
  seen = []
  real_usage = prepare.shutil.disk_usage

  def usage(path, free):
    seen.append(path)
    return real_usage(path)._replace(free=free)

  needed = {}
  real_check = prepare.check_disk

  def spy(out_, per_event, events):
    needed["bytes"], needed["per_event"] = per_event * events, per_event
    real_check(out_, per_event, events)

  monkeypatch.setattr(prepare, "check_disk", spy)
  monkeypatch.setattr(prepare.shutil, "disk_usage", lambda p: usage(p, 10**15))
  prepare.prepare("cloudtheme", raw, str(tmp_path / "probe"), data)     # learns the figure
  assert seen == [str(tmp_path)]                                        # nearest existing folder
  monkeypatch.setattr(prepare.shutil, "disk_usage", lambda p: usage(p, needed["bytes"] - 1))
  with pytest.raises(DataError, match=rf"the built dataset \([\d,]+ events x "
                                      rf"{needed['per_event']} bytes\) needs about .* GB of "
                                      r"disk but .* GB free"):
    prepare.prepare("cloudtheme", raw, out, data)
  assert not os.path.exists(tmp_path / "deep")                          # nothing written
  monkeypatch.setattr(prepare.shutil, "disk_usage", lambda p: usage(p, needed["bytes"]))
  prepare.prepare("cloudtheme", raw, out, data)
  ds = BuiltDataset(out)
  written = sum(a.nbytes for a in ds.log.values()) + sum(a.nbytes for a in ds.splits.values())
  assert written <= needed["bytes"]
