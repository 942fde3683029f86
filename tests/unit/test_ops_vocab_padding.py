"""The vocabulary side is padded to a multiple of 64 on CUDA only, and padding changes no result."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import ebt.ops.vocab as vocab
from ebt.config import ModelConfig, ThinkConfig
from ebt.text.models import TextEBT, TextTransformer


F64 = torch.float64


def force_padding(monkeypatch):
    """The CUDA choice on CPU."""
    cuda_width = vocab.padded_vocab
    monkeypatch.setattr(vocab, "padded_vocab", lambda v, device: cuda_width(v, torch.device("cuda")))


@pytest.fixture
def padded(monkeypatch):
    force_padding(monkeypatch)


def test_padding_is_on_for_cuda_only():
    assert vocab.padded_vocab(50277, torch.device("cuda")) == 50304
    assert vocab.padded_vocab(50304, torch.device("cuda")) == 50304
    assert vocab.padded_vocab(50277, torch.device("cpu")) == 50277


def test_padded_vocab_functions_are_exact(padded):
    torch.manual_seed(0)
    V, D = 7, 3
    p = torch.randn(2, 3, V, dtype=F64).softmax(-1)
    M = torch.randn(V, D, dtype=F64, requires_grad=True)
    dx = torch.randn(2, 3, D, dtype=F64, requires_grad=True)
    h = torch.randn(2, 3, D, dtype=F64, requires_grad=True)
    for alpha in (torch.tensor([0.7], dtype=F64), torch.rand(2, 3, 1, dtype=F64) + 0.5):
        alpha.requires_grad_(True)
        pg = p.clone().requires_grad_(True)
        assert gradcheck(vocab.candidate_update, (pg, dx, M, alpha))
        assert gradgradcheck(vocab.candidate_update, (pg, dx, M, alpha))
        torch.testing.assert_close(vocab.candidate_update(pg, dx, M, alpha), pg - alpha * (dx @ M.t()))
    assert gradcheck(lambda m: vocab.embed_probs(p, m), (M,))
    torch.testing.assert_close(vocab.embed_probs(p, M), p @ M)
    assert gradgradcheck(vocab.vocab_logits, (h, M))
    torch.testing.assert_close(vocab.vocab_logits(h, M), h @ M.t())


def _step(model, ids, z0=None):
    out = model(ids, z0=z0) if z0 is not None else model(ids)
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("kind", ["ebt", "transformer"])
def test_padded_training_step_equals_unpadded(kind, monkeypatch):
    torch.manual_seed(0)
    mc = ModelConfig(kind=kind, vocab_size=11, dim=16, layers=2, heads=2, context=6, conditioning="pred_embed")
    make = (lambda: TextEBT(mc, ThinkConfig(landscapes=2, alpha=3.0))) if kind == "ebt" else (lambda: TextTransformer(mc))
    plain, pad = make().double(), make().double()
    pad.load_state_dict(plain.state_dict())
    ids = torch.randint(1, 11, (2, 7))
    z0 = torch.randn(2, 6, 11, dtype=F64) if kind == "ebt" else None
    loss_a, grads_a = _step(plain, ids, z0)
    force_padding(monkeypatch)
    loss_b, grads_b = _step(pad, ids, z0)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=0)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
