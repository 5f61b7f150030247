"""Training: the eager engine (one step, one validation pass), the Ray Train worker loop, the Tune ablation.

``engine`` is plain PyTorch and runs without Ray (the benchmark's eager baseline); ``loop`` wraps it in a
Ray Train worker function; ``launch.train`` is one training run, which the ``train`` stage
(``components/stages/train.py``) and every ablation trial call.
"""
