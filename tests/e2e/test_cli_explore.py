"""`ebt explore`: the page's embedded data against `ebt energy --json` and the thinking itself, refusals, and (with
Chromium installed) a headless browser that renders the tokens and runs the click handler."""
import html
import json
import re
import shutil
import subprocess

import pytest
import torch

from conftest import save_tiny_lms
from ebt.cli import main
from ebt.text.inference import think
from ebt.text.tokenizers import ByteTokenizer
from ebt.thinking import ThinkOptions

TEXT = "And God said, Let there be light"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return save_tiny_lms(tmp_path_factory.mktemp("explore"), context=40)


def page_data(path) -> dict:
    text = path.read_text()
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1))


def test_page_data_matches_ebt_energy_and_the_thinking(ckpts, tmp_path, capsys):
    ebt, tpp, model = ckpts
    flags = ["--steps", "2", "--samples", "3", "--seed", "5"]
    assert main(["energy", ebt, "--text", TEXT, "--json", *flags]) == 0
    energy = json.loads(capsys.readouterr().out)
    out = tmp_path / "page.html"
    assert main(["explore", ebt, "--text", TEXT, "--out", str(out), "--compare", tpp, *flags]) == 0
    data = page_data(out)
    positions = data["positions"]
    assert [p["token"] for p in positions] == energy["tokens"]
    assert [p["final"] for p in positions] == energy["final"]
    assert [p["steps"] for p in positions] == [list(col) for col in zip(*energy["steps"])]
    # the last step's top candidate is the thought-out prediction; every sample is listed, one chosen
    ids = ByteTokenizer().encode(TEXT)
    res = think(model.eval(), torch.tensor([ids[:-1]]), ThinkOptions(steps=2, samples=3),
                generator=torch.Generator().manual_seed(5))
    best = res.logits[0].argmax(-1)
    assert [p["top"][-1][0][0] for p in positions] == [ByteTokenizer().decode([int(i)]) or "\\0" for i in best]
    assert all(len(p["samples"]) == 3 and sum(s["chosen"] for s in p["samples"]) == 1 for p in positions)
    assert all(min(s["energy"] for s in p["samples"]) == pytest.approx(p["final"]) for p in positions)
    assert all(len(p["compare"]) == 5 for p in positions) and data["steps"] == 4
    assert main(["explore", ebt, "--text", TEXT, "--out", str(out)]) == 2          # never overwritten by default
    assert main(["explore", tpp, "--text", TEXT, "--out", str(tmp_path / "x.html")]) == 2   # needs an EBT
    hostile = '<!--<script></script><img onerror=x>&'
    assert main(["explore", ebt, "--text", hostile, "--out", str(tmp_path / "h.html")]) == 0
    page = (tmp_path / "h.html").read_text()
    assert "<img" not in page and "<!--" not in page and page_data(tmp_path / "h.html")["text"] == hostile


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_page_renders_and_reacts_to_a_click(ckpts, tmp_path, capsys):
    ebt, _, _ = ckpts
    out = tmp_path / "page.html"
    assert main(["explore", ebt, "--text", TEXT, "--out", str(out), "--samples", "2"]) == 0
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", f"file://{out}#click=6"], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count('<span data-i="') == len(TEXT) - 1                       # every predicted token is drawn
    assert re.findall(r'<span data-i="(\d+)"[^>]*class="sel"', dom) == ["6"]   # the clicked token, alone
    token = html.escape(page_data(out)["positions"][6]["token"].replace("\n", "\u21b5").replace(" ", "\u2423"), False)
    panel = dom.split('id="sel-token"', 1)[1]
    assert f"→ <b>{token}</b>" in panel and "Best-of-2" in panel and "<svg" in panel
    hostile = '<!--<script></script><img onerror=x>&'
    assert main(["explore", ebt, "--text", hostile, "--out", str(tmp_path / "h.html")]) == 0
    dom = subprocess.run([*flags, "--dump-dom", f"file://{tmp_path / 'h.html'}"], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count('<span data-i="') == len(hostile) - 1 and "<img" not in dom   # drawn as text, never as markup
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1100,700", f"--screenshot={shot}", f"file://{out}#click=6"],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
