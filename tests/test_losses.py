import pytest
import torch

from invisible_face.method.losses import (
    adversarial_loss,
    attribute_margin,
    contextual_loss,
    discriminator_loss,
    generator_gan_loss,
    mmd,
    perturbation_loss,
    total_variation,
)
from invisible_face.models.perceptual import perceptual_distance


def test_margin_sign_says_whether_the_prediction_is_right():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(attribute_margin(logits, labels), torch.tensor([2.0, -3.0]))


def test_adversarial_loss_caps_each_attribute_at_minus_kappa():
    labels = {"a": torch.tensor([0]), "b": torch.tensor([0])}
    fooled = {"a": torch.tensor([[0.0, 10.0]]), "b": torch.tensor([[0.0, 10.0]])}
    assert adversarial_loss(fooled, labels, kappa=2.0).item() == pytest.approx(-2.0)
    # one attribute fooled far beyond kappa cannot hide the other one being right
    mixed = {"a": torch.tensor([[0.0, 100.0]]), "b": torch.tensor([[5.0, 0.0]])}
    assert adversarial_loss(mixed, labels, kappa=2.0).item() == pytest.approx((-2.0 + 5.0) / 2)
    logits = {"a": torch.tensor([[1.0, 0.0]], requires_grad=True), "b": torch.tensor([[0.0, 10.0]], requires_grad=True)}
    adversarial_loss(logits, labels, kappa=2.0).backward()
    assert logits["a"].grad.abs().sum() > 0 and logits["b"].grad.abs().sum() == 0


def test_perturbation_loss_is_the_mean_l2_norm():
    p = torch.zeros(2, 3, 4, 4)
    p[0, 0, 0, 0], p[1] = 3.0, 0.0
    assert perturbation_loss(p).item() == pytest.approx(1.5)


def test_tv_of_a_constant_image_is_zero_and_grows_with_edges():
    assert total_variation(torch.full((1, 3, 8, 8), 0.7)).item() == pytest.approx(0.0, abs=1e-3)
    stripes = torch.zeros(1, 1, 8, 8)
    stripes[..., ::2] = 1.0
    assert total_variation(stripes) > total_variation(stripes * 0.5) > 0.1


def test_mmd_of_identical_batches_is_zero_and_positive_otherwise():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    assert mmd(x, x.clone()).abs().item() < 1e-6
    assert mmd(x, x + 0.5).item() > mmd(x, x + 0.05).item() > 0


def test_contextual_loss_zero_for_same_features_and_larger_when_shuffled():
    torch.manual_seed(0)
    f = torch.randn(2, 16, 6, 6)
    same = contextual_loss(f, f.clone()).item()
    other = contextual_loss(f, torch.randn(2, 16, 6, 6)).item()
    assert same < 0.05 and other > same + 0.1


def test_perceptual_distance_zero_for_same_features():
    f = [torch.randn(2, 8, 5, 5), torch.randn(2, 16, 3, 3)]
    assert perceptual_distance(f, [t.clone() for t in f]).abs().max().item() < 1e-6
    assert (perceptual_distance(f, [t + torch.randn_like(t) for t in f]) > 0).all()


def test_gan_losses_prefer_the_right_calls():
    good_d = discriminator_loss(torch.tensor([5.0]), torch.tensor([-5.0]))
    bad_d = discriminator_loss(torch.tensor([-5.0]), torch.tensor([5.0]))
    assert good_d < bad_d
    assert generator_gan_loss(torch.tensor([5.0])) < generator_gan_loss(torch.tensor([-5.0]))
