"""Class sets and set margins (invisible_face.models.margins): what "fooled" means, label-free."""

import torch

from invisible_face.models.margins import attribute_margins, plausible_classes, protected, set_margin, set_margin_loss


def test_plausible_classes_cover_the_probability_and_never_all():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 0.9], [0.0, 0.0, 0.0]])
    sets = plausible_classes(logits, cover=0.8)
    assert sets[0].tolist() == [True, False, False]      # confident: the call alone
    assert sets[1].sum() == 2 and sets[1, :2].all()      # unsure: the likeliest classes
    assert not sets.all(1).any()                         # one class always stays outside


def test_set_margin_is_negative_once_the_call_leaves_the_set():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    classes = torch.tensor([[True, False, False]] * 2)
    assert set_margin(logits, classes).tolist() == [1.0, -3.0]


def test_attribute_margins_stack_one_column_per_attribute_in_the_sets_order():
    logits = {"a": torch.tensor([[2.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])}
    classes = {"b": torch.tensor([[True, False, False]] * 2), "a": torch.tensor([[True, False]] * 2)}
    assert attribute_margins(logits, classes).tolist() == [[-5.0, 2.0], [3.0, -1.0]]


def test_protected_needs_every_attribute_strictly_past_the_margin():
    margins = torch.tensor([[-2.0, -3.0], [-2.0, 0.5], [-1.0, -4.0], [-1.5, -1.01]])
    assert protected(margins, 1.0).tolist() == [True, False, False, True]  # -1.0 is not past a margin of 1
    assert protected(margins, 0.0).tolist() == [True, False, True, True]
    assert protected(margins, 5.0).tolist() == [False] * 4
    assert protected(margins, 1.0).dtype == torch.bool and protected(torch.zeros(0, 2), 1.0).shape == (0,)


def test_set_margin_loss_floors_each_attribute_at_minus_cap_and_sums():
    logits = {"a": torch.tensor([[0.0, 9.0], [2.0, 0.0]]), "b": torch.tensor([[0.0, 1.0], [0.0, 1.0]])}
    classes = {k: torch.tensor([[True, False]] * 2) for k in logits}
    assert set_margin_loss(logits, classes, 2.0).tolist() == [-2.0 - 1.0, 2.0 - 1.0]  # a's -9 stops at -2
    per_face = set_margin_loss(logits, classes, torch.tensor([10.0, 0.5]))  # a cap per face
    assert per_face.tolist() == [-9.0 - 1.0, 2.0 - 0.5]

