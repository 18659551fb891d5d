"""Evaluation: AUC, GAUC, log loss, RelaImpr, significance tests."""
