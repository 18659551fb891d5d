"""The arithmetic and the run list of benchmarks/project_aliccp.py (nothing is timed)."""

import collections

import pytest

from benchmarks import project_aliccp as p


def _stage(network="mix", epochs=5, train=(), evals=()):
  return p.Stage("run", "mix", network, epochs, train, evals)


def test_splits_follow_the_config_fractions():
  proto = p.Protocol(1000, test_fraction=0.4, valid_fraction=0.1, kept_fraction=0.5)
  assert proto.splits() == pytest.approx((270.0, 30.0, 200.0))   # 500 kept: test 200, valid 30


def test_stage_cost_by_hand():
  proto = p.Protocol(1000, 0.4, 0.1)                               # train 540, valid 60, test 400
  c = p.stage_cost(_stage(epochs=2), proto, p.Rates(train=10.0, infer=100.0))
  assert c["train_examples"] == pytest.approx(2 * 540)
  assert c["eval_examples"] == pytest.approx(2 * 60 + 400)
  assert c["seconds"] == pytest.approx(1080 / 10 + 520 / 100)


def test_pipeline_bounds_and_population_speedup():
  proto = p.Protocol(1000, 0.4, 0.1, epochs=1)
  rates = p.Rates(train=10.0, infer=100.0)
  fast = p.stage_cost(_stage(), proto, rates, population_speedup=3.0)
  assert fast["train_rate"] == 30.0 and fast["eval_rate"] == 100.0
  bound = p.stage_cost(_stage(), proto, rates, pipeline=20.0, population_speedup=3.0)
  assert bound["train_rate"] == 20.0 and bound["eval_rate"] == 20.0


def test_scenario_restricted_runs_add_up_to_one_full_run():
  proto = p.Protocol(1000, 0.4, 0.1, scenario_shares={1: 0.5, 2: 0.2, 3: 0.3})
  rates = {"mix": p.Rates(10.0, 100.0)}
  full = p.project([_stage()], proto, rates)["mix"]
  per = p.project([p.Stage(f"r{s}", "mix", "mix", 5, (s,), (s,)) for s in (1, 2, 3)], proto,
                  rates)["mix"]
  assert per["runs"] == 3 and full["runs"] == 1
  for k in ("train_examples", "eval_examples", "seconds"):
    assert per[k] == pytest.approx(full[k])


def test_plan_has_the_papers_seventeen_runs_per_seed():
  stages = p.plan_stages(range(2), (1, 2, 3))
  runs = {st.run: st for st in stages}
  assert len(runs) == 2 * 17 == len(stages)            # Finetune: only its own stage
  per_model = collections.Counter(st.model for st in runs.values())
  assert per_model["single"] == per_model["finetune"] == 2 * 3
  assert per_model["mscan"] == 2 * 4                     # Table 1's run + Table 2's ablations
  assert {st.network for st in stages if st.model in ("single", "finetune")} == {"mix"}
  assert {st.train_scenarios for st in stages if st.model == "single"} == {(1,), (2,), (3,)}
  with_refs = {st.run for st in p.plan_stages(range(2), (1, 2, 3), with_references=True)}
  assert len(with_refs) > len(runs)


def test_pipeline_rate_is_read_from_the_first_table(tmp_path):
  from benchmarks import project_aliccp
  path = tmp_path / "pipeline.txt"
  path.write_text(
      "what             how                       examples/s             (min..max)\n"
      "pipeline (old)   grain, 2 threads              26,581  (26,096..28,617)\n"
      "pipeline (new)   1 thread, prefetch 2         460,443  (434,311..487,179)\n"
      "pipeline (new)   2 threads, prefetch 2        678,388  (658,035..681,452)\n"
      "=== an earlier run\n"
      "pipeline (new)   2 threads, prefetch 2        999,999  (1..2)\n")
  assert project_aliccp.read_pipeline(str(path)) == 678388.0
  assert project_aliccp.read_pipeline(str(tmp_path / "missing.txt")) == 0.0
