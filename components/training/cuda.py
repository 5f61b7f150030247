"""What keeps a GPU busy, in one place; every function is a no-op off CUDA, so CPU results do not change.

- ``tune_backend``: cuDNN picks the fastest convolution algorithms for the (fixed) input shape once
  (``cudnn.benchmark``), TF32 for the float32 matmuls / convolutions left outside bf16 autocast.
- ``memory_format``: channels-last (NHWC) weights and inputs, which the tensor-core convolution kernels
  prefer under bf16 (``train.channels_last``).
- ``loader_options``: pinned host memory (so ``.to(device, non_blocking=True)`` overlaps the copy with
  compute) and ``train.loader_workers`` DataLoader processes decoding ahead of the step.
- ``upload_mode``: checkpoints upload in the background (Ray Train's async upload), not inside the step.
"""

from __future__ import annotations

import torch


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def tune_backend(device) -> None:
    if is_cuda(device):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_format(x, device, channels_last: bool):
    """A module or 4-D tensor in channels-last on CUDA when asked; unchanged otherwise."""
    if channels_last and is_cuda(device) and (not torch.is_tensor(x) or x.dim() == 4):
        return x.to(memory_format=torch.channels_last)
    return x


def loader_options(t, device) -> dict:
    """DataLoader keyword arguments: worker processes (``train.loader_workers``; they prefetch) and pinned
    memory on CUDA."""
    workers = int(getattr(t, "loader_workers", 0) or 0)
    out: dict = {"num_workers": workers, "pin_memory": is_cuda(device)}
    if workers > 0:  # not persistent: a fresh worker copy each epoch sees the dataset's set_epoch
        out["prefetch_factor"] = 4
    return out


def upload_mode(device):
    """Ray Train's checkpoint upload: in the background on CUDA (the GPU keeps stepping while the
    checkpoint goes to storage; a resume skips a checkpoint whose upload did not finish, by its sha256),
    in the report call on CPU (the tested path)."""
    from ray.train import CheckpointUploadMode

    return CheckpointUploadMode.ASYNC if is_cuda(device) else CheckpointUploadMode.SYNC
