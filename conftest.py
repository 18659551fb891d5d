"""Root conftest: the repository root is importable (`python -m pytest tests`), and compiled XLA
programs are cached on disk for the session (also in the subprocesses tests start), so the many
small runs of the suite compile each program once; matmuls run at full float32 precision."""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mscan-jax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tests compare against float64 numpy references: on GPUs, float32 matmuls default to TF32
# (~1e-3 relative error), so tests ask for full float32 precision (a no-op on CPU).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
