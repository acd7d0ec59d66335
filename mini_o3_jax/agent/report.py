"""A trajectory as a page a person can read: every turn's text, every zoom box on its source, every crop.

    write_report(trajectories, "runs/infer/report.html", question="...")

Images are written as PNGs next to the page (boxes drawn on the model-input image of the source,
which shows the same region as the full-resolution one, since boxes are relative).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

from PIL import Image, ImageDraw

from mini_o3_jax.agent.trajectory import Trajectory

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
.turn{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.8em 0}
.crop{border-left:4px solid #2a7}.error{border-left:4px solid #d80}.final{border-left:4px solid #27d}
.over_turn,.over_length{border-left:4px solid #c33}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.6em;border-radius:4px}
img{max-width:480px;max-height:360px;margin-right:1em;border:1px solid #ccc}
.flags span{display:inline-block;margin-right:.6em;padding:.1em .5em;border-radius:3px;background:#eee}
"""


def _box_image(source: Image.Image, box: Sequence[float]) -> Image.Image:
    img = source.convert("RGB")
    w, h = img.size
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) * s for v, s in zip(box, (w, h, w, h)))
    draw = ImageDraw.Draw(img)
    draw.rectangle([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], outline=(255, 0, 0), width=max(2, w // 200))
    return img


def write_report(trajectories: Sequence[Trajectory], path: str, question: str = "") -> str:
    """Write `path` (HTML) and its PNGs into the same directory; returns the path."""
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Mini-o3 trajectory</title>"
             f"<style>{_CSS}</style></head><body><h1>Mini-o3 visual search</h1>"]
    if question:
        parts.append(f"<p><b>Question:</b> {html.escape(question)}</p>")

    def save(img: Image.Image, name: str) -> str:
        img.save(os.path.join(out_dir, name))
        return html.escape(name)

    for s, t in enumerate(trajectories):
        flags = {"answer": t.answer if t.answer is not None else "none", "turns": t.num_turns,
                 "over-turn": t.over_turn, "over-length": t.over_length, "void": t.void, "tokens": len(t)}
        parts.append(f"<h2>Sample {s}</h2><div class='flags'>"
                     + "".join(f"<span>{k}: {html.escape(str(v))}</span>" for k, v in flags.items()) + "</div>")
        parts.append(f"<p><img src='{save(t.images[0], f'{stem}_s{s}_original.png')}' alt='original'></p>")
        for i, turn in enumerate(t.turns):
            parts.append(f"<div class='turn {turn.outcome}'><b>Turn {i + 1}</b>: {turn.outcome}"
                         f"<pre>{html.escape(turn.text)}</pre>")
            if turn.error:
                parts.append(f"<p>Tool error: {html.escape(turn.error)}</p>")
            if turn.box is not None and turn.source_index is not None and turn.source_index < len(t.images):
                boxed = save(_box_image(t.images[turn.source_index], turn.box), f"{stem}_s{s}_t{i + 1}_box.png")
                parts.append(f"<p>{html.escape(turn.source or '')} {list(turn.box)} (pixels {turn.pixel_box})<br>"
                             f"<img src='{boxed}' alt='box on source'>")
                if turn.observation is not None and turn.observation < len(t.images):
                    crop = save(t.images[turn.observation], f"{stem}_s{s}_observation_{turn.observation}.png")
                    parts.append(f"<img src='{crop}' alt='observation {turn.observation}'>")
                parts.append("</p>")
            parts.append("</div>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
