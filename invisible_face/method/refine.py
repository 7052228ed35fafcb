"""The refinement: the protector's fallback for faces G leaves unprotected (docs/design.md,
"The generator").

Starting from G's perturbation, a few normalised-gradient steps on the surrogate inside the face
mask, stopping per face as soon as every attribute is called outside its set by a margin (or by a
larger push margin, which other models follow more often); a face the mask cannot protect gets the
whole crop. Early stopping keeps PSNR high; a last forward pass
then scales the perturbation down as far as the margin allows, since the final step overshoots.
The sets, the margins and the capped objective (:mod:`invisible_face.models.margins`) are also what
G trains on and is checked by.

With a ``survive`` round trip (a real JPEG at the quality a face must survive,
:func:`invisible_face.method.recompression.survives`) a face counts as protected only when it is protected
both as written and after that round trip; the steps of a face fooled as written then also follow
the gradient through a differentiable JPEG (``through``). Steps are shaped for the eye and the codec
(:func:`shape_step`): less chroma than luminance, smooth rather than per-pixel; the perceptual
budget (:mod:`invisible_face.method.visibility`) bounds each pixel by what the eye misses there and
holds the face at a target SSIM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import kornia
import torch
from torch import nn

from invisible_face.method.ldman import cap_rms
from invisible_face.method.recompression import diverse_input
from invisible_face.method.visibility import Projection, split_chroma
from invisible_face.models.ensemble import SEP
from invisible_face.models.margins import attribute_margins, set_margin_loss

Transform = Callable[[torch.Tensor], torch.Tensor]


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Each of B x ... scaled to unit L2 norm (zeros stay zero)."""
    return x / x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))


def member_groups(classes: dict[str, torch.Tensor]) -> list[list[str]]:
    """The keys of each ensemble member (:mod:`invisible_face.models.ensemble`: ``<member>/<attribute>``,
    the first member's plain), in order; a single model's keys are one group."""
    groups: dict[str, list[str]] = {}
    for key in classes:
        groups.setdefault(key.rsplit(SEP, 1)[0] if SEP in key else "", []).append(key)
    return list(groups.values())


def push_target(stop_margin: float, push_margin: float | None) -> float:
    """The margin the steps aim for: ``push_margin`` where it lies past ``stop_margin``, else the stop."""
    return max(stop_margin, push_margin or stop_margin)


def worst_margins(model: nn.Module, x: torch.Tensor, logits: dict[str, torch.Tensor],
                  classes: dict[str, torch.Tensor], survive: Transform | None, stop_margin: float) -> torch.Tensor:
    """Set margins of ``x`` (its logits given), and with ``survive`` the larger of those and the
    margins after the round trip (no gradient through it): B x A, negative = fooled both ways.
    The round trip is only run for the images already past ``stop_margin`` as written: the others
    are not fooled either way, and a codec pass costs as much as a forward pass."""
    margins = attribute_margins(logits, classes)
    candidates = (margins < -stop_margin).all(1)
    if survive is not None and candidates.any():
        with torch.no_grad():
            after = attribute_margins(model(survive(x.detach()[candidates])),
                                      {k: c[candidates] for k, c in classes.items()})
        margins = margins.clone()
        margins[candidates] = torch.maximum(margins[candidates], after)
    return margins


def shape_step(grad: torch.Tensor, chroma_weight: float = 1.0, smooth: float = 0.0) -> torch.Tensor:
    """A step direction people see less and JPEG keeps more: its chroma part
    (:func:`invisible_face.method.visibility.split_chroma`) scaled by ``chroma_weight``, then a Gaussian
    blur of sigma ``smooth`` times the image side. B x 3 x H x W -> same."""
    if chroma_weight != 1.0:
        luma, chroma = split_chroma(grad)
        grad = luma + chroma_weight * chroma
    sigma = smooth * max(grad.shape[-2:])
    if sigma >= 0.3:
        k = 2 * int(2 * sigma + 0.5) + 1
        grad = kornia.filters.gaussian_blur2d(grad, (k, k), (sigma, sigma))
    return grad


def shrink_perturbation(model: nn.Module, images: torch.Tensor, delta: torch.Tensor, classes: dict[str, torch.Tensor],
                        scales: Sequence[float], stop_margin: float, survive: Transform | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The smallest of ``scales`` (ascending, each < 1) times ``delta`` that still keeps every
    attribute past the margin (after ``survive`` too, when given), in one forward pass over B x K
    candidates (two with ``survive``).

    images, delta: B x 3 x H x W -> (shrunk delta B x 3 x H x W, the model's logits on it
    {attribute: B x C}, found: B bool; where no scale works a face's entries are not to be used).
    """
    b, k = len(images), len(scales)
    factor = torch.tensor(list(scales), dtype=delta.dtype).view(1, k, 1, 1, 1)
    candidates = ((images[:, None] + factor * delta[:, None]).clamp(0, 1) - images[:, None]).flatten(0, 1)
    x = images.repeat_interleave(k, 0) + candidates
    with torch.no_grad():
        logits = model(x)
    margins = worst_margins(model, x, logits, {a: c.repeat_interleave(k, 0) for a, c in classes.items()}, survive,
                            stop_margin)
    ok = (margins < -stop_margin).all(1).view(b, k)
    pick = torch.arange(b) * k + ok.float().argmax(1)  # the first (smallest) working scale
    return candidates[pick], {a: v[pick] for a, v in logits.items()}, ok.any(1)


def refine_perturbation(model: nn.Module, images: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor,
                        classes: dict[str, torch.Tensor], epsilon: float, steps: int, step_size: float,
                        stop_margin: float, shrink: Sequence[float] = (), survive: Transform | None = None,
                        through: Transform | None = None, shape: Transform | None = None, views: int = 0,
                        push_margin: float | None = None, rms: float = float("inf"), momentum: float = 0.0,
                        identity: Transform | None = None,
                        identity_bound: float = 0.5, identity_weight: float = 1.0,
                        budget: torch.Tensor | None = None, project: Projection | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Move every attribute's call outside its class set by ``stop_margin`` (logits), inside
    ``mask`` within the L-inf budget: |perturbation| <= epsilon * mask at every pixel.
    With ``push_margin`` (> stop_margin) the steps go on to that margin: a face counts as fooled
    past ``stop_margin``, but one pushed further on the surrogate fools models the defender does not
    own more often (transfer); a face that cannot reach it ends at the last step that fooled it.

    images, delta: B x 3 x H x W (delta: the starting perturbation); mask: B x 1 x H x W in [0, 1]
    (a soft mask bounds the budget pixel by pixel: the feathered face mask fades it out at the edges);
    classes: {attribute: B x C bool}, e.g. the true labels one-hot or :func:`plausible_classes`.
    Each step moves a face by ``step_size * epsilon`` in RMS over its mask, along the gradient of
    the summed margins (each capped just past the stop, so a fooled head stops pulling); with an
    ensemble's keys (``<member>/<attribute>``) each member's gradient is scaled to unit norm before the
    sum, so the member whose logits move fastest does not take the whole step. A face
    fooled at the end is then scaled down by the smallest of ``shrink`` that keeps it fooled
    (:func:`shrink_perturbation`), taking back the last step's overshoot.
    ``survive``: a round trip a fooled face must also survive (checked each step, no gradient);
    ``through``: a differentiable stand-in for it whose gradient is added to the steps of a face already
    past the stop margin as written (before that, the plain gradient alone: it costs half as much);
    ``shape``: maps the gradient to the step's direction (:func:`shape_step`);
    ``views``: random resized and padded views of the face whose gradients are added to each step's
    (input diversity, :func:`invisible_face.method.recompression.diverse_input`; seeded, so a face
    always gets the same perturbation): a step that holds across views transfers further.
    ``rms``: the perturbation's largest root-mean-square over the crop (a PSNR floor, as G's output has:
    :func:`invisible_face.method.ldman.psnr_to_rms`); each step is projected back inside it;
    ``momentum``: each step follows the running sum of the unit gradients, the older ones decayed by
    this factor (MI-FGSM's update): with several heads to push, a plain step bounces between them;
    ``identity``: x -> B distances of its face embedding from the clean face's (``keep_identity``): a
    face counts as fooled only while its distance stays under ``identity_bound``, and the steps pull
    it back (past 0.8 of the bound, with ``identity_weight`` times the heads' unit gradient) while the heads
    are pushed;
    ``budget``: B x 1 x H x W, each pixel's bound in units of epsilon (the perceptual budget,
    :mod:`invisible_face.method.visibility`: under 1 on smooth skin, up to its ceiling in texture):
    it scales the bound and each step pixel by pixel, while a step's size is still measured over the
    mask, so the budget moves the change from smooth skin into texture rather than shrinking it;
    ``project``: (images, delta) -> delta, the constraints a step is projected back into after the
    bound (:func:`invisible_face.method.visibility.perceptual_projection`: the colour bound and the
    face-SSIM target).
    -> (perturbation B x 3 x H x W, |.| <= epsilon * mask * budget, inside the [0, 1] range;
        fooled: B bool, every attribute past ``stop_margin`` at the end;
        the model's logits on images + perturbation, {attribute: B x C};
        the gradient steps each face took: B int, 0 for a face its starting perturbation already protects).
    """
    area = (mask.flatten(1).sum(1) * images.shape[1]).clamp_min(1).sqrt().view(-1, 1, 1, 1)
    if budget is not None:
        mask = mask * budget
    bound = epsilon * mask
    delta = (images + torch.maximum(torch.minimum(delta, bound), -bound)).clamp(0, 1) - images
    if project is not None:
        delta = project(images, delta)
    generator = torch.Generator().manual_seed(0)
    target = push_target(stop_margin, push_margin)
    kept, was_fooled = delta, torch.zeros(len(images), dtype=torch.bool)  # the last step that fooled each face
    velocity = torch.zeros_like(delta)
    taken = torch.zeros(len(images), dtype=torch.int64)
    for step in range(steps + 1):
        d = delta.detach().requires_grad_(True)
        logits = model(images + d)
        margins = worst_margins(model, images + d, logits, classes, survive, stop_margin)
        fooled, reached = (margins < -stop_margin).all(1), (margins < -target).all(1)
        if identity is not None:
            distance = identity(images + d)
            same_person = distance.detach() < identity_bound
            fooled, reached = fooled & same_person, reached & same_person
        kept, was_fooled = torch.where(fooled.view(-1, 1, 1, 1), d.detach(), kept), was_fooled | fooled
        if reached.all() or step == steps:
            break
        # the push starts once a face is past the stop: until then its hardest attribute gets the gradient
        cap = torch.where(fooled, target, stop_margin) + 0.5
        near = (attribute_margins(logits, classes) < -stop_margin).all(1)  # fooled as written
        through_logits = model(through((images + d)[near])) if through is not None and near.any() else None
        if views:  # one batched pass over every view
            diverse = torch.cat([diverse_input(images + d, 1.0, generator) for _ in range(views)])
            view_logits, view_cap = model(diverse), cap.repeat(views)
        # one unit gradient per ensemble member, summed: a member whose logits move faster does not
        # take the whole step (a plain model is one member)
        grad = torch.zeros_like(d)
        groups = member_groups(classes)
        for keys in groups:
            sets = {k: classes[k] for k in keys}
            loss = set_margin_loss({k: logits[k] for k in keys}, sets, cap).sum()
            if through_logits is not None:
                loss = loss + set_margin_loss({k: through_logits[k] for k in keys},
                                              {k: c[near] for k, c in sets.items()}, cap[near]).sum()
            if views:
                repeated = {k: c.repeat(views, 1) for k, c in sets.items()}
                loss = loss + set_margin_loss({k: view_logits[k] for k in keys}, repeated, view_cap).sum() / views
            (g,) = torch.autograd.grad(loss, d, retain_graph=True)
            grad = grad + (unit_rms(g) if len(groups) > 1 else g)
        if identity is not None:  # the pull back, as strong as ``identity_weight`` members
            (g,) = torch.autograd.grad((distance - 0.8 * identity_bound).clamp_min(0).sum(), d)
            grad = unit_rms(grad) + identity_weight * unit_rms(g)
        grad = (shape(grad) if shape is not None else grad) * mask
        velocity = momentum * velocity + unit_rms(grad)  # momentum damps the bouncing between heads
        unit = unit_rms(velocity) * area
        active = (~reached).float().view(-1, 1, 1, 1)
        taken += (~reached).long()
        delta = torch.maximum(torch.minimum(delta - active * step_size * epsilon * unit, bound), -bound)
        delta = (images + (cap_rms(delta, rms) if math.isfinite(rms) else delta)).clamp(0, 1) - images
        if project is not None:
            delta = project(images, delta)
    delta, logits = delta.detach(), {k: v.detach() for k, v in logits.items()}
    fall_back = was_fooled & ~fooled  # pushed, ended short of the push and of the stop: back to the last fooled step
    if fall_back.any():
        delta = torch.where(fall_back.view(-1, 1, 1, 1), kept, delta)
        with torch.no_grad():
            logits = model(images + delta)
    fooled = was_fooled
    if shrink and reached.any():
        shrunk, shrunk_logits, found = shrink_perturbation(model, images, delta, classes, shrink, target, survive)
        use = found & reached
        delta = torch.where(use.view(-1, 1, 1, 1), shrunk, delta)
        logits = {k: torch.where(use.view(-1, 1), shrunk_logits[k], v) for k, v in logits.items()}
    return delta, fooled, logits, taken
