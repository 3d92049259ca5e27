"""The quickstart report: metrics table, attention maps, retrieval results, training curves, one HTML page."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import cv2
import numpy as np

from lcr_sdk.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from lcr_sdk.images import heatmap_overlay
from lcr_sdk.metrics import ranking

TILE = 112  # px per image tile in the pictures
COLUMNS = ["rank1", "rank5", "mAP", "knn_top1", "linear_top1", "attention_on_object"]
SHORT = {"attention_on_object": "attn_on_obj"}  # column titles of the printed table


def _tile(img: np.ndarray, border: tuple[int, int, int] | None = None, label: str = "") -> np.ndarray:
    t = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)
    if border is not None:
        cv2.rectangle(t, (0, 0), (TILE - 1, TILE - 1), border, 4)
    if label:
        cv2.rectangle(t, (0, TILE - 16), (TILE, TILE), (0, 0, 0), -1)
        cv2.putText(t, label[:18], (3, TILE - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
    return t


def _caption(text: str, width: int) -> np.ndarray:
    bar = np.full((22, width, 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def attention_figure(
    images: list[np.ndarray], masks_by_method: dict[str, np.ndarray], boxes: list | None = None
) -> np.ndarray:
    """Rows: the test images, then one row of overlays per method (its attention mask M); ``boxes`` (x0, y0, x1, y1
    per image, in its pixels), when known, are drawn on the overlays: the object the mask should cover."""

    def boxed(tile: np.ndarray, im: np.ndarray, box: list | None) -> np.ndarray:
        if box is not None:
            sx, sy = TILE / im.shape[1], TILE / im.shape[0]
            x0, y0, x1, y1 = (round(v * s) for v, s in zip(box, (sx, sy, sx, sy), strict=True))
            cv2.rectangle(tile, (x0, y0), (x1, y1), (255, 255, 255), 1, cv2.LINE_AA)
        return tile

    rows = [np.hstack([_tile(im) for im in images])]
    width = rows[0].shape[1]
    out = [_caption("test images", width), rows[0]]
    marks = boxes if boxes is not None else [None] * len(images)
    for name, masks in masks_by_method.items():
        what = " (white box: the object)" if boxes is not None else ""
        out += [
            _caption(f"{name}: attention mask M (red = high){what}", width),
            np.hstack([boxed(_tile(heatmap_overlay(im, m)), im, b) for im, m, b in zip(images, masks, marks)]),
        ]
    return np.vstack(out)


def retrieval_figure(
    images: list[np.ndarray], labels: list[int], classes: list[str], emb_by_method: dict, queries: list[int], k: int = 5
) -> np.ndarray:
    """Per method and query: the query, then its top-k leave-one-out neighbours, green = same class, red = not."""
    blocks = []
    for name, emb in emb_by_method.items():
        scores = emb @ emb.T
        np.fill_diagonal(scores, -np.inf)
        order = ranking(scores)
        rows = []
        for q in queries:
            tiles = [_tile(images[q], (255, 255, 255), "query: " + classes[labels[q]].split("_")[0])]
            for j in order[q, :k]:
                ok = labels[j] == labels[q]
                # the verdict in words as well as in colour (red and green look alike to many readers)
                mark = "same" if ok else classes[labels[j]].split("_")[0]
                tiles.append(_tile(images[j], (0, 200, 0) if ok else (0, 0, 230), f"{scores[q, j]:.2f} {mark}"))
            rows.append(np.hstack(tiles))
        width = rows[0].shape[1]
        blocks += [
            _caption(
                f"{name}: query, then top-{k} with cosine (green, 'same' = its class; red = the other class named)",
                width,
            ),
            *rows,
        ]
    return np.vstack(blocks)


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def curves_figure(
    logs: dict[str, Path], out: Path, start: dict[str, float] | None = None, knn_title: str = "kNN monitor"
) -> list[str]:
    """Training curves per method as a PNG: the loss per epoch and, when any run logged it, the kNN monitor.

    Args:
        logs: method name -> its ``log.csv``.
        out: the PNG to write.
        start: values before the first epoch (e.g. ``{"knn_top1": ...}`` of the starting backbone), drawn at
            epoch 0 of every kNN curve.
        knn_title: title of the kNN panel (say which split the monitor queries).

    Returns:
        The titles of the panels drawn: a panel without data is left out, never drawn empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {name: _read_log(p) for name, p in logs.items() if p.exists()}
    knn = {
        name: [(int(r["epoch"]), float(r["knn_top1"])) for r in rs if r.get("knn_top1")] for name, rs in rows.items()
    }
    knn = {name: pts for name, pts in knn.items() if pts}
    titles = ["training loss"] + ([knn_title] if knn else [])
    fig, axes = plt.subplots(1, len(titles), figsize=(5 * len(titles), 3.6), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    loss_ax = axes[0][0]
    for j, (name, rs) in enumerate(rows.items()):
        ep = [int(r["epoch"]) for r in rs]
        marker = "os^v"[j % 4]  # methods on top of each other (the same backbone's InfoNCE) stay visible
        loss_ax.plot(ep, [float(r["loss_nce"]) for r in rs], marker=marker, fillstyle="none", label=f"{name} InfoNCE")
        if rs and rs[0].get("loss_fit"):
            label = f"{name} fitting term (KL, before its weight nu)"
            loss_ax.plot(ep, [float(r["loss_fit"]) for r in rs], marker="x", ls="--", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss (epoch mean)", title=titles[0])
    if knn:
        ax = axes[0][1]
        for name, pts in knn.items():
            if start and "knn_top1" in start:
                pts = [(0, start["knn_top1"]), *pts]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(xlabel="epoch (0 = the starting backbone)", ylabel="kNN top-1", title=titles[1])
    for ax in axes[0]:
        epochs = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
        if 0 < len(epochs) <= 12:  # epochs are whole numbers: a tick at each (one epoch: one tick, not 0.95..1.05)
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out, suffix=".tmp.png") as tmp:  # matplotlib picks the format by the extension
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return titles


def metrics_table(metrics: dict[str, dict]) -> str:
    """Plain-text table (percent) of the metrics of each method."""
    w = max(12, *(len(n) + 2 for n in metrics))
    lines = [f"{'method':<{w}}" + "".join(f"{SHORT.get(c, c):>12}" for c in COLUMNS)]
    for name, m in metrics.items():
        lines.append(f"{name:<{w}}" + "".join(f"{100 * m[c]:>11.1f}%" if c in m else f"{'-':>12}" for c in COLUMNS))
    return "\n".join(lines)


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` (BGR uint8) as a PNG at ``path``, atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())


def write_html(
    report_dir: Path,
    title: str,
    metrics: dict[str, dict],
    notes: list[str],
    pictures: list[tuple[str, str]],
    verdict: str = "",
) -> Path:
    """One self-contained page: the metrics table, ``verdict`` (one sentence) under it, the notes, the pictures.

    The images are embedded as data URIs, so the page opens anywhere.
    """

    def img_tag(name: str) -> str:
        data = base64.b64encode((report_dir / name).read_bytes()).decode()
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    head = "".join(f"<th>{c}</th>" for c in ["method", *COLUMNS])
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(n)}</td>"
        + "".join(f"<td>{100 * m[c]:.1f}%</td>" if c in m else "<td>-</td>" for c in COLUMNS)
        + "</tr>"
        for n, m in metrics.items()
    )
    sections = "".join(f"<h2>{html.escape(t)}</h2>{img_tag(f)}" for t, f in pictures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
img{{max-width:100%;border:1px solid #ddd}}</style></head><body>
<h1>{html.escape(title)}</h1>
<table><tr>{head}</tr>{body}</table>
{f'<p class="verdict"><b>{html.escape(verdict)}</b></p>' if verdict else ""}
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
{sections}
</body></html>"""
    path = report_dir / "index.html"
    atomic_write_text(path, page)
    return path


def save_metrics(path: Path, metrics: dict) -> None:
    """Write ``metrics`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(metrics, indent=2))
