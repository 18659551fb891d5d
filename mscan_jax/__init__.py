"""mscan-jax: M-scan (Multi-Scenario Causal-driven Adaptive Network) and its baselines in JAX/Flax."""

__version__ = "0.1.0"
