"""Line charts drawn with PIL (no plotting library needed): the run's loss curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def line_chart(series: dict[str, list[tuple[float, float]]], path, title: str, xlabel: str, ylabel: str,
               log_y: bool = False, size: tuple[int, int] = (900, 520)) -> None:
    """Draw named series of (x, y) points into a PNG at `path`."""
    w, h = size
    left, right, top, bottom = 80, 20, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(14)
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and (y > 0 or not log_y)]
    if not pts:
        raise ValueError(f"{title}: nothing to draw")
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(fy(p[1]) for p in pts), max(fy(p[1]) for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
    py = lambda y: top + (1 - (fy(y) - y0) / (y1 - y0)) * (h - top - bottom)
    d.rectangle((left, top, w - right, h - bottom), outline="black")
    for t in _ticks(x0, x1):
        d.line((px(t), h - bottom, px(t), h - bottom + 5), fill="black")
        d.text((px(t), h - bottom + 8), f"{t:g}", fill="black", font=font, anchor="mt")
    yt = _ticks(y0, y1)
    for t in yt:
        y = top + (1 - (t - y0) / (y1 - y0)) * (h - top - bottom)
        d.line((left - 5, y, w - right, y), fill=(225, 225, 225))
        d.text((left - 8, y), f"{10 ** t:.3g}" if log_y else f"{t:g}", fill="black", font=font, anchor="rm")
    d.text((w / 2, 12), title, fill="black", font=font, anchor="mt")
    d.text((w / 2, h - 20), xlabel, fill="black", font=font, anchor="mt")
    d.text((12, top - 22), ylabel, fill="black", font=font)
    for k, (name, s) in enumerate(series.items()):
        c = COLOURS[k % len(COLOURS)]
        s = [(x, y) for x, y in s if y is not None and (y > 0 or not log_y)]
        if len(s) > 1:
            d.line([(px(x), py(y)) for x, y in s], fill=c, width=2)
        for x, y in s if len(s) < 40 else []:
            d.ellipse((px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3), fill=c)
        d.text((w - right - 10, top + 10 + 18 * k), name, fill=c, font=font, anchor="rt")
    img.save(path)


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc = (acc + [v])[-window:]
        out.append(sum(acc) / len(acc))
    return out


def loss_curves(log_path, out_dir) -> list[Path]:
    """loss.png (training loss by item kind, smoothed, and held-out loss) and balance.png (expert
    load imbalance) from a training log (JSON lines). Returns the files written."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    out_dir = Path(out_dir)
    win = max(1, len(rows) // 50)
    steps = [r["step"] for r in rows]
    series = {f"train loss (mean of {win})": list(zip(steps, smooth([r["loss"] for r in rows], win)))}
    qa = [(r["step"], r["qa_loss"]) for r in rows if r.get("qa_tokens")]
    if qa:
        series["questions"] = list(zip([s for s, _ in qa], smooth([v for _, v in qa], win)))
    tl = [(r["step"], r["timeline_loss"]) for r in rows if r.get("timeline_tokens")]
    if tl:
        series["timeline item"] = list(zip([s for s, _ in tl], smooth([v for _, v in tl], max(1, win // 2))))
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        series["held-out questions"] = val
    swapped = [(r["step"], r["val_loss_swapped_media"]) for r in rows if "val_loss_swapped_media" in r]
    if swapped:
        series["held-out, another clip's media"] = swapped
    cap = [(r["step"], r["caption_loss"]) for r in rows if r.get("caption_tokens")]
    if cap:
        series["captions"] = list(zip([s for s, _ in cap], smooth([v for _, v in cap], win)))
    for key, name in (("val_caption_loss", "held-out captions"),
                      ("val_caption_loss_swapped_media", "held-out captions, another clip's media")):
        got = [(r["step"], r[key]) for r in rows if key in r]
        if got:
            series[name] = got
    files = [out_dir / "loss.png", out_dir / "expert_balance.png"]
    line_chart(series, files[0], "cross-entropy of the target tokens", "step", "loss (nats/token)", log_y=True)
    line_chart({f"max / mean expert load (mean of {win})": list(zip(steps, smooth([r["expert_imbalance"] for r in rows], win)))},
               files[1], "MoE load balance (1 = perfectly even)", "step", "imbalance")
    return files
