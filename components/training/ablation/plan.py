"""The ablation's plan: the distinct networks of a sweep (Table 1 of the supplementary, DIH vs DIH + RAIN).

The variants are the placements of ``ablate.placements`` (all of Table 1 with the no-RAIN baseline and
all-RAIN by default) for RainNet, plus one variant per other family (``dih``, ``dih_rain``), each with
every head of ``ablate.heads``. Below 256 px some of the 14 slots have no layer (``rainnet.slot_map``),
so two placements can build the same network: the plan keeps one variant per distinct network (family,
head, the placement letters of the slots that exist at this size) and records which names it stands
for. No Ray or MLflow call: the sweep (``sweep.py``) runs what the plan lists.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from components.config import Params
from components.errors import UserError
from components.models.rainnet import PLACEMENTS, num_blocks_for, resolve_placement, slot_map
from components.models.registry import allowed_arguments, build_model
from components.training import launch

FAMILIES = ("rainnet", "dih", "dih_rain")
HEADS = ("image", "affine", "pct")
# The paper's grouping of Table 1 (RAINNET.md): type I decoder / encoder, II symmetric, III inner.
PLACEMENT_TYPES = {
    "baseline": "-",
    "rain-decoder-1": "I",
    "rain-decoder-2": "I",
    "rain-decoder-3": "I",
    "rain-decoder-4": "I",
    "rain-decoder": "I",
    "rain-encoder": "I",
    "rain-1": "II",
    "rain-2": "II",
    "rain-3": "II",
    "rain-4": "II",
    "rain-5": "II",
    "rain-6": "II",
    "rain-inner-3": "III",
    "rain-inner-4": "III",
    "rain-inner-5": "III",
    "all-rain": "-",
}


# --------------------------------------------------------------------------------------------------
# Plan: the distinct networks of a sweep
# --------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One network of the sweep. ``effective`` has the placement letter of every slot that has a layer
    at this image size and ``.`` for the others (``None`` for DIH families)."""

    id: str
    family: str
    head: str
    placement: str | None = None  # Table 1 name (lower case) or the I/R string as given
    placement_string: str | None = None
    effective: str | None = None
    type: str = "-"
    stands_for: list[str] = field(default_factory=list)

    def spec(self, base: dict) -> dict:
        """The generator spec: ``base`` (``model.generator``) with this family, placement and head, keys
        the family does not take dropped, ``image_size`` left to the data."""
        allowed = set(allowed_arguments(self.family))
        spec = {k: v for k, v in base.items() if k in allowed and k != "image_size"}
        spec["name"] = self.family
        if self.placement is not None:
            spec["placement"] = self.placement
        spec["head"] = self.head
        return spec


def effective_placement(placement: str, image_size: int) -> str:
    """The placement as built at ``image_size``: its letter where the slot has a layer, ``.`` elsewhere
    (the slots of ``RainNet.slot_layers()`` that are non-empty)."""
    string = resolve_placement(placement)
    present: set[int] = set()
    for enc, dec in slot_map(num_blocks_for(image_size)).values():
        present.add(dec)
        if enc is not None:
            present.add(enc)
    return "".join(c if i + 1 in present else "." for i, c in enumerate(string))


def placement_type(placement: str) -> str:
    key = placement.strip().lower().replace("_", "-")
    return PLACEMENT_TYPES.get(key, "custom")


def _placement_key(placement: str) -> str:
    key = placement.strip().lower().replace("_", "-")
    return key if key in PLACEMENTS else placement.strip().upper()


def plan(params: Params, image_size: int) -> list[Variant]:
    """The distinct variants of the sweep, in Table 1 order (``ablate.placements`` order when given)."""
    a = params.ablate
    base = dict(params.model.generator)
    heads = a.heads or [base.get("head", "image")]
    placements = a.placements if a.placements is not None else list(PLACEMENTS)
    for fam in a.families:
        if fam not in FAMILIES:
            raise UserError(
                f"ablate.families: unknown family {fam!r}; expected some of {', '.join(FAMILIES)}"
            )
    for head in heads:
        if head not in HEADS:
            raise UserError(f"ablate.heads: unknown head {head!r}; expected some of {', '.join(HEADS)}")
    if "rainnet" in a.families and not placements:
        raise UserError("ablate.placements is empty: name at least one placement (or null for all)")
    several_heads = len(heads) > 1
    variants: list[Variant] = []
    by_network: dict[tuple, Variant] = {}
    for fam in a.families:
        for head in heads:
            names = [_placement_key(p) for p in placements] if fam == "rainnet" else [None]
            for name in names:
                parts = [fam] + ([name] if name else []) + ([head] if several_heads else [])
                vid = "-".join(parts)
                if name is None:
                    v = Variant(vid, fam, head, type="DIH")
                else:
                    try:
                        string = resolve_placement(name)
                        eff = effective_placement(name, image_size)
                    except ValueError as exc:
                        raise UserError(f"ablate.placements: {exc}") from None
                    v = Variant(vid, fam, head, name, string, eff, placement_type(name))
                key = (fam, head, v.effective)
                if key in by_network:
                    if vid not in by_network[key].stands_for:
                        by_network[key].stands_for.append(vid)
                    continue
                v.stands_for = [vid]
                by_network[key] = v
                variants.append(v)
    for v in variants:  # every family / head / placement must build (cheaply: ngf 1)
        try:
            build_model({**v.spec(base), "ngf": 1, "image_size": image_size})
        except (ValueError, TypeError) as exc:
            raise UserError(f"variant {v.id}: {exc}") from None
    return variants


def trial_params(params: Params, variant: Variant) -> Params:
    """The ``Params`` one trial trains with: the train section with the ablate overrides, the variant's
    generator, the ablation experiment, the variant as run name."""
    p = copy.deepcopy(params)
    a, t = p.ablate, p.train
    if a.epochs is not None:
        t.epochs = a.epochs
    if a.decay_epochs is not None:
        t.decay_epochs = a.decay_epochs
    for name in ("num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker"):
        if getattr(a, name) is not None:
            setattr(t, name, getattr(a, name))
    t.experiment = a.experiment
    t.run_name = variant.id
    p.model.generator = variant.spec(dict(params.model.generator))
    return p


def sweep_name(params: Params) -> str:
    return params.ablate.name or f"ablation-{launch.dataset_name(params)}"


def sweep_key(params: Params, variants: list[Variant], data_hash: str) -> str:
    """Sweep name + a fingerprint of what shapes its trainings (not the epochs: raising them continues)."""
    base = trial_params(params, variants[0])
    what = {
        "train": launch.fingerprint(base, {}, data_hash),
        "variants": [dataclasses.asdict(v) for v in variants],
    }
    fp = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"{sweep_name(params)}-{fp[:8]}"


