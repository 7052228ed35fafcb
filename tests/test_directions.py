import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.directions import directional_perturbation, pack_signs, unpack_signs


class ToyModel(nn.Module):
    """Two linear heads on the flattened image: gradients are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3 * 8 * 8, 2)
        self.b = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return {"a": self.a(x.flatten(1)), "b": self.b(x.flatten(1))}


def total_loss(model, x, labels):
    out = model(x)
    return sum(F.cross_entropy(out[k], labels[k]) for k in labels)


def test_direction_is_a_sign_map_that_raises_the_attribute_losses():
    model = ToyModel()
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    labels = {"a": torch.tensor([0, 1, 0, 1]), "b": torch.tensor([0, 1, 2, 0])}
    eps_d = directional_perturbation(model, x, labels, n_neighbours=10, neighbourhood_radius=0.05,
                                     generator=torch.Generator().manual_seed(0))
    assert eps_d.shape == x.shape and set(eps_d.unique().tolist()) <= {-1.0, 0.0, 1.0}
    step = 4 / 255
    assert total_loss(model, x + step * eps_d, labels) > total_loss(model, x, labels)
    assert total_loss(model, x + step * eps_d, labels) > total_loss(model, x - step * eps_d, labels)


def test_direction_is_deterministic_under_a_seeded_generator():
    model, x = ToyModel(), torch.rand(2, 3, 8, 8)
    labels = {"a": torch.tensor([0, 1]), "b": torch.tensor([2, 0])}
    run = lambda s: directional_perturbation(model, x, labels, 5, 0.1, torch.Generator().manual_seed(s))
    assert torch.equal(run(1), run(1))


def test_pack_round_trip():
    signs = torch.sign(torch.randn(2, 3, 5, 7))
    data, shape = pack_signs(signs)
    assert len(data) == (2 * 3 * 5 * 7 + 7) // 8
    torch.testing.assert_close(unpack_signs(data, shape), signs)
