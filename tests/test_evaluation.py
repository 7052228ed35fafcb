import torch

from invisible_face.evaluation import DnCNN, purify, train_purifier


def test_purifier_learns_to_undo_a_perturbation():
    torch.manual_seed(0)
    clean = torch.rand(16, 3, 32, 32) * 0.8 + 0.1
    protected = clean + torch.tensor([0.05, -0.05, 0.05]).view(1, 3, 1, 1)  # a colour cast to learn away
    cfg = {"depth": 3, "width": 16, "epochs": 60, "crop": 32, "batch_size": 8, "lr": 0.005}
    purifier = train_purifier(protected, clean, cfg, seed=0)
    before = (protected - clean).abs().mean()
    after = (purify(purifier, protected) - clean).abs().mean()
    assert after < 0.5 * before


def test_dncnn_keeps_shape_and_range():
    out = DnCNN(depth=4, width=8).eval()(torch.rand(2, 3, 20, 28))
    assert out.shape == (2, 3, 20, 28) and out.min() >= 0 and out.max() <= 1
