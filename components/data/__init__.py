"""Dataset preparation: sources -> object masks -> synthesized composites -> Parquet shards (+ reader)."""
