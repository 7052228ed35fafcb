import pytest
import torch
from torch import nn

from invisible_face.evaluate.attacks import baseline_attack
from invisible_face.method.losses import adversarial_loss


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 2), "b": nn.Linear(8, 3)})

    def forward(self, x):
        z = torch.relu(self.conv(x)).mean((2, 3))
        return {k: h(z) for k, h in self.heads.items()}


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm", "tifgsm", "ditifgsm", "vmifgsm"])
def test_baseline_raises_the_attacked_loss_within_budget(name):
    model = Tiny().eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        labels = {k: v.argmax(1) for k, v in model(x).items()}  # attack the model's own calls
    eps = 8 / 255
    mask = torch.zeros(4, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    for m in (None, mask):
        x_adv = baseline_attack(name, model, x, labels, eps, steps=5, mask=m)
        assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        if m is not None:
            assert (x_adv - x)[..., :4, :].abs().max() == 0
        with torch.no_grad():
            # the loss the attacks descend is the capped margin: lower is more fooled
            assert adversarial_loss(model(x_adv), labels, 5.0) < adversarial_loss(model(x), labels, 5.0)


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_attack("deepfool", Tiny(), torch.rand(1, 3, 8, 8), {"a": torch.tensor([0])}, 0.03)
