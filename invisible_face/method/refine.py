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
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from invisible_face.filters import gaussian_blur
from invisible_face.method.ldman import cap_rms, psnr_to_rms
from invisible_face.method.recompression import diverse_input, jpeg_differentiable, survives
from invisible_face.method.visibility import Projection, split_chroma
from invisible_face.models.ensemble import member_groups, unit_rms
from invisible_face.models.margins import attribute_margins, protected, set_margin_loss

Transform = Callable[[torch.Tensor], torch.Tensor]


@lru_cache(maxsize=None)
def bf16_native(device_type: str) -> bool:
    """Whether bfloat16 runs in hardware on this device: a GPU, or a CPU with AVX-512 BF16 or AMX
    (oneDNN's own check). Elsewhere autocast emulates it, at about ten times float32's time
    (docs/design.md, "Batches"), so ``bf16_min_batch`` applies only where this is true."""
    if device_type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def push_target(stop_margin: float, push_margin: float | None) -> float:
    """The margin the steps aim for: ``push_margin`` where it lies past ``stop_margin``, else the stop."""
    return max(stop_margin, push_margin or stop_margin)


def worst_margins(model: nn.Module, x: torch.Tensor, logits: dict[str, torch.Tensor],
                  classes: dict[str, torch.Tensor], survive: Transform | None, stop_margin: float,
                  recheck: bool | torch.Tensor = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Set margins of ``x`` (its logits given), and with ``survive`` the larger of those and the
    margins after the round trip (no gradient through it): B x A, negative = fooled both ways.
    The round trip is only run for the images already past ``stop_margin`` as written: the others
    are not fooled either way, and a codec pass costs as much as a forward pass. ``recheck``: the
    logits came from a bfloat16 pass, so the images they call fooled are asked again in float32 and
    only that answer counts (a face is declared protected by float32 alone); a B bool tensor: these
    rows are asked again too, whatever the pass said (a face at its last check: its "not protected" is
    float32 too).
    -> (margins B x A, the logits with the rechecked rows in float32)."""
    margins = attribute_margins(logits, classes)
    candidates = protected(margins, stop_margin)
    ask = candidates | recheck if isinstance(recheck, torch.Tensor) else candidates if recheck else None
    if ask is not None and ask.any():
        with torch.no_grad():
            exact = model(x.detach()[ask])
        logits = {k: v.detach().clone() for k, v in logits.items()}
        for k, v in exact.items():
            logits[k][ask] = v
        margins = margins.clone()
        margins[ask] = attribute_margins(exact, {k: c[ask] for k, c in classes.items()})
        candidates = protected(margins, stop_margin)
    if survive is not None and candidates.any():
        with torch.no_grad():
            after = attribute_margins(model(survive(x.detach()[candidates])),
                                      {k: c[candidates] for k, c in classes.items()})
        margins = margins.clone()
        margins[candidates] = torch.maximum(margins[candidates], after)
    return margins, logits


def shape_step(grad: torch.Tensor, chroma_weight: float = 1.0, smooth: float = 0.0) -> torch.Tensor:
    """A step direction people see less and JPEG keeps more: its chroma part
    (:func:`invisible_face.method.visibility.split_chroma`) scaled by ``chroma_weight``, then a Gaussian
    blur of sigma ``smooth`` times the image side. B x 3 x H x W -> same."""
    if chroma_weight != 1.0:
        luma, chroma = split_chroma(grad)
        grad = luma + chroma_weight * chroma
    sigma = smooth * max(grad.shape[-2:])
    if sigma >= 0.3:
        grad = gaussian_blur(grad, sigma, 2 * int(2 * sigma + 0.5) + 1)
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
    margins, _ = worst_margins(model, x, logits, {a: c.repeat_interleave(k, 0) for a, c in classes.items()}, survive,
                               stop_margin)
    ok = protected(margins, stop_margin).view(b, k)
    pick = torch.arange(b) * k + ok.float().argmax(1)  # the first (smallest) working scale
    return candidates[pick], {a: v[pick] for a, v in logits.items()}, ok.any(1)


@dataclass(frozen=True)
class RefineSettings:
    """The refinement's settings: params ``protector.refine`` (the keys it shares with these fields)
    with the protector's ``epsilon`` and survive check, built once (:meth:`from_config`) and passed whole."""

    epsilon: float                       # L-inf budget on [0, 1]; the perceptual budget scales it per pixel
    steps: int = 14                      # gradient steps at most (per mask)
    patience: int | None = None          # steps a fooled face may push without a new best margin before
                                         # it leaves with its widest fooled step (None: to the end)
    step_size: float = 0.5               # RMS move per step over the mask, as a fraction of epsilon
    stop_margin: float = 1.0             # logits past its set at which an attribute counts as fooled
    push_margin: float | None = None     # ...and the margin the steps aim for (None: the stop margin)
    shrink: tuple[float, ...] = ()       # scales of the final perturbation tried in one pass
    chroma_weight: float = 1.0           # share of a step's colour part kept
    smooth: float = 0.0                  # blur of each step: sigma as a share of the image side
    views: int = 0                       # random resized views added to each step's gradient
    min_psnr: float | None = None        # dB floor of each face (its RMS over the image is capped)
    momentum: float = 0.0                # MI-FGSM decay of the past steps' direction
    survive_jpeg_quality: int | None = None  # a fooled face must also be fooled after this JPEG round trip
    jpeg_gradient: bool = False          # ...and its steps follow the gradient through a differentiable JPEG
    identity_bound: float = 0.5          # embedding distance allowed (with an ``identity`` function)
    identity_weight: float = 1.0         # pull back past 0.8 of the bound, in unit gradients of a member's pull
    bf16_min_batch: int | None = None    # bfloat16 autocast for the steps' passes when at least this many
                                         # faces step together (None: never); every "protected" is float32

    @classmethod
    def from_config(cls, refine: dict[str, Any], epsilon: float,
                    survive_jpeg_quality: int | None = None) -> "RefineSettings":
        """From params ``protector.refine`` (its other keys, such as ``crop_fallback``, are the protector's)."""
        names = {f.name for f in fields(cls)} - {"epsilon", "survive_jpeg_quality"}
        values = {k: v for k, v in refine.items() if k in names}
        if "shrink" in values:
            values["shrink"] = tuple(values["shrink"] or ())
        return cls(epsilon=epsilon, survive_jpeg_quality=survive_jpeg_quality, **values)

    @property
    def target(self) -> float:
        return push_target(self.stop_margin, self.push_margin)

    @property
    def rms(self) -> float:
        return psnr_to_rms(self.min_psnr)

    def survive(self) -> Transform | None:
        return survives(self.survive_jpeg_quality)

    def through(self) -> Transform | None:
        quality = self.survive_jpeg_quality
        return None if quality is None or not self.jpeg_gradient else (lambda x: jpeg_differentiable(x, quality))

    def shape(self, grad: torch.Tensor) -> torch.Tensor:
        return shape_step(grad, self.chroma_weight, self.smooth)


def step_direction(model: nn.Module, x: torch.Tensor, d: torch.Tensor, logits: dict[str, torch.Tensor],
                   sets: dict[str, torch.Tensor], cap: torch.Tensor, s: RefineSettings, groups: list[list[str]],
                   fast: bool, generator: torch.Generator, distance: torch.Tensor | None = None) -> torch.Tensor:
    """One step's descent direction for the faces ``x = images + d`` (``logits``: the model's on them,
    in d's graph): one unit gradient per ensemble member of the capped set margins, summed, so a member
    whose logits move faster does not take the whole step (a plain model is one member); with the
    survive round trip's differentiable stand-in for the faces fooled as written (``jpeg_gradient``),
    ``views`` and the identity pull back (``distance``: in d's graph) as :func:`refine_perturbation`
    describes. -> B x 3 x H x W, unshaped."""
    through = s.through()
    with torch.autocast(x.device.type, torch.bfloat16, enabled=fast):
        near = protected(attribute_margins(logits, sets), s.stop_margin)  # fooled as written
        through_logits = model(through(x[near])) if through is not None and near.any() else None
        if s.views:  # one batched pass over every view
            diverse = torch.cat([diverse_input(x, 1.0, generator) for _ in range(s.views)])
            view_logits, view_cap = model(diverse), cap.repeat(s.views)
    grad = torch.zeros_like(d)
    for keys in groups:
        member_sets = {k: sets[k] for k in keys}
        loss = set_margin_loss({k: logits[k] for k in keys}, member_sets, cap).sum()
        if through_logits is not None:
            loss = loss + set_margin_loss({k: through_logits[k].float() for k in keys},
                                          {k: c[near] for k, c in member_sets.items()}, cap[near]).sum()
        if s.views:
            repeated = {k: c.repeat(s.views, 1) for k, c in member_sets.items()}
            loss = loss + set_margin_loss({k: view_logits[k].float() for k in keys}, repeated, view_cap).sum() / s.views
        (g,) = torch.autograd.grad(loss, d, retain_graph=True)
        grad = grad + (unit_rms(g) if len(groups) > 1 else g)
    if distance is not None:  # the pull back, as strong as ``identity_weight`` members
        (g,) = torch.autograd.grad((distance - 0.8 * s.identity_bound).clamp_min(0).sum(), d)
        grad = unit_rms(grad) + s.identity_weight * unit_rms(g)
    return grad


# (images + delta, index of the faces in the batch) -> B distances of their face embeddings from the clean ones
Identity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def refine_perturbation(model: nn.Module, images: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor,
                        classes: dict[str, torch.Tensor], settings: RefineSettings,
                        budget: torch.Tensor | None = None, project: Projection | None = None,
                        identity: Identity | None = None, window: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Move every attribute's call outside its class set by ``stop_margin`` (logits), inside
    ``mask`` within the L-inf budget: |perturbation| <= epsilon * mask at every pixel.
    With ``push_margin`` (> stop_margin) the steps go on to that margin: a face counts as fooled
    past ``stop_margin``, but one pushed further on the surrogate fools models the defender does not
    own more often (transfer); a face that cannot reach it ends at the step that fooled it by the
    widest margin.

    The faces of a batch step together and each leaves the batch as soon as it reaches the push
    margin, or (``patience``) once it is fooled and its worst margin has gone that many steps without
    a new best (it then keeps its widest fooled step). Every pass runs on the faces still stepping
    only; with ``window`` at most that many step at once, and a face that leaves is replaced by the
    next one waiting, so the passes stay as large as the window while faces remain (continuous
    batching: a face's steps do not depend on its neighbours, up to float rounding, bfloat16 and the
    views' random draws). With ``bf16_min_batch`` the passes of a
    batch at least that large run under bfloat16 autocast, and a face they call fooled is asked again
    in float32 before it counts (:func:`worst_margins`).

    images, delta: B x 3 x H x W (delta: the starting perturbation); mask: B x 1 x H x W in [0, 1]
    (a soft mask bounds the budget pixel by pixel: the feathered face mask fades it out at the edges);
    classes: {attribute: B x C bool}, e.g. the true labels one-hot or :func:`plausible_classes`.
    Each step moves a face by ``step_size * epsilon`` in RMS over its mask, along the gradient of
    the summed margins (each capped just past the stop, so a fooled head stops pulling); with an
    ensemble's keys (``<member>/<attribute>``) each member's gradient is scaled to unit norm before the
    sum, so the member whose logits move fastest does not take the whole step. A face
    fooled at the end is then scaled down by the smallest of ``shrink`` that keeps it fooled
    (:func:`shrink_perturbation`), taking back the last step's overshoot.
    The survive round trip (``survive_jpeg_quality``) is checked each step, no gradient; with
    ``jpeg_gradient`` a differentiable stand-in's gradient is added to the steps of a face already
    past the stop margin as written (before that, the plain gradient alone: it costs half as much);
    the step direction is shaped by :func:`shape_step`; ``views``: random resized and padded views
    of the face whose gradients are added to each step's (input diversity, seeded);
    ``min_psnr``: each step is projected back inside its RMS; ``momentum``: MI-FGSM's update (with
    several heads to push, a plain step bounces between them);
    ``identity``: (x, index) -> distances of the faces' embeddings from their clean ones
    (``keep_identity``): a face counts as fooled only while its distance stays under
    ``identity_bound``, and the steps pull it back past 0.8 of the bound;
    ``budget``: B x 1 x H x W, each pixel's bound in units of epsilon (the perceptual budget,
    :mod:`invisible_face.method.visibility`): it scales the bound and each step pixel by pixel, while
    a step's size is still measured over the mask, so the budget moves the change from smooth skin
    into texture rather than shrinking it;
    ``project``: (images, delta, index) -> delta, the constraints a step is projected back into after
    the bound (:func:`invisible_face.method.visibility.perceptual_projection`).
    -> (perturbation B x 3 x H x W, |.| <= epsilon * mask * budget, inside the [0, 1] range;
        fooled: B bool, every attribute past ``stop_margin`` at the end (at a step it kept);
        the model's logits on images + perturbation, {attribute: B x C};
        the gradient steps each face took: B int, 0 for a face its starting perturbation already protects).
    """
    s = settings
    n = len(images)
    everyone = torch.arange(n)
    area = (mask.flatten(1).sum(1) * images.shape[1]).clamp_min(1).sqrt().view(-1, 1, 1, 1)
    if budget is not None:
        mask = mask * budget
    bound = s.epsilon * mask
    delta = (images + torch.maximum(torch.minimum(delta, bound), -bound)).clamp(0, 1) - images
    if project is not None:
        delta = project(images, delta, everyone)
    survive, target, rms = s.survive(), s.target, s.rms
    generator = torch.Generator().manual_seed(0)
    kept = delta.clone()  # the step that fooled each face by the widest margin
    reached = torch.zeros(n, dtype=torch.bool)
    # lowest worst margins so far, and among the fooled steps (finite: the face was fooled at some step)
    best, best_fooled = torch.full((n,), math.inf), torch.full((n,), math.inf)
    since_best = torch.zeros(n, dtype=torch.int64)  # steps since a face's margin last improved
    velocity = torch.zeros_like(delta)
    taken = torch.zeros(n, dtype=torch.int64)
    logits_out: dict[str, torch.Tensor] = {}
    kept_logits: dict[str, torch.Tensor] = {}  # the logits of each face's kept step
    # the faces stepping now (at most ``window``, topped up from the queue as faces leave)
    window = len(everyone) if window is None else max(window, 1)
    active, queue = everyone[:window], everyone[window:]
    groups = member_groups(classes)
    while len(active):
        x, sets = images[active], {k: c[active] for k, c in classes.items()}
        d = delta[active].detach().requires_grad_(True)
        last = taken[active] >= s.steps  # these faces are at their check after their last step
        # a pass of a batch too small to gain is float32; with bfloat16, the faces it calls fooled and the
        # faces at their last check are asked again in float32 (whatever protects or gives up is float32)
        fast = s.bf16_min_batch is not None and len(active) >= s.bf16_min_batch and bf16_native(images.device.type)
        with torch.autocast(images.device.type, torch.bfloat16, enabled=fast):
            logits = model(x + d)
        logits = {k: v.float() for k, v in logits.items()}
        margins, checked = worst_margins(model, x + d, logits, sets, survive, s.stop_margin,
                                         recheck=last if fast else False)
        now_fooled, now_reached = protected(margins, s.stop_margin), protected(margins, target)
        distance = None
        if identity is not None:
            distance = identity(x + d, active)
            same_person = distance.detach() < s.identity_bound
            now_fooled, now_reached = now_fooled & same_person, now_reached & same_person
        worst = margins.detach().max(1).values
        wider = now_fooled & (worst < best_fooled[active])
        for k, v in checked.items():
            logits_out.setdefault(k, torch.zeros(n, v.shape[1]))[active] = v.detach()
            kept_logits.setdefault(k, torch.zeros(n, v.shape[1]))[active[wider]] = v.detach()[wider]
        kept[active] = torch.where(wider.view(-1, 1, 1, 1), d.detach(), kept[active])
        best_fooled[active] = torch.where(wider, worst, best_fooled[active])
        since_best[active] = torch.where(worst < best[active], 0, since_best[active] + 1)
        best[active] = torch.minimum(best[active], worst)
        reached[active] = now_reached
        # a face leaves at the push margin, after its last step, or when the push has stalled (``patience``)
        stalled = torch.zeros_like(last) if s.patience is None else \
            (since_best[active] >= s.patience) & best_fooled[active].isfinite()
        stepping = ~(now_reached | last | stalled)
        if stepping.any():
            # the push starts once a face is past the stop: until then its hardest attribute gets the gradient
            cap = torch.where(now_fooled, target, s.stop_margin) + 0.5
            grad = step_direction(model, x + d, d, logits, sets, cap, s, groups, fast, generator, distance)
            grad = s.shape(grad.float()) * mask[active]
            # only the faces still stepping move on (each of these is per face, so the others need none of it)
            moving, x = active[stepping], x[stepping]
            velocity[moving] = s.momentum * velocity[moving] + unit_rms(grad[stepping])  # damps the bouncing
            moved = d.detach()[stepping] - s.step_size * s.epsilon * unit_rms(velocity[moving]) * area[moving]
            moved = torch.maximum(torch.minimum(moved, bound[moving]), -bound[moving])
            moved = (x + (cap_rms(moved, rms) if math.isfinite(rms) else moved)).clamp(0, 1) - x
            delta[moving] = project(x, moved, moving) if project is not None else moved
            taken[moving] += 1
        free = window - int(stepping.sum())
        active, queue = torch.cat([active[stepping], queue[:free]]), queue[free:]
    delta = delta.detach()
    was_fooled = best_fooled.isfinite()
    fall_back = was_fooled & ~reached  # fooled, short of the push: its widest fooled step
    if fall_back.any():
        delta = torch.where(fall_back.view(-1, 1, 1, 1), kept, delta)
        for k, v in kept_logits.items():
            logits_out[k][fall_back] = v[fall_back]
    if s.shrink and reached.any():
        shrunk, shrunk_logits, found = shrink_perturbation(model, images[reached], delta[reached],
                                                           {k: c[reached] for k, c in classes.items()},
                                                           s.shrink, target, survive)
        use = reached.clone()
        use[reached] = found
        delta[use] = shrunk[found]
        for k, v in shrunk_logits.items():
            logits_out[k][use] = v[found]
    return delta, was_fooled, logits_out, taken
