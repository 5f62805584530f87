"""The report: its model, schema, baselines, merging, gates and settings."""
