"""The ablation's report: one row per variant (CSV), the Markdown table and the figures, from the
per-epoch validation metrics of each variant's MLflow child run."""

from __future__ import annotations

import io
import math
from typing import Any

from components.storage import Store
from components.training.ablation.plan import Variant

REFERENCES = ("baseline", "all-rain")  # drawn in every type figure
METRICS = ("val_psnr", "val_mse", "val_fmse")
CSV_COLUMNS = (
    "variant", "family", "placement", "placement_string", "effective_placement", "head", "type",
    "stands_for", "status", "epochs", "final_psnr", "final_mse", "final_fmse", "best_psnr",
    "best_psnr_epoch", "best_mse", "best_fmse", "run_id", "error",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Results: table, Markdown, figures
# --------------------------------------------------------------------------------------------------


def result_row(v: Variant, status: str, history: list[dict], run_id: str = "", error: str = "") -> dict:
    row: dict[str, Any] = {
        "variant": v.id, "family": v.family, "placement": v.placement or "", "placement_string":
        v.placement_string or "", "effective_placement": v.effective or "", "head": v.head, "type": v.type,
        "stands_for": ";".join(v.stands_for), "status": status, "epochs": len(history), "run_id": run_id,
        "error": error,
    }  # fmt: skip
    if history:
        last = history[-1]
        best = max(history, key=lambda r: r["val_psnr"])
        row.update(
            final_psnr=round(last["val_psnr"], 4),
            final_mse=round(last["val_mse"], 4),
            final_fmse=round(last["val_fmse"], 4),
            best_psnr=round(best["val_psnr"], 4),
            best_psnr_epoch=best["epoch"],
            best_mse=round(min(r["val_mse"] for r in history), 4),
            best_fmse=round(min(r["val_fmse"] for r in history), 4),
        )
    return row


def write_csv(path: str, rows: list[dict], store: Store | None = None) -> None:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    (store or Store()).write_bytes(path, buf.getvalue().encode())


def _fmt(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) and math.isfinite(x) else (str(x) if x != "" else "-")


def markdown(rows: list[dict], info: dict, composite: dict | None) -> str:
    lines = [
        f"# Ablation `{info['sweep']}`",
        "",
        f"Sweep key `{info['key']}`, MLflow parent run `{info['parent_run_id']}` (experiment "
        f"`{info['experiment']}`). Data `{info['dataset']}` ({info['image_size']}x{info['image_size']}), "
        f"{info['epochs']} epoch(s) per variant, seed {info['seed']}. Validation metrics per image on 0..255, "
        "PSNR peak 255; best PSNR is the highest epoch, best MSE / fMSE the lowest.",
        "",
        f"Scheduler: {info.get('scheduler', 'none (every variant runs all epochs)')}.",
        "",
        f"Command: `{info['command']}`",
        "",
        "| variant | type | placement | effective at this size | stands for | status | epochs | "
        "final PSNR | final MSE | final fMSE | best PSNR | epoch of best PSNR | best MSE | best fMSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if composite:
        lines.append(
            f"| composite (no harmonization) | | | | | | | {_fmt(composite['psnr'])} | "
            f"{_fmt(composite['mse'])} | {_fmt(composite['fmse'])} | | | | |"
        )
    for r in rows:
        place = f"`{r['placement_string']}`" if r["placement_string"] else "-"
        eff = f"`{r['effective_placement']}`" if r["effective_placement"] else "-"
        status = r["status"] + (f" ({r['error']})" if r.get("error") else "")
        lines.append(
            f"| {r['variant']} | {r['type']} | {place} | {eff} | {', '.join(r['stands_for'].split(';'))} | "
            f"{status} | {r['epochs']} | {_fmt(r.get('final_psnr', ''))} | {_fmt(r.get('final_mse', ''))} | "
            f"{_fmt(r.get('final_fmse', ''))} | {_fmt(r.get('best_psnr', ''))} | "
            f"{r.get('best_psnr_epoch', '-')} | {_fmt(r.get('best_mse', ''))} | {_fmt(r.get('best_fmse', ''))} |"
        )
    lines += [
        "",
        "Effective placement: the slot letters of the layers that exist at this image size (`.`: no layer; "
        "below 256 px the middle slots have none), so one network can stand for several Table 1 names.",
        "",
    ]
    return "\n".join(lines)


def figure(panels: list[tuple[str, dict[str, list[dict]], dict[str, list[dict]]]]) -> bytes:
    """PSNR against epoch (the supplementary's Fig. 2-4), one panel per ``(title, curves, references)``:
    a line per variant, references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (title, curves_by_variant, references) in zip(axes[0], panels, strict=True):
        for name, hist in curves_by_variant.items():
            if hist:
                ax.plot([r["epoch"] for r in hist], [r["val_psnr"] for r in hist], marker="o", ms=3, label=name)
        for name, hist in references.items():
            if hist and name not in curves_by_variant:
                ax.plot(
                    [r["epoch"] for r in hist], [r["val_psnr"] for r in hist], ls="--", marker="x", ms=4, label=name
                )
        if not any(curves_by_variant.values()) and not any(references.values()):
            ax.text(0.5, 0.5, "no variant of this kind finished an epoch", ha="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _label(v: Variant) -> str:
    others = [n.removeprefix(f"{v.family}-") for n in v.stands_for if n != v.id]
    return v.id + (f" (= {', '.join(others)})" if others else "")


def figure_panels(variants: list[Variant], histories: dict[str, list[dict]]) -> list[tuple]:
    """The panels of the sweep's figure: one per kind the sweep has a variant of (placement types I, II,
    III with baseline and all-RAIN dashed in each; DIH vs DIH + RAIN), so a sweep of three placements
    draws one panel, not three empty ones. A sweep of the references alone draws them in one panel."""
    refs = {
        _label(v): histories.get(v.id, [])
        for v in variants
        if v.family == "rainnet" and v.placement in REFERENCES
    }
    panels = []
    for t in ("I", "II", "III"):
        chosen = {_label(v): histories.get(v.id, []) for v in variants if v.type == t}
        if chosen:
            panels.append((f"Type {t} placements: validation PSNR", chosen, refs))
    fam = {_label(v): histories.get(v.id, []) for v in variants if v.family != "rainnet"}
    if fam:
        panels.append(("DIH vs DIH + RAIN: validation PSNR", fam, {}))
    if not panels:
        panels.append(("RainNet: validation PSNR", refs, {}))
    return panels


def figures(variants: list[Variant], histories: dict[str, list[dict]]) -> bytes:
    """The sweep's one figure (PNG): a panel per kind of variant it ran."""
    return figure(figure_panels(variants, histories))


