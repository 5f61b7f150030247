"""Training: the eager engine (one step, one validation pass), the Ray Train worker loop, MLflow logging.

``engine`` is plain PyTorch and runs without Ray (the benchmark's eager baseline); ``loop`` wraps it in a
Ray Train worker function; ``launch`` is what ``python -m pipeline.train`` calls.
"""
