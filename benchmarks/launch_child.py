"""Text of the code that `benchmarks.memory` and `benchmarks.scale` run in a child process
(`python -c`) around a `launch.py`: the resident-set helpers, and the tail that runs launch.py
with `steps.predict` already wrapped by the caller's text (which defines `predict`, `marks`,
`marks_path`, `launch` and `t0`) and writes the marks when it ends, however it ends. Text, not
imports: the child may run another checkout's launch.py and mscan_jax."""

# peak(): the high-water mark of the resident set; current(): the resident set; reset(): the
# high-water mark set back to the current resident set (or left, where the kernel refuses).
RSS = r"""
def peak():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

def current():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

def reset():
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")                      # resets VmHWM to the current resident set
  except OSError:
    pass                                # then a later phase's peak includes the earlier ones
"""

# save(): the marks so far, written to marks_path through a temporary file (a killed run
# leaves the marks of the phases it began).
RUN_LAUNCH = r"""
def save():
  import os
  with open(marks_path + ".tmp", "w") as f:
    json.dump(marks, f)
  os.replace(marks_path + ".tmp", marks_path)

steps.predict = predict
sys.argv = [launch] + sys.argv[3:]
try:
  runpy.run_path(launch, run_name="__main__")
finally:
  marks.append({"event": "exit", "peak": peak(), "t": time.perf_counter() - t0})
  save()
"""
