"""Scoring a model: per-image metrics on uint8, the test-set evaluation, the paper's protocol, the
showcase pictures, and the promotion rule (pure) that decides a champion from the scores."""
