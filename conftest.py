"""Root conftest: the repository root is importable (`python -m pytest tests`), and compiled XLA
programs are cached on disk for the session (also in the subprocesses tests start), so the many
small runs of the suite compile each program once."""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mscan-jax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
