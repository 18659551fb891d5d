# Root conftest: makes the repository root importable for `python -m pytest tests`.
