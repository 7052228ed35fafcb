"""Class sets and set margins: what "fooled" means for a dict of logits, label-free.

A face's calls to steer away from are the plausible classes of the clean call (a set per
attribute); a call is fooled once its best class lies outside that set, by a margin in logits.
The surrogate ensemble (:mod:`invisible_face.models.ensemble`) gives each member its sets here; DP
(:mod:`invisible_face.method.directions`), G's training and the refinement
(:mod:`invisible_face.method.refine`) all minimise and check the same capped margin. It lives with
the models so that both floors read one definition and ``models`` needs nothing from ``method``.

Shapes: logits B x C (or {attribute: B x C}); class sets B x C bool (or {attribute: B x C bool}).
"""

from __future__ import annotations

import torch


def plausible_classes(logits: torch.Tensor, cover: float) -> torch.Tensor:
    """The most likely classes whose probabilities sum to ``cover`` (at least one, never all).

    Without the true label, these are the calls to steer away from: a face the model calls
    male with p = 0.55 must not end up called female if it is female. B x C -> B x C bool.
    """
    probs, order = logits.softmax(1).sort(1, descending=True)
    keep = (probs.cumsum(1) - probs) < cover            # classes needed to reach the cover
    keep[:, 0], keep[:, -1] = True, False
    return torch.zeros_like(keep).scatter(1, order, keep)


def set_margin(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Best logit inside the class set minus the best outside: B x C, B x C bool -> B
    (negative = the model now calls a class outside the set)."""
    inside = logits.masked_fill(~classes, float("-inf")).max(1).values
    return inside - logits.masked_fill(classes, float("-inf")).max(1).values


def attribute_margins(logits: dict[str, torch.Tensor], classes: dict[str, torch.Tensor]) -> torch.Tensor:
    """Set margin of every attribute: {attribute: B x C logits}, {attribute: B x C bool} -> B x A
    (negative = fooled)."""
    return torch.stack([set_margin(logits[k], classes[k]) for k in classes], 1)


def protected(margins: torch.Tensor, margin: float) -> torch.Tensor:
    """The one definition of a protected face: every head called outside its set by more than
    ``margin`` logits (the refinement's stop and push, G's validation and the directions stage's
    share all ask this). margins: B x A (:func:`attribute_margins`) -> B bool."""
    return (margins < -margin).all(1)


def set_margin_loss(logits: dict[str, torch.Tensor], classes: dict[str, torch.Tensor],
                    cap: float | torch.Tensor) -> torch.Tensor:
    """The label-free adversarial objective, to minimise: each attribute's set margin, floored at
    ``-cap`` so an attribute already called outside its set by ``cap`` logits stops pulling and the
    others get the gradient, summed over attributes. {attribute: B x C}, {attribute: B x C bool},
    cap (one value or B) -> B.

    One function for G's training, the direction G is given, and the refinement's steps."""
    cap = torch.as_tensor(cap, dtype=torch.float32).reshape(-1, 1)
    return torch.maximum(attribute_margins(logits, classes), -cap).sum(1)
