"""The thinking explorer (`ebt explore`): one self-contained HTML page (no CDN, no server; it opens from disk) that
shows what only an EBT can show. The text is coloured by each prediction's final energy; selecting a token shows
the model's top candidates after every thinking step, the energy curve over the steps, the best-of-N candidates
with their energies, and a Transformer++'s prediction when one is given.

The energies are `ebt energy --json`'s for the same text, options and seed (the same `think` call; tested).
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Optional

import torch

from ebt.text.energies import scored_ids
from ebt.text.inference import think
from ebt.text.tokenizers import Tokenizer
from ebt.thinking import ThinkOptions

TOP = 5


def _top(probs: torch.Tensor, tokenizer: Tokenizer, k: int = TOP) -> list[list]:
    """[[token text, probability], ...] of the k most likely ids of probs (V,)."""
    p, ids = probs.topk(k)
    return [[tokenizer.decode([int(i)]) or "\\0", round(float(q), 4)] for q, i in zip(p, ids)]


@torch.no_grad()
def explore_data(model, text: str, tokenizer: Tokenizer, options: Optional[ThinkOptions] = None, seed: int = 0,
                 compare=None) -> dict:
    """Everything the page shows, as JSON-ready data: per predicted token, its energies per step and final, the top
    candidates per step, every best-of-N sample (top token, final energy, chosen or not), and `compare`'s (a
    Transformer++) top candidates."""
    ids = scored_ids(model, text, tokenizer)
    x = torch.tensor([ids[:-1]])
    res = think(model, x, options, generator=torch.Generator().manual_seed(seed), trace=True)
    tr = res.trace
    steps = tr["logits"].shape[0]
    other = compare.predict(x).logits[0].float().softmax(-1) if compare is not None else None   # (L, V)
    positions = []
    for i, target in enumerate(ids[1:]):
        pick = int(tr["pick"][0, i])
        samples = [{"token": _top(tr["logits"][-1, 0, j, i].float().softmax(-1), tokenizer, 1)[0][0],
                    "energy": float(tr["final_energy"][0, j, i]), "chosen": j == pick}
                   for j in range(tr["logits"].shape[2])]
        positions.append({
            "token": tokenizer.decode([target]) or "\\0",
            "context": tokenizer.decode(ids[max(0, i - 15):i + 1]),
            "final": float(res.final_energy[0, i]),
            "steps": [float(e) for e in res.energies[:, 0, i]],
            "top": [_top(tr["logits"][k, 0, pick, i].float().softmax(-1), tokenizer) for k in range(steps)],
            "target_rank": int((tr["logits"][-1, 0, pick, i] > tr["logits"][-1, 0, pick, i, target]).sum()) + 1,
            "samples": samples,
            "compare": _top(other[i], tokenizer) if other is not None else None,
        })
    return {"text": text, "first": tokenizer.decode(ids[:1]), "nfe": res.nfe, "steps": steps,
            "samples": tr["logits"].shape[2], "positions": positions, "options": dict(vars(options or ThinkOptions()))}


def write_page(data: dict, path: Path, title: str = "EBT thinking explorer") -> None:
    """The self-contained page: the data inlined as JSON, plain CSS and JavaScript."""
    # no markup can start inside the script element: <, > and & as JSON escapes (JSON.parse reads them back)
    payload = (json.dumps(data, allow_nan=False).replace("&", "\\u0026").replace("<", "\\u003c")
               .replace(">", "\\u003e"))
    fill = {"__TITLE__": html.escape(title), "__DATA__": payload}
    path.write_text(re.sub("__TITLE__|__DATA__", lambda m: fill[m.group()], PAGE), encoding="utf-8")   # one pass


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 14px/1.5 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
#text { font: 18px/2 ui-monospace, monospace; padding: 12px; border: 1px solid #ddd; white-space: pre-wrap; }
#text span { cursor: pointer; padding: 2px 0; border-radius: 3px; }
#text span.sel { outline: 2px solid #000; }
#panel { display: flex; gap: 24px; flex-wrap: wrap; margin-top: 16px; }
.box { border: 1px solid #ddd; padding: 10px 14px; min-width: 220px; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; font-family: ui-monospace, monospace; }
th { font-family: system-ui, sans-serif; color: #555; } .chosen { font-weight: bold; } .hint { color: #666; }
</style></head><body>
<h2>__TITLE__</h2>
<p class="hint" id="summary"></p>
<div id="text"></div>
<p class="hint">Colour: final energy of each prediction (green = low energy, confident; red = high, uncertain).
Click a token to see how the model thought about it.</p>
<div id="panel"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const P = data.positions, finals = P.map(p => p.final);
const lo = Math.min(...finals), hi = Math.max(...finals);
function colour(e) {
  const t = hi > lo ? (e - lo) / (hi - lo) : 0;
  return `hsl(${Math.round(120 * (1 - t))}, 75%, 75%)`;
}
function esc(s) { return s.replace(/[&<>]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;"}[c])); }
function show(s) { return esc(s.replace(/\\n/g, "\\u21b5").replace(/ /g, "\\u2423")); }
document.getElementById("summary").textContent =
  `${P.length} predictions, ${data.steps} thinking steps, ${data.samples} sample(s) per position, ` +
  `${data.nfe} energy forward passes per token.`;
const textDiv = document.getElementById("text");
textDiv.appendChild(document.createTextNode(data.first));   // the first token is context only: never predicted
P.forEach((p, i) => {
  const span = document.createElement("span");
  span.textContent = p.token; span.style.background = colour(p.final); span.dataset.i = i;
  span.title = `energy ${p.final.toFixed(3)}`;
  span.onclick = () => select(i);
  textDiv.appendChild(span);
});
function curve(values) {
  const w = 260, h = 120, pad = 24, n = values.length;
  const a = Math.min(...values), b = Math.max(...values), r = b > a ? b - a : 1;
  const pts = values.map((v, k) => [pad + (n > 1 ? k * (w - 2 * pad) / (n - 1) : 0), h - pad - (v - a) / r * (h - 2 * pad)]);
  const dots = pts.map(([x, y]) => `<circle cx="${x}" cy="${y}" r="3"/>`).join("");
  return `<svg width="${w}" height="${h}"><polyline fill="none" stroke="#36c" stroke-width="2" points="${pts.map(p => p.join(",")).join(" ")}"/>` +
    `<g fill="#36c">${dots}</g><text x="${w - pad}" y="${h - 4}" font-size="11" text-anchor="end">start ... final</text>` +
    `<text x="${pad}" y="12" font-size="11">${b.toFixed(2)}</text><text x="${pad}" y="${h - pad + 12}" font-size="11">${a.toFixed(2)}</text></svg>`;
}
function table(head, rows) {
  return `<table><tr>${head.map(h => `<th>${h}</th>`).join("")}</tr>` +
    rows.map(r => `<tr${r.cls ? ` class="${r.cls}"` : ""}>${r.cells.map(c => `<td>${c}</td>`).join("")}</tr>`).join("") + "</table>";
}
function select(i) {
  document.querySelectorAll("#text span").forEach(s => s.classList.toggle("sel", +s.dataset.i === i));
  const p = P[i];
  const steps = p.top.map((top, k) => ({cells: [`after step ${k + 1}`, ...top.map(([t, q]) => `${show(t)} ${q.toFixed(2)}`)]}));
  let out = `<div class="box" id="sel-token"><b>…${show(p.context)}</b> → <b>${show(p.token)}</b>` +
    `<br>final energy ${p.final.toFixed(3)}; the actual token ranks ${p.target_rank}</div>`;
  out += `<div class="box"><b>Energy over the thinking steps</b><br>${curve([...p.steps, p.final])}</div>`;
  out += `<div class="box"><b>Top candidates after each step</b>${table(["", "1", "2", "3", "4", "5"], steps)}</div>`;
  if (p.samples.length > 1)
    out += `<div class="box"><b>Best-of-${p.samples.length}</b>` + table(["sample", "top token", "final energy"],
      p.samples.map((s, j) => ({cls: s.chosen ? "chosen" : "", cells: [j + (s.chosen ? " (chosen)" : ""), show(s.token), s.energy.toFixed(3)]}))) + "</div>";
  if (p.compare)
    out += `<div class="box"><b>Transformer++</b>` + table(["token", "prob"], p.compare.map(([t, q]) => ({cells: [show(t), q.toFixed(3)]}))) + "</div>";
  document.getElementById("panel").innerHTML = out;
}
select(0);
// #click=N clicks token N once the page has loaded (a link to one token; the browser test uses it too)
const clickAt = location.hash.match(/click=(\\d+)/);
const target = clickAt ? document.querySelector(`#text span[data-i="${clickAt[1]}"]`) : null;
if (target) target.dispatchEvent(new MouseEvent("click", {bubbles: true}));
</script></body></html>
"""
