import torch
import torch.nn.functional as F
from torch import nn

from invisible_face.method.directions import pack_signs, set_direction, unpack_signs
from invisible_face.models.ensemble import SurrogateEnsemble
from invisible_face.models.margins import plausible_classes, set_margin_loss


class ToyModel(nn.Module):
    """Two linear heads on the flattened image: gradients are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3 * 8 * 8, 2)
        self.b = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return {"a": self.a(x.flatten(1)), "b": self.b(x.flatten(1))}


def test_direction_is_a_sign_map_whose_step_lowers_the_set_margins_away_from_the_clean_call():
    model = ToyModel().train()
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    direction, classes = set_direction(model, x, cover=0.9, cap=5.0)
    assert direction.shape == x.shape and set(direction.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert model.training  # the model's mode is given back
    with torch.no_grad():
        logits = model(x)
    for k, v in logits.items():  # without classes: the plausible classes of the clean call
        assert torch.equal(classes[k], plausible_classes(v, 0.9))
    step = 4 / 255
    with torch.no_grad():
        clean = set_margin_loss(model(x), classes, 5.0)
        forward, backward = set_margin_loss(model(x + step * direction), classes, 5.0), \
            set_margin_loss(model(x - step * direction), classes, 5.0)
    assert (forward < clean).all() and (forward < backward).all()  # every face, not just on average


def test_given_classes_are_the_sets_it_steers_away_from():
    model, x = ToyModel(), torch.rand(3, 3, 8, 8)
    given = {"a": F.one_hot(torch.tensor([0, 1, 1]), 2).bool(), "b": F.one_hot(torch.tensor([2, 0, 1]), 3).bool()}
    direction, classes = set_direction(model, x, cover=0.9, cap=5.0, known=given)
    assert all(torch.equal(classes[k], given[k]) for k in given)
    flipped = {"a": ~given["a"], "b": given["b"]}  # the other gender: DP for "a" must turn around
    other, _ = set_direction(model, x, cover=0.9, cap=5.0, known=flipped)
    assert not torch.equal(direction, other)
    step = 4 / 255
    with torch.no_grad():
        assert (set_margin_loss(model(x + step * direction), given, 5.0) < set_margin_loss(model(x), given, 5.0)).all()


def test_pack_round_trip():
    signs = torch.sign(torch.randn(2, 3, 5, 7))
    data, shape = pack_signs(signs)
    assert len(data) == (2 * 3 * 5 * 7 + 7) // 8
    torch.testing.assert_close(unpack_signs(data, shape), signs)


def test_ensemble_direction_weighs_each_member_at_unit_norm_and_shrinks_to_g_work_size():
    # two members, one with logits 1000x larger: a plain sum would be the loud member's sign alone
    quiet, loud = ToyModel(), ToyModel()
    with torch.no_grad():
        loud.a.weight.mul_(1000), loud.b.weight.mul_(1000)
        torch.manual_seed(1)
        for layer in (loud.a, loud.b):  # a different direction than the quiet member's
            layer.weight.copy_(torch.randn_like(layer.weight) * 1000)
    ensemble = SurrogateEnsemble({"quiet": quiet, "loud": loud})
    x = torch.rand(2, 3, 8, 8)
    known = {"a": F.one_hot(torch.tensor([0, 1]), 2).bool(), "b": F.one_hot(torch.tensor([2, 0]), 3).bool()}
    direction, classes = set_direction(ensemble, x, cover=0.9, cap=5.0, known=known)
    assert set(classes) == {"a", "b", "loud/a", "loud/b"}  # the known labels for every member's head
    loud_only, _ = set_direction(loud, x, cover=0.9, cap=5.0, known=known)
    assert not torch.equal(direction, loud_only)
    small, _ = set_direction(ensemble, x, cover=0.9, cap=5.0, known=known, size=4)
    assert small.shape == (2, 3, 4, 4)
