"""The RAIN placement ablations as one Ray Tune sweep: ``plan`` (the distinct networks), ``sweep`` (the
Tune trials and their MLflow runs), ``report`` (the table and figures)."""
