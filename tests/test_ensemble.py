"""The defender's ensemble: every member's calls kept apart, a face protected only when every member
is fooled; keep_identity bounding an embedding's move (toy models)."""

import torch
from torch import nn

from invisible_face.method.directions import clean_sets
from invisible_face.method.refine import RefineSettings, refine_perturbation, shrink_perturbation
from invisible_face.models.ensemble import SurrogateEnsemble, first_member_calls, surrogate_from_state


class Heads(nn.Module):
    """Linear heads "a" (2 classes) and "b" (3) on a 4 x 4 thumbnail, seeded."""

    def __init__(self, seed: int, scale: float = 10.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.heads = nn.ModuleDict({"a": nn.Linear(48, 2), "b": nn.Linear(48, 3)})
        self.scale = scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) - 0.5

    def forward(self, x):
        z = self.embed(x)
        return {k: self.scale * h(z) for k, h in self.heads.items()}


def one_hot_calls(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: nn.functional.one_hot(v.argmax(1), v.shape[1]).bool() for k, v in logits.items()}


def grey(n: int = 4, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return 0.45 + 0.1 * torch.rand(n, 3, 24, 24)


def test_ensemble_keeps_each_members_calls_apart():
    first, second = Heads(0), Heads(1)
    ensemble = SurrogateEnsemble({"resnet": first, "face": second}).requires_grad_(False)
    x = grey()
    out = ensemble(x)
    assert sorted(out) == ["a", "b", "face/a", "face/b"]
    assert torch.equal(out["a"], first(x)["a"]) and torch.equal(out["face/b"], second(x)["b"])
    assert sorted(first_member_calls(out)) == ["a", "b"]
    assert ensemble.primary is first


def test_protected_only_when_every_member_is_fooled():
    """A perturbation that fools the first member but not the second is not protected by the ensemble."""
    first, second = Heads(0).requires_grad_(False), Heads(1).requires_grad_(False)
    ensemble = SurrogateEnsemble({"resnet": first, "face": second}).requires_grad_(False)
    x = grey()
    mask = torch.ones(len(x), 1, 24, 24)
    with torch.no_grad():
        first_sets = one_hot_calls(first(x))
    delta, fooled_first, _, _ = refine_perturbation(first, x, torch.zeros_like(x), mask, first_sets,
                                                    RefineSettings(0.1, steps=40, step_size=0.25, stop_margin=0.5))
    assert fooled_first.all()
    with torch.no_grad():
        sets = clean_sets(ensemble(x), cover=0.95)
    sets |= first_sets
    assert sorted(sets) == ["a", "b", "face/a", "face/b"]
    with torch.no_grad():
        second_fooled = torch.stack([(second(x + delta)[k].argmax(1) != second(x)[k].argmax(1)) for k in "ab"]).all(0)
    _, _, ok = shrink_perturbation(ensemble, x, delta, sets, [1.0], stop_margin=0.5)
    # the ensemble's check agrees with "every member fooled", and is stricter than the first member's
    assert (ok <= fooled_first).all() and (ok <= second_fooled).all()
    assert not ok.all()
    delta, fooled, logits, _ = refine_perturbation(ensemble, x, torch.zeros_like(x), mask, sets,
                                                   RefineSettings(0.1, steps=60, step_size=0.25, stop_margin=0.5))
    with torch.no_grad():
        after = ensemble(x + delta)
    for i in torch.nonzero(fooled)[:, 0]:
        for key, classes in sets.items():
            assert not classes[i, after[key][i].argmax()], key


def test_clean_sets_take_known_labels_for_every_member():
    ensemble = SurrogateEnsemble({"resnet": Heads(0), "face": Heads(1)}).requires_grad_(False)
    x = grey(2)
    known = {"a": torch.tensor([[True, False]] * 2), "b": torch.tensor([[False, False, True]] * 2)}
    with torch.no_grad():
        sets = clean_sets(ensemble(x), cover=0.95, known=known)
    assert torch.equal(sets["face/a"], known["a"]) and torch.equal(sets["face/b"], known["b"])


def test_keep_identity_bounds_the_embeddings_move():
    model = Heads(0, scale=3.0).requires_grad_(False)
    x = grey()
    mask = torch.ones(len(x), 1, 24, 24)
    with torch.no_grad():
        sets, clean = one_hot_calls(model(x)), model.embed(x)
    everyone = torch.arange(len(x))
    # (faces, their positions in the batch) -> distances from their own clean embeddings
    distance = lambda y, index: (model.embed(y) - clean[index]).norm(dim=1)
    args = dict(epsilon=0.2, steps=40, step_size=0.25, stop_margin=0.5, push_margin=3.0)
    free, free_fooled, _, _ = refine_perturbation(model, x, torch.zeros_like(x), mask, sets, RefineSettings(**args))
    bound = 0.5 * distance(x + free, everyone).min().item()  # the free push moves every face further than this
    kept, kept_fooled, _, _ = refine_perturbation(model, x, torch.zeros_like(x), mask, sets,
                                                  RefineSettings(**args, identity_bound=bound), identity=distance)
    assert free_fooled.any()
    with torch.no_grad():
        moved = distance(x + kept, everyone)
    # every face reported fooled kept its identity; the bound holds where the steps could keep it
    assert (moved[kept_fooled] < bound).all()
    assert moved.mean() < distance(x + free, everyone).mean()


def test_ensemble_round_trips_through_its_config_and_state():
    from invisible_face.models.networks import build_classifier

    members = {"resnet": build_classifier("resnet18", {"a": 2, "b": 3}, input_size=32).eval(),
               "vgg": build_classifier("vgg11_bn_small", {"a": 2, "b": 3}, input_size=32).eval()}
    ensemble = SurrogateEnsemble(members).eval()
    again = surrogate_from_state(ensemble.config(), ensemble.state_dict())
    x = grey(2, seed=3)
    with torch.no_grad():
        assert all(torch.allclose(ensemble(x)[k], again(x)[k], atol=1e-5) for k in ensemble(x))
