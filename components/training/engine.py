"""One training step and one validation pass, in plain PyTorch (no Ray, no MLflow, no I/O).

The Ray Train loop (``loop.py``) and the benchmark's eager baseline both drive these functions, so the
two measure the same arithmetic. The adversarial setup follows RAINNET.md section 4: one D step (global
D + domain-verification D, hinge, optional gradient penalty), then one G step
(``lambda_adv * L_adv + lambda_v * L_v + lambda_l1 * L1``); ``gan: false`` trains with L1 only.

Distributed: the generator may be DDP-wrapped (Ray's ``prepare_model``). The discriminators are not:
the gradient penalty needs a double backward, which DDP does not support, so their gradients are
averaged across ranks by hand (``average_gradients``) after the D backward; they are small. In the G
step the discriminators are frozen (``requires_grad=False``) so G's backward leaves them untouched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.evaluation import metrics as M
from components.models import losses
from components.models.init import init_weights
from components.models.registry import build_model
from components.training import cuda
from components.training.augment import identity_pairs, scene_colour_jitter
from components.training.schedule import make_scheduler

METRIC_KEYS = ("mse", "psnr", "fmse", "fpsnr")


@dataclass
class TrainState:
    """Everything a checkpoint holds; ``epoch`` counts completed epochs (1-based numbering)."""

    generator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    sched_g: Any
    discriminator: torch.nn.Module | None = None
    domain_discriminator: torch.nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    sched_d: Any = None
    epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"epoch", "val_fmse", "generator": state dict} of the best val epoch
    nonfinite_steps: int = 0  # steps skipped because a loss was NaN / Inf (all of training)
    nonfinite_in_a_row: int = 0  # ... of which the latest, without a finite step between
    ema: Any = None  # torch.optim.swa_utils.AveragedModel of the generator (train.ema_decay > 0)

    @property
    def gan(self) -> bool:
        return self.discriminator is not None


def unwrap(model: torch.nn.Module | None) -> torch.nn.Module | None:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def make_deterministic(threads: int | None, strict: bool = True) -> None:
    """The same command on the same machine gives the same weights: torch's deterministic kernels and a
    fixed intra-op thread count (how a float sum is split over threads changes its rounding). ``strict``:
    an op without a deterministic kernel raises instead of running anyway (CPU; on GPU a warning, and
    cuBLAS gets the fixed workspace it needs). Across machines (other CPUs, other BLAS paths) the
    numbers still differ, within the seed-to-seed spread (docs/RESULTS.md)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=not strict)
    if threads:
        torch.set_num_threads(threads)


def seed_everything(*keys: int) -> None:
    """Seed torch, numpy and random from a tuple of ints (e.g. ``(seed, rank, epoch)``)."""
    s = int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def build_state(
    params,
    gen_spec: dict | None = None,
    device: torch.device | str = "cpu",
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> TrainState:
    """Build networks (N(0, init_gain) init), Adam optimizers and schedulers from ``Params``.

    ``gen_spec`` is the effective generator spec (``generator_spec``: with the data's image size);
    weights are drawn from ``train.seed`` alone, so every rank starts from the same network. ``wrap``
    (e.g. ``ray.train.torch.prepare_model``) is applied to the generator after it is on ``device``.
    """
    t = params.train
    seed_everything(t.seed)
    gen = build_model(dict(gen_spec or params.model.generator))
    init_weights(gen, t.init_gain)
    gen = cuda.memory_format(gen.to(device), device, t.channels_last)  # CUDA only
    if wrap is not None:
        gen = wrap(gen)
    opt_g = torch.optim.Adam(gen.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
    state = TrainState(gen, opt_g, make_scheduler(opt_g, t.epochs, t.decay_epochs))
    if t.ema_decay > 0:
        state.ema = make_ema(unwrap(gen), t.ema_decay)
    if t.gan:
        d = build_model(dict(params.model.discriminator))
        dv = build_model(dict(params.model.domain_discriminator))
        for net in (d, dv):
            init_weights(net, t.init_gain)
        d, dv = (cuda.memory_format(n.to(device), device, t.channels_last) for n in (d, dv))
        state.discriminator, state.domain_discriminator = d, dv
        opt_d = torch.optim.Adam(
            itertools.chain(d.parameters(), dv.parameters()), lr=t.lr, betas=(t.beta1, t.beta2)
        )
        state.opt_d, state.sched_d = opt_d, make_scheduler(opt_d, t.epochs, t.decay_epochs)
    return state


def make_ema(generator: torch.nn.Module, decay: float):
    """An exponential moving average of the generator's weights (and buffers), updated every step.

    Small data makes the weights of consecutive epochs score very differently on unseen scenes; their
    average generalizes better than any one of them, so validation, ``keep: best`` and the model a run
    ships use the average, while training continues from the raw weights.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def eval_generator(state: TrainState) -> torch.nn.Module:
    """The generator that is validated and shipped: the weight average when there is one."""
    return state.ema.module if state.ema is not None else unwrap(state.generator)


def shipped_generator_state(data: dict[str, Any]) -> dict[str, Any]:
    """From a saved training state (:func:`state_dict`): the weights of the model the run ships."""
    return data.get("ema") or data["generator"]


def generator_spec(spec: dict, image_size: int) -> dict:
    """The generator spec as trained: ``image_size`` filled in from the data when the builder takes one
    and params leave it out (RainNet's depth follows its input size)."""
    from components.models.registry import allowed_arguments

    spec = dict(spec)
    try:
        allowed = allowed_arguments(spec["name"])
    except KeyError:  # no name, an unknown one, or builders not imported yet: let the registry decide
        build_model(spec)
        allowed = allowed_arguments(spec["name"])
    if "image_size" not in spec and "image_size" in allowed:
        spec["image_size"] = int(image_size)
    return spec


def state_dict(state: TrainState) -> dict[str, Any]:
    """A CPU-loadable dict of the whole training state (DDP wrappers removed)."""
    out = {
        "generator": unwrap(state.generator).state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "sched_g": state.sched_g.state_dict(),
        "epoch": state.epoch,
        "global_step": state.global_step,
        "history": list(state.history),
        "best": state.best,
        "nonfinite_steps": state.nonfinite_steps,
    }
    if state.ema is not None:
        out["ema"] = state.ema.module.state_dict()
        out["ema_updates"] = int(state.ema.n_averaged)
    if state.gan:
        out.update(
            discriminator=state.discriminator.state_dict(),
            domain_discriminator=state.domain_discriminator.state_dict(),
            opt_d=state.opt_d.state_dict(),
            sched_d=state.sched_d.state_dict(),
        )
    return out


def load_state_dict(state: TrainState, data: dict[str, Any]) -> None:
    """Restore a :func:`state_dict` into freshly built networks (strict: a wrong architecture fails)."""
    unwrap(state.generator).load_state_dict(data["generator"], strict=True)
    state.opt_g.load_state_dict(data["opt_g"])
    state.sched_g.load_state_dict(data["sched_g"])
    if state.gan:
        if "discriminator" not in data:
            raise ValueError("checkpoint has no discriminators but train.gan is true")
        state.discriminator.load_state_dict(data["discriminator"], strict=True)
        state.domain_discriminator.load_state_dict(data["domain_discriminator"], strict=True)
        state.opt_d.load_state_dict(data["opt_d"])
        state.sched_d.load_state_dict(data["sched_d"])
    state.epoch = int(data["epoch"])
    state.global_step = int(data["global_step"])
    state.history = list(data.get("history", []))
    state.best = data.get("best")
    state.nonfinite_steps = int(data.get("nonfinite_steps", 0))
    if state.ema is not None:
        if "ema" not in data:
            raise ValueError("checkpoint has no weight average but train.ema_decay is set")
        state.ema.module.load_state_dict(data["ema"], strict=True)
        state.ema.n_averaged.fill_(int(data.get("ema_updates", 1)))


def track_best(state: TrainState, val_fmse: float) -> bool:
    """Keep a CPU copy of the generator when ``val_fmse`` is the lowest so far; True when it is."""
    if state.best is not None and not val_fmse < state.best["val_fmse"]:
        return False
    gen = eval_generator(state).state_dict()
    state.best = {
        "epoch": state.epoch,
        "val_fmse": float(val_fmse),
        "generator": {k: v.detach().cpu().clone() for k, v in gen.items()},
    }
    return True


def autocast(device: torch.device | str, enabled: bool):
    """bf16 autocast on CUDA only; a no-op context on CPU (CPU bf16 is slower and less accurate here)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _requires_grad(nets: Iterable[torch.nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def average_gradients(nets: Iterable[torch.nn.Module]) -> None:
    """All-reduce (mean) the gradients of non-DDP networks across ranks; no-op outside torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for net in nets for p in net.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row with a NaN / Inf loss: the weights have diverged."""


def all_finite(*values: torch.Tensor | None) -> bool:
    """True when every given loss is finite on every rank (all-reduced with MIN, so all ranks agree and
    skip the same step: DDP's gradient all-reduce stays in step)."""
    import torch.distributed as dist

    present = [v.detach() for v in values if v is not None]
    flag = torch.tensor(
        [float(all(bool(torch.isfinite(v).all()) for v in present))], device=present[0].device
    )
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def weights_finite(*nets: torch.nn.Module | None) -> bool:
    """True when every parameter and buffer of the given networks is finite (checked before saving)."""
    return all(
        bool(torch.isfinite(t).all())
        for net in nets
        if net is not None
        for t in unwrap(net).state_dict().values()
        if torch.is_floating_point(t)
    )


def count_step(state: TrainState, finite: bool, max_in_a_row: int) -> None:
    """Count a skipped (non-finite) step; ``NonFiniteLossError`` after ``max_in_a_row`` in a row."""
    state.global_step += 1
    if finite:
        state.nonfinite_in_a_row = 0
        return
    state.nonfinite_steps += 1
    state.nonfinite_in_a_row += 1
    if state.nonfinite_in_a_row >= max_in_a_row:
        raise NonFiniteLossError(
            f"non-finite loss (NaN/Inf) in {state.nonfinite_in_a_row} steps in a row, up to step "
            f"{state.global_step} (epoch {state.epoch + 1}); the weights diverged: lower train.lr or check "
            "the data (train.max_nonfinite_steps sets how many such steps are skipped before stopping)"
        )


def to_device(
    batch: dict, device: torch.device | str, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's images on ``device`` (asynchronous from pinned memory; channels-last on CUDA if asked)."""
    return tuple(
        cuda.memory_format(batch[k].to(device, non_blocking=True), device, channels_last)
        for k in ("composite", "mask", "real")
    )


def _f(x: torch.Tensor) -> float:
    return float(x.detach())


def train_step(state: TrainState, batch: dict, t, device, amp: bool = True) -> dict[str, float]:
    """One iteration on one batch; ``t`` is ``params.train``. Returns the loss values (floats), or ``{}``
    when a loss was NaN / Inf and the step was skipped (counted in ``state.nonfinite_steps``)."""
    comp, mask, real = to_device(batch, device, getattr(t, "channels_last", False))
    comp, real = scene_colour_jitter(comp, real, t.colour_jitter)
    comp = identity_pairs(comp, real, t.identity_fraction)
    gen = state.generator
    gen.train()
    with autocast(device, amp):
        out, aux = gen(comp, mask, return_aux=True)
    out = out.float()
    logs: dict[str, float] = {}

    if state.gan:
        d, dv = state.discriminator, state.domain_discriminator
        d.train()
        dv.train()
        _requires_grad((d, dv), True)
        state.opt_d.zero_grad(set_to_none=True)
        fake = out.detach()
        with autocast(device, amp):
            s_real, s_fake = d(torch.cat([real, fake])).float().chunk(2)
            v_real, v_fake = dv(torch.cat([real, fake]), torch.cat([mask, mask])).float().chunk(2)
        loss_d_adv = losses.d_hinge_loss(s_real, s_fake)
        loss_d_v = losses.domain_d_loss(v_real, v_fake)
        loss_gp = None
        if t.gp_weight > 0:
            loss_gp = losses.gradient_penalty(d, real, fake, weight=t.gp_weight)
            logs["loss_d_gp"] = _f(loss_gp)
        loss_d = losses.discriminator_objective(loss_d_adv, loss_d_v, loss_gp, t.lambda_adv, t.lambda_v)
        if all_finite(loss_d):
            loss_d.backward()
            average_gradients((d, dv))
            state.opt_d.step()
            logs.update(loss_d=_f(loss_d), loss_d_adv=_f(loss_d_adv), loss_d_v=_f(loss_d_v))
        else:
            logs["skipped"] = 1.0
        _requires_grad((d, dv), False)

    state.opt_g.zero_grad(set_to_none=True)
    # An ensemble's members are each trained on their own loss (ensemble.py), averaged over the members.
    members = aux.get("members") if isinstance(aux, dict) else None
    parts = members or [(out, aux)]
    loss_l1 = torch.stack(
        [losses.reconstruction_loss(t.loss, o.float(), real, mask, t.fn_min_area) for o, _ in parts]
    ).mean()
    g_adv = g_v = None
    if state.gan:
        with autocast(device, amp):
            g_adv = losses.g_hinge_loss(state.discriminator(out))
            g_v = losses.domain_g_loss(state.domain_discriminator(out, mask))
        logs.update(loss_g_adv=_f(g_adv), loss_g_v=_f(g_v))
    loss_g = losses.generator_objective(loss_l1, g_adv, g_v, t.lambda_adv, t.lambda_v, t.lambda_l1)
    if isinstance(aux, dict) and aux.get("mask_logits") is not None:
        # DIH's segmentation head, trained to predict the foreground mask (no scene-parsing labels).
        loss_mask = torch.stack(
            [F.binary_cross_entropy_with_logits(a["mask_logits"].float(), mask) for _, a in parts]
        ).mean()
        loss_g = loss_g + t.lambda_mask * loss_mask
        logs["loss_mask"] = _f(loss_mask)
    finite = all_finite(loss_g) and "skipped" not in logs
    if finite:  # a NaN / Inf loss is never backpropagated: the weights stay as they were
        loss_g.backward()
        state.opt_g.step()
        if state.ema is not None:
            state.ema.update_parameters(unwrap(gen))
    count_step(state, finite, t.max_nonfinite_steps)
    if not finite:
        return {}
    logs.update(loss_g=_f(loss_g), loss_l1=_f(loss_l1))
    return logs


def end_epoch(state: TrainState) -> None:
    """Step the schedulers and count the epoch."""
    state.sched_g.step()
    if state.sched_d is not None:
        state.sched_d.step()
    state.epoch += 1


def current_lr(state: TrainState) -> float:
    return float(state.opt_g.param_groups[0]["lr"])


class MetricSums:
    """Sums of per-image metrics (model output and the composite itself), reducible across ranks."""

    def __init__(self):
        self.sums = np.zeros(2 * len(METRIC_KEYS) + 1, dtype=np.float64)

    def add(self, out_u8: np.ndarray, comp_u8: np.ndarray, real_u8: np.ndarray, mask: np.ndarray) -> None:
        m_out = M.batch_metrics(out_u8, real_u8, mask)
        m_comp = M.batch_metrics(comp_u8, real_u8, mask)
        k = len(METRIC_KEYS)
        for i, key in enumerate(METRIC_KEYS):
            self.sums[i] += float(np.sum(m_out[key]))
            self.sums[k + i] += float(np.sum(m_comp[key]))
        self.sums[-1] += len(out_u8)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.from_numpy(self.sums.copy())
            dist.all_reduce(t)
            self.sums = t.numpy()

    def means(self) -> tuple[dict[str, float], dict[str, float]]:
        """``({"val_mse": ...}, {"val_mse": ...} of the composite)``; image-weighted means."""
        n = max(self.sums[-1], 1.0)
        k = len(METRIC_KEYS)
        model = {f"val_{key}": float(self.sums[i] / n) for i, key in enumerate(METRIC_KEYS)}
        comp = {f"val_{key}": float(self.sums[k + i] / n) for i, key in enumerate(METRIC_KEYS)}
        return model, comp

    @property
    def count(self) -> int:
        return int(self.sums[-1])


@torch.no_grad()
def predict(generator: torch.nn.Module, comp: torch.Tensor, mask: torch.Tensor, device, amp: bool = True):
    """Eval-mode forward of the plain generator (no DDP), float32 output."""
    gen = unwrap(generator)
    was_training = gen.training
    gen.eval()
    with autocast(device, amp):
        out = gen(comp, mask)
    gen.train(was_training)
    return out.float()


@torch.no_grad()
def validate(
    generator: torch.nn.Module, batches: Iterable[dict], device, amp: bool = True, keep: int = 0
) -> tuple[MetricSums, dict[str, np.ndarray] | None]:
    """Model in eval mode over ``batches``: metric sums, and the first ``keep`` samples as uint8 arrays
    (composite, mask, output, real) for the sample grid."""
    sums = MetricSums()
    kept: dict[str, list] = {"composite": [], "mask": [], "output": [], "real": []}
    n_kept = 0
    for batch in batches:
        comp, mask, real = to_device(batch, device)
        out = predict(generator, comp, mask, device, amp)
        out_u8, comp_u8, real_u8 = (M.images_to_uint8(x) for x in (out, comp, real))
        mask_np = mask[:, 0].cpu().numpy()
        sums.add(out_u8, comp_u8, real_u8, mask_np)
        if n_kept < keep:
            take = min(keep - n_kept, len(out_u8))
            kept["composite"].append(comp_u8[:take])
            kept["mask"].append((mask_np[:take] * 255).astype(np.uint8))
            kept["output"].append(out_u8[:take])
            kept["real"].append(real_u8[:take])
            n_kept += take
    samples = {k: np.concatenate(v) for k, v in kept.items()} if n_kept else None
    return sums, samples
