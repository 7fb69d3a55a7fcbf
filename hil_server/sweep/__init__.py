"""Dataset sweeps (``eis-hil sweep``): a sweep file's cross product of scenarios, profiles, seeds and
overrides, run on local worker processes or Ray, into one hive-partitioned Parquet dataset with a manifest."""
