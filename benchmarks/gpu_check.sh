#!/usr/bin/env bash
# The GPU path (issue #7): on a machine with an NVIDIA GPU, install the CUDA build of jax, run the
# test suite on the GPU, then the throughput benchmark, all within 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--wheels DIR] [--python PY] [--venv DIR] [--jobs N]
#   bash benchmarks/gpu_check.sh --cpu-smoke          # no GPU: checks this script on CPU
#
# Python environment, in this order:
#   1. PY (default: python3) already has a jax that sees a GPU (the lent GPU machines come with
#      jax and its CUDA plugin installed): it is used as it is, jax is never replaced, and only
#      the project's packages it lacks (grain, ml-collections, ...) are installed with --no-deps
#      into DIR/site, put on PYTHONPATH.
#   2. otherwise a virtual environment (--venv, default .venv-gpu) with
#      `pip install -r requirements.txt -r requirements-gpu.txt`.
# --wheels DIR installs offline from the wheels in DIR (`pip --no-index --find-links DIR`), for a
# machine without a package index. Wheels for Python 3.12 of what the GPU image lacks:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     grain==0.2.18 ml-collections==1.1.0 array-record portpicker
#
# Steps, each under `timeout` (sum < 9 minutes, inside one 10-minute device command): install
# (90 s), the devices and versions (30 s), `pytest tests/models tests/training -q -x` (150 s),
# `benchmarks/throughput.py` with float32 and bfloat16 and a per-op profile (100 s),
# `benchmarks/population.py` for P = 1, 4, 16 (100 s), and a bfloat16 run of launch.py (60 s). Everything is logged to DIR (default $OUT, else gpu_check_out): env.txt,
# pytest.log, throughput.log, throughput.json, population.log, population.json, bf16.log.
# Exit status: 0 only if every step passed.
#
# --cpu-smoke runs the same steps on CPU with the project's .venv and no install (a missing
# package is reported, not installed), on a subset: two test files and a tiny benchmark.

set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-gpu_check_out}"
WHEELS=""
PY="${PYTHON:-python3}"
VENV=".venv-gpu"
JOBS=0
SMOKE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
T0=$(date +%s)
STATUS=0
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*"; }
PIP_SOURCE=()
if [[ -n "$WHEELS" ]]; then
  PIP_SOURCE=(--no-index --find-links "$WHEELS")
fi

# Modules the project imports -> the requirement that provides them (requirements.txt pins;
# the last four are what grain and ml-collections need).
REQUIRED=(
  "flax:flax==0.12.8" "optax:optax==0.2.8" "orbax.checkpoint:orbax-checkpoint==0.12.8"
  "grain:grain==0.2.18" "numpy:numpy" "absl:absl-py" "ml_collections:ml-collections==1.1.0"
  "scipy:scipy" "pyarrow:pyarrow" "matplotlib:matplotlib" "tqdm:tqdm" "pytest:pytest"
  "chex:chex" "hypothesis:hypothesis" "array_record:array-record" "portpicker:portpicker"
  "yaml:PyYAML" "etils.epath:etils[epath,epy]" "cloudpickle:cloudpickle"
)

missing_requirements() {   # prints the requirements whose module "$1" (a python) cannot import
  local py="$1" entry
  for entry in "${REQUIRED[@]}"; do
    "$py" -c "import ${entry%%:*}" >/dev/null 2>&1 || echo "${entry#*:}"
  done
}

# ----------------------------------------------------------------------------- 1. environment
if [[ $SMOKE == 1 ]]; then
  PY="${PYTHON:-.venv/bin/python}"
  export JAX_PLATFORMS=cpu
  log "CPU smoke run with $PY (no install)"
  mapfile -t MISSING < <(missing_requirements "$PY")
  if [[ ${#MISSING[@]} -gt 0 ]]; then
    log "would install (--no-deps, into $OUT_DIR/site): ${MISSING[*]}"
  fi
elif timeout 60 "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" \
    >/dev/null 2>&1; then
  log "$PY already has a jax with a GPU: keeping it"
  mapfile -t MISSING < <(missing_requirements "$PY")
  if [[ ${#MISSING[@]} -gt 0 ]]; then
    log "installing ${MISSING[*]} into $OUT_DIR/site"
    timeout 90 "$PY" -m pip install -q --no-deps --no-compile --target "$OUT_DIR/site" \
      "${PIP_SOURCE[@]}" "${MISSING[@]}" || { log "install failed"; exit 1; }
    export PYTHONPATH="$OUT_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  log "no GPU jax in $PY: creating $VENV with requirements.txt + requirements-gpu.txt"
  "$PY" -m venv "$VENV" || { log "venv failed"; exit 1; }
  timeout 300 "$VENV/bin/pip" install -q "${PIP_SOURCE[@]}" -r requirements.txt \
    -r requirements-gpu.txt || { log "install failed"; exit 1; }
  PY="$VENV/bin/python"
fi

# ----------------------------------------------------------------------------- 2. devices
timeout 60 "$PY" - > "$OUT_DIR/env.txt" 2>&1 <<'EOF'
import importlib.metadata as md, platform
import jax
print("python", platform.python_version(), "jax", jax.__version__, "backend", jax.default_backend())
print("devices", jax.devices())
for name in ("jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
             "grain", "ml-collections", "numpy"):
  try:
    print(f"  {name} {md.version(name)}")
  except md.PackageNotFoundError:
    pass
EOF
cat "$OUT_DIR/env.txt"
if [[ $SMOKE == 0 ]] && ! grep -q "backend gpu" "$OUT_DIR/env.txt"; then
  log "no GPU visible to jax: stopping"
  exit 1
fi

# ----------------------------------------------------------------------------- 3. tests
# The tests that need several devices or processes run their own CPU subprocesses. Several JAX
# processes share the GPU: no preallocation of 75% of its memory by each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTEST_ARGS=(-q -x)
if [[ $JOBS -gt 1 ]] && "$PY" -c "import xdist" >/dev/null 2>&1; then
  PYTEST_ARGS+=(-n "$JOBS")
fi
if [[ $SMOKE == 1 ]]; then
  TESTS=(tests/training/test_objective.py tests/training/test_precision.py)
else
  TESTS=(tests/models tests/training)   # the GPU-relevant subset, within its time budget
fi
log "pytest ${TESTS[*]} ${PYTEST_ARGS[*]}"
timeout -s KILL 150 "$PY" -m pytest "${TESTS[@]}" "${PYTEST_ARGS[@]}" 2>&1 | tee "$OUT_DIR/pytest.log" | tail -n 25
rc=${PIPESTATUS[0]}
log "pytest exit status $rc"
[[ $rc == 0 ]] || STATUS=1

# ----------------------------------------------------------------------------- 4. benchmark
unset XLA_PYTHON_CLIENT_PREALLOCATE
if [[ $SMOKE == 1 ]]; then
  BENCH=(--shapes=cloudtheme --impls=factored,pairwise --vocab=small --batch=256 --steps=1
         --repeats=1 --profile)
else
  BENCH=(--dtypes=float32,bfloat16 --steps=20 --repeats=3 --profile)
fi
log "benchmarks/throughput.py ${BENCH[*]}"
timeout -s KILL 100 "$PY" benchmarks/throughput.py "${BENCH[@]}" \
  --json_out="$OUT_DIR/throughput.json" 2>&1 | tee "$OUT_DIR/throughput.log"
rc=${PIPESTATUS[0]}
log "benchmark exit status $rc"
[[ $rc == 0 ]] || STATUS=1

# ----------------------------------------------------------------------------- 5. population
# Member-examples/s of P = 1, 4, 16 members in one vmapped program (mscan_jax.training.population).
if [[ $SMOKE == 1 ]]; then
  POP=(--models=mix --sizes=small --members=1,2 --preset=tiny --steps=1 --repeats=1)
else
  POP=(--models=mscan,mix --sizes=default --members=1,4,16 --steps=10 --repeats=2)
fi
log "benchmarks/population.py ${POP[*]}"
timeout -s KILL 100 "$PY" -m benchmarks.population "${POP[@]}" \
  --json_out="$OUT_DIR/population.json" 2>&1 | tee "$OUT_DIR/population.log"
rc=${PIPESTATUS[0]}
log "population exit status $rc"
[[ $rc == 0 ]] || STATUS=1

# ----------------------------------------------------------------------------- 6. bf16 end to end
# The bfloat16 training path through launch.py (never verified on a GPU before): a short run on
# the tiny preset must train, stay finite and print its table.
log "launch.py --config.dtype=bfloat16 (tiny preset)"
timeout -s KILL 60 "$PY" launch.py --config=mscan_jax/config.py:tiny --config.dtype=bfloat16 \
  --config.data.cache_dir="$OUT_DIR/data_cache" --workdir="$OUT_DIR/bf16-run" 2>&1 \
  | tee "$OUT_DIR/bf16.log" | tail -n 12
rc=${PIPESTATUS[0]}
log "bf16 exit status $rc"
[[ $rc == 0 ]] || STATUS=1

log "done (status $STATUS); logs in $OUT_DIR"
exit $STATUS
