"""experiments.placement: device lists, the children's environment, out-of-memory failures.
Pure functions: no GPU, no nvidia-smi (a fake GPU lister stands in)."""

import pytest

from experiments import placement as pl


def no_gpu():
  return []


def four_gpus():
  return ["0", "1", "2", "3"]


def test_visible_gpus_prefers_cuda_visible_devices():
  assert pl.visible_gpus({}, four_gpus) == ["0", "1", "2", "3"]
  assert pl.visible_gpus({}, no_gpu) == []
  assert pl.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, four_gpus) == ["2", "3"]
  assert pl.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, no_gpu) == ["GPU-aa", "GPU-bb"]
  for none in ("", "-1", "NoDevFiles"):
    assert pl.visible_gpus({"CUDA_VISIBLE_DEVICES": none}, four_gpus) == []


def test_parse_devices_and_groups():
  assert pl.parse_devices("", {}, four_gpus) == []
  assert pl.parse_devices("auto", {"CUDA_VISIBLE_DEVICES": "1"}, four_gpus) == ["1"]
  assert pl.parse_devices("0, 2", {}, no_gpu) == ["0", "2"]
  with pytest.raises(pl.PlacementError, match="given twice"):
    pl.parse_devices("0,0", {}, no_gpu)
  with pytest.raises(pl.PlacementError, match="empty entry"):
    pl.parse_devices("0,,1", {}, no_gpu)
  assert pl.device_groups(["0", "1", "2", "3"], 2) == [("0", "1"), ("2", "3")]
  assert pl.device_groups(["0", "1"], 1) == [("0",), ("1",)]
  with pytest.raises(pl.PlacementError, match="does not divide the 3 devices"):
    pl.device_groups(["0", "1", "2"], 2)


@pytest.mark.parametrize("devices, sharing, memory, environ, expected", [
    (("0",), 1, "auto", {}, {"CUDA_VISIBLE_DEVICES": "0"}),
    (("0", "1"), 1, "auto", {}, {"CUDA_VISIBLE_DEVICES": "0,1"}),
    (None, 3, "auto", {}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.300"}),
    (None, 4, "fraction", {}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}),
    (None, 7, "fraction", {}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.128"}),   # rounded down
    (None, 1, "fraction", {}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.900"}),
    (("1",), 2, "grow", {}, {"CUDA_VISIBLE_DEVICES": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),
    # auto leaves a memory setting of the user's environment alone; explicit modes override it
    (None, 2, "auto", {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, {}),
    (None, 2, "fraction", {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
     {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450"}),
])
def test_child_env(devices, sharing, memory, environ, expected):
  assert pl.child_env(devices=devices, sharing=sharing, memory=memory, environ=environ) == expected


def test_child_env_shares_sum_below_the_device():
  for k in range(1, 17):
    share = float(pl.child_env(devices=None, sharing=k, memory="fraction")[pl.MEM_FRACTION])
    assert k * share <= pl.TOTAL_FRACTION + 1e-12 and share > pl.TOTAL_FRACTION / k - 1e-3


def test_placement_slots_spread_and_release():
  p = pl.make_placement(devices="0,1,2,3", devices_per_run=2, num_jobs=4, memory="auto",
                        environ={}, list_gpus=no_gpu)
  assert p.gpu and p.groups == [("0", "1"), ("2", "3")] and p.sharing == 2
  slots = [p.acquire() for _ in range(4)]
  assert [s for s, _ in slots] == [0, 1, 0, 1]
  assert slots[0][1] == {"CUDA_VISIBLE_DEVICES": "0,1", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450"}
  p.release(1)
  assert p.acquire()[0] == 1                 # the freed group is the least loaded


def test_placement_on_a_cpu_host_sets_nothing():
  for devices in ("", "auto"):
    for jobs in (1, 4):
      for memory in pl.MEMORY_MODES:
        p = pl.make_placement(devices=devices, devices_per_run=1, num_jobs=jobs, memory=memory,
                              environ={}, list_gpus=no_gpu)
        assert not p.gpu and p.acquire() == (None, {}), (devices, jobs, memory)
  # A GPU host without --devices: K runs share every GPU's memory.
  p = pl.make_placement(devices="", devices_per_run=1, num_jobs=2, memory="auto", environ={},
                        list_gpus=four_gpus)
  assert p.gpu and p.acquire() == (None, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.450"})


def test_nvidia_smi_is_asked_only_when_it_matters():
  asked = []
  def lister():
    asked.append(1)
    return []
  pl.make_placement(devices="", devices_per_run=1, num_jobs=1, memory="auto", environ={},
                    list_gpus=lister)
  pl.make_placement(devices="0,1", devices_per_run=1, num_jobs=4, memory="auto", environ={},
                    list_gpus=lister)
  assert asked == []
  pl.make_placement(devices="auto", devices_per_run=1, num_jobs=1, memory="auto", environ={},
                    list_gpus=lister)
  assert asked == [1]


@pytest.mark.parametrize("log, kind", [
    ("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to "
     "allocate 17179869184 bytes.", "oom"),
    ("2026-11-29 E external/xla/...: Out of memory allocating 4.00GiB", "oom"),
    ("CUDA_ERROR_OUT_OF_MEMORY: out of memory", "oom"),
    ("Traceback (most recent call last):\n  ...\nMemoryError", "oom"),
    ("OOM when allocating tensor", "oom"),
    ("ValueError: config.train.batch_size must be > 0", "failed"),
    ("loading room_ids.npy ... boom", "failed"),       # "oom" inside words is not OOM
    ("", "failed"),
])
def test_classify_failure(log, kind):
  assert pl.classify_failure(1, log) == kind
  assert pl.classify_failure(0, log) == "failed"     # exit 0 but unfinished: not an OOM
