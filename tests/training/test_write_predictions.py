"""`steps.write_predictions`: predictions.parquet written in row groups, the same table as one
write (issue 23: 43M test predictions never held twice)."""

import numpy as np
import pyarrow.parquet as pq

from mscan_jax.training import steps


def test_predictions_are_written_in_row_groups(tmp_path):
  n = 1000
  rng = np.random.default_rng(0)
  pred = {"sample_id": np.arange(n, dtype=np.int64) * 10**12, "user_id": rng.integers(0, 50, n).astype(np.int32),
          "scenario": rng.integers(1, 4, n).astype(np.int32),
          "label": (rng.random(n) < 0.3).astype(np.float32), "score": rng.random(n).astype(np.float32),
          "prob": rng.random(n).astype(np.float32), "not_a_column": np.zeros(n)}
  path = str(tmp_path / "predictions.parquet")
  steps.write_predictions(path, pred, row_group=300)
  f = pq.ParquetFile(path)
  assert [f.metadata.row_group(k).num_rows for k in range(f.num_row_groups)] == [300, 300, 300, 100]
  table = f.read()
  assert table.column_names == ["sample_id", "user_id", "scenario", "label", "score", "prob"]
  for k in table.column_names:
    np.testing.assert_array_equal(table[k].to_numpy(), pred[k], err_msg=k)
    assert table[k].to_numpy().dtype == pred[k].dtype
  steps.write_predictions(path, {k: v[:7] for k, v in pred.items()}, row_group=300)   # < 1 group
  assert pq.ParquetFile(path).metadata.num_rows == 7
