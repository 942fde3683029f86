"""Parity with checkpoints and outputs written by the reference implementation (tests/fixtures/reference, or the folder in EBT_PARITY_FIXTURES).

Every `*.json` fixture in EBT_PARITY_FIXTURES is one test case; fixtures with settings we do not implement are
skipped with the reason.
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from ebt.text.convert import UnsupportedReference, load_reference

from conftest import FIXTURES

CASES = sorted(p.stem for p in FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
RTOL = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


@pytest.mark.skipif(not CASES, reason=f"no parity fixtures in {FIXTURES}")
@pytest.mark.parametrize("name", CASES)
def test_reference_parity(name):
    settings = json.loads((FIXTURES / f"{name}.json").read_text())
    try:
        model, cfg = load_reference(FIXTURES / f"{name}.ckpt")
        if hasattr(model, "think_cfg"):   # compare every thinking step's logits, not only the final ones
            model.think_cfg = dataclasses.replace(model.think_cfg, keep_logits=True)
    except UnsupportedReference as exc:
        pytest.skip(f"{name}: {exc}")
    expected = load_file(str(FIXTURES / f"{name}.expected.safetensors"))
    ids = expected["input_ids"]
    if cfg.model.kind == "ebt":
        # the fixtures' loss: no randomisation (the evaluation schedule for S2), with gradients
        out = model(ids, z0=expected["z0"], training=True, randomize=False)
        steps = len([k for k in expected if k.startswith("logits.")])
        assert len(out.thought.candidates) == steps
        for k in range(steps):
            assert rel_err(out.thought.candidates[k], expected[f"logits.{k}"]) < RTOL, f"logits.{k}"
            assert rel_err(out.thought.energies[k], expected[f"energies.{k}"]) < RTOL, f"energies.{k}"
        prefix = "energy."
    else:
        out = model(ids)
        assert rel_err(model.net(ids[:, :-1]), expected["logits"]) < RTOL
        prefix = "net."
    assert rel_err(out.loss.reshape(1), expected["loss"]) < RTOL
    out.loss.backward()
    params = dict(model.named_parameters())
    grads = [k for k in expected if k.startswith("grad.")]
    assert grads, "fixture has no gradients"
    for key in grads:
        ref_name = key[len("grad."):]
        ours = params["thinker.alpha" if ref_name == "alpha" else prefix + ref_name]
        assert ours.grad is not None, f"{ref_name} got no gradient"
        assert rel_err(ours.grad.reshape(expected[key].shape), expected[key]) < RTOL, key
    assert settings["model"] in ("ebt", "baseline_transformer")
