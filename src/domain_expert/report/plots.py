"""The report's two figures as PNG bytes: training/validation loss, and per-item (tuned - base) differences."""

from __future__ import annotations

import io

from domain_expert.report.formatting import bad, fmt_ci, fmt_num

LOSS_PNG = "loss.png"  # file names next to report.md (report.html embeds the same bytes)
ITEM_DIFFS_PNG = "item_diffs.png"

GOOD, BAD, NEUTRAL, INK, MUTED = "#1a7f37", "#cf222e", "#8c959f", "#1f2328", "#59636e"


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    ax.grid(True, color="#e6e8eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#afb8c1")
    ax.tick_params(colors=MUTED, labelsize=9)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _ema(values: list[float], weight: float = 0.8) -> list[float]:
    out, s = [], None
    for v in values:
        s = v if s is None else weight * s + (1 - weight) * v
        out.append(s)
    return out


def plot_loss(rows: list[dict]) -> bytes | None:
    train = [(r["step"], float(r["train_loss"])) for r in rows if not bad(r.get("train_loss"))]
    val = sorted({r["step"]: float(r["val_loss"]) for r in rows if not bad(r.get("val_loss"))}.items())
    if not train and not val:
        return None
    fig = _figure(9.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    _style(ax)
    if train:
        xs, ys = zip(*train, strict=True)
        ax.plot(xs, ys, color="#0969da", alpha=0.25, linewidth=1.0, label="train loss (per step)")
        ax.plot(xs, _ema(list(ys)), color="#0969da", linewidth=2.0, label="train loss (smoothed, EMA 0.8)")
    if val:
        xs, ys = zip(*val, strict=True)
        ax.plot(xs, ys, color="#bf3989", linewidth=1.5, linestyle="--", marker="o", markersize=5, label="val loss")
    ax.set_xlabel("optimizer step", color=MUTED, fontsize=10)
    ax.set_ylabel("loss (mean token NLL)", color=MUTED, fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    return _png(fig)


def plot_item_diffs(panels: list[tuple[str, list[float], dict | None]]) -> bytes | None:
    """One panel per metric: per-item (tuned - base) differences sorted, with the mean and its 95% CI."""
    panels = [(t, d, c) for t, d, c in panels if d]
    if not panels:
        return None
    fig = _figure(9.0, 3.3 * len(panels))
    for k, (title, diffs, comp) in enumerate(panels, start=1):
        ax = fig.add_subplot(len(panels), 1, k)
        _style(ax)
        d = sorted(diffs)
        colors = [GOOD if x > 0 else BAD if x < 0 else NEUTRAL for x in d]
        ax.bar(range(1, len(d) + 1), d, width=0.8, color=colors, alpha=0.85)
        ax.axhline(0, color=INK, linewidth=0.8)
        mean = comp.get("diff") if comp else None
        mean = sum(d) / len(d) if bad(mean) else mean
        lo, hi = (comp.get("ci_low"), comp.get("ci_high")) if comp else (None, None)
        text = f"mean {fmt_num(mean, signed=True)}"
        if not (bad(lo) or bad(hi)):
            ax.axhspan(lo, hi, color="#0969da", alpha=0.15, linewidth=0, label="95% CI of the mean")
            text += f", 95% CI {fmt_ci(lo, hi)}"
        ax.axhline(mean, color="#0969da", linewidth=1.6, label="mean difference")
        ax.set_title(f"{title}: tuned − base per item (n = {len(d)}; {text})", fontsize=10.5, color=INK, loc="left")
        ax.set_xlim(0.3, len(d) + 0.7)
        ax.set_ylabel("difference", color=MUTED, fontsize=10)
        ax.legend(frameon=False, fontsize=8.5, loc="upper left")
    fig.axes[-1].set_xlabel("items, sorted by difference", color=MUTED, fontsize=10)
    fig.tight_layout(h_pad=1.5)
    return _png(fig)
