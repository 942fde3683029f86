"""Pretrained folders and the Hugging Face Hub: save_pretrained -> load_model round trips with identical outputs, the
model card (the Hub's metadata header, a config that retrains), no trainer state in what is shared, "user/name"
from a cache laid out as the Hub's, and push / pull against a mocked Hub API (no network)."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_text_ebt
from ebt.cli import main
from ebt.config import RunConfig, from_dict
from ebt.errors import UserError
from ebt.text.task import load_model, load_tokenizer_of
from ebt.text.tokenizers import load_tokenizer
from ebt.training import hub, pretrained


def card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def card_config(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("```yaml\n")[1].split("```")[0])


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = tiny_text_ebt("time_embed", dtype=torch.float32, vocab=256, ctx=6).eval()
    cfg = RunConfig(model=model.cfg, think=model.think_cfg)
    folder = model.save_pretrained(tmp_path / "tiny", cfg, metrics={"ppl": 7.5})
    loaded, cfg2 = load_model(folder)
    assert cfg2 == cfg
    x = torch.randint(1, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    a = model.predict(x, generator=torch.Generator().manual_seed(1)).logits
    b = loaded.predict(x, generator=torch.Generator().manual_seed(1)).logits
    assert torch.equal(a, b)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    header = card_header(folder)
    assert header["library_name"] == "ebt" and header["license"] == "mit" and "energy-based-transformer" in header["tags"]
    assert from_dict(RunConfig, card_config(folder)) == cfg                 # the card's config retrains the model
    assert "| ppl | 7.5 |" in (folder / "README.md").read_text()


def test_export_carries_the_tokenizer_and_metrics_not_trainer_state(tmp_path, tiny_cfg):
    from ebt.tasks import fit

    tiny_cfg.data.tokenizer = "embedded-bpe-300"
    tiny_cfg.model.vocab_size = 0
    fit(tiny_cfg)
    run = Path(tiny_cfg.train.out_dir)
    assert (run / "checkpoint" / "trainer.json").is_file()
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert load_tokenizer_of(out).fingerprint == load_tokenizer("embedded-bpe-300").fingerprint
    text = (out / "README.md").read_text()
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in val if r["split"] == "val"][-1]
    assert f"| ppl | {last['ppl']:.4g} |" in text and "tokenizer.json (in this folder)" in text
    assert main(["export", str(run), str(out)]) == 2                            # never overwrites by default


def fake_cache(root: Path, repo: str, folder: Path, revision: str = "a" * 40) -> None:
    """The Hub cache layout: models--user--name/{refs/main, snapshots/<commit>/files}."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(revision)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def test_user_name_loads_from_the_cache_only(tmp_path, hub_cache, monkeypatch):
    model = tiny_text_ebt("time_embed", dtype=torch.float32, vocab=256, ctx=6)
    folder = model.save_pretrained(tmp_path / "m", RunConfig(model=model.cfg, think=model.think_cfg))
    fake_cache(hub_cache, "someone/tiny-ebt", folder)
    monkeypatch.chdir(tmp_path)
    loaded, _ = load_model("someone/tiny-ebt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(UserError, match="does not exist as a folder here nor .* `ebt pull someone/other`"):
        load_model("someone/other")


class FakeApi:
    """The two HfApi calls push makes, recorded; uploads land in a folder."""
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False):
        FakeApi.calls.append(("create", repo_id, private))

    def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
        names = sorted(p.name for p in Path(folder_path).iterdir())
        FakeApi.calls.append(("upload", repo_id, [n for n in names if n in allow_patterns], (Path(folder_path) /
                                                                                         "README.md").read_text()))
        return type("Info", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


def test_push_and_pull_with_a_mocked_hub(tmp_path, hub_cache, monkeypatch, capsys):
    import huggingface_hub

    model = tiny_text_ebt("time_embed", dtype=torch.float32, vocab=256, ctx=6)
    cfg = RunConfig(model=model.cfg, think=model.think_cfg)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    assert model.push_to_hub("me/tiny", cfg, private=True).endswith("/commit/1")
    (create, upload) = FakeApi.calls
    assert create == ("create", "me/tiny", True)
    assert upload[2] == ["README.md", "config.json", "model.safetensors"] and "# me/tiny" in upload[3]
    with pytest.raises(UserError, match="not a Hub model name"):
        model.push_to_hub("not a name", cfg)

    def fake_download(repo_id, revision=None, token=None, allow_patterns=None, local_files_only=False):
        if repo_id == "me/offline":
            raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")
        folder = tmp_path / "downloaded"
        if not folder.exists():
            model.save_pretrained(folder, cfg)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert main(["pull", "me/tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["folder"] == str(tmp_path / "downloaded")
    assert main(["pull", "me/offline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download 'me/offline'" in err[0] and "offline?" in err[0]


def test_repo_names():
    assert hub.looks_like_repo("user/name") and hub.looks_like_repo("EleutherAI/gpt-neox-20b")
    assert not hub.looks_like_repo("runs/x/checkpoint") and not hub.looks_like_repo("/abs/path")
    with pytest.raises(UserError, match="not a Hub model name"):
        pretrained.push_pretrained("runs/none", "no-slash")


def test_save_pretrained_keeps_other_files_and_needs_a_bpe_tokenizer(tmp_path, monkeypatch):
    model = tiny_text_ebt("time_embed", dtype=torch.float32, vocab=256, ctx=6)
    cfg = RunConfig(model=model.cfg, think=model.think_cfg)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "tokenizer.json").write_text("{}")                  # an earlier export's: stale for a byte model
    with pytest.raises(UserError, match="already exists"):
        model.save_pretrained(folder, cfg)
    model.save_pretrained(folder, cfg, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me" and not (folder / "tokenizer.json").exists()
    assert load_model(folder)[1] == cfg
    bpe = tiny_text_ebt("time_embed", dtype=torch.float32, vocab=300, ctx=6)
    with pytest.raises(UserError, match="pass its tokenizer"):
        bpe.save_pretrained(tmp_path / "bpe", RunConfig(model=bpe.cfg, think=bpe.think_cfg))
    monkeypatch.chdir(tmp_path)
    assert not hub.looks_like_repo("mine/no-such-run") and hub.looks_like_repo("someone/no-such-run")   # mistyped
    with pytest.raises(UserError, match="checkpoint 'mine/no-such-run' does not exist"):              # paths stay paths
        load_model("mine/no-such-run")
