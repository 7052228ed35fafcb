"""Where a change shows, and how much of it the eye forgives (docs/design.md, "The perceptual budget").

A just-noticeable-difference (JND) model of the kind image coders use: the eye misses a change of
a few grey levels on a dark or a bright background (luminance adaptation, Chou & Li 1995) and a far
larger one inside texture or at an edge (contrast masking); the two combine as in Yang et al.'s
NAMM (2005): LA + TM - 0.3 min(LA, TM).

The perceptual budget bounds each pixel's change by ``k`` times its JND, capped at a hard ceiling
(hair, brows, edges) and as small as the map says on smooth skin, and bounds its colour part by a
share of the texture masking above skin's own grain (:func:`colour_bound`): colour patches on smooth
skin are what shows first, and brightness adaptation does not hide a change of hue. ``k`` is set per face by the
refinement itself: after every step the change is scaled down along its own direction until the face
keeps a target SSIM (:func:`scale_to_face_ssim`), so every face ends at most at the same visibility,
whatever its texture. The uniform budget (an L-inf epsilon everywhere) takes the same target, so the
two are compared at matched visibility (the evaluate stage's frontier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import kornia
import torch

from invisible_face.filters import gaussian_blur
from invisible_face.metrics import SSIM_SIGMA, SSIM_WINDOW, ssim_from_moments, ssim_map

# (images, delta, index of those faces in the batch the projection was built for) -> delta
Projection = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def grey_levels(image: torch.Tensor) -> torch.Tensor:
    """Luma (BT.601) in grey levels 0-255. B x 3 x H x W in [0, 1] -> B x 1 x H x W."""
    return 255 * kornia.color.rgb_to_grayscale(image)


def luminance_adaptation(grey: torch.Tensor) -> torch.Tensor:
    """Chou & Li's visibility threshold of the background luminance (grey levels): about 20 on black,
    3 at mid-grey, rising slowly towards white. B x 1 x H x W -> same."""
    dark = 17 * (1 - (grey / 127).clamp_min(0).sqrt()) + 3
    bright = 3 / 128 * (grey - 127) + 3
    return torch.where(grey <= 127, dark, bright)


def local_std(grey: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Standard deviation over a ``window`` x ``window`` box around each pixel (texture and edges).
    B x 1 x H x W -> same."""
    mean = kornia.filters.box_blur(grey, (window, window), border_type="reflect")
    square = kornia.filters.box_blur(grey * grey, (window, window), border_type="reflect")
    return (square - mean * mean).clamp_min(0).sqrt()


def jnd_map(image: torch.Tensor, window: int = 7, texture_gain: float = 1.0) -> torch.Tensor:
    """The just-noticeable change at each pixel, in grey levels: luminance adaptation and
    ``texture_gain`` times the local standard deviation, combined by NAMM (their overlap counted once).
    B x 3 x H x W in [0, 1] -> B x 1 x H x W."""
    grey = grey_levels(image)
    la, tm = luminance_adaptation(grey), texture_gain * local_std(grey, window)
    return la + tm - 0.3 * torch.minimum(la, tm)


def jnd_bound(image: torch.Tensor, scale: float, ceiling: float, window: int = 7,
              texture_gain: float = 1.0) -> torch.Tensor:
    """The perceptual budget's bound on each pixel's change: ``scale`` JNDs (:func:`jnd_map`), at most
    ``ceiling`` (both on the [0, 1] scale of the image). B x 3 x H x W -> B x 1 x H x W in (0, ceiling]."""
    return (scale * jnd_map(image, window, texture_gain) / 255).clamp(max=ceiling)


def colour_bound(image: torch.Tensor, scale: float, ceiling: float, floor: float, window: int = 7,
                 texture_gain: float = 1.0) -> torch.Tensor:
    """The bound on each pixel's colour part: ``scale`` times the texture masking above a local contrast
    of ``floor`` grey levels (standard deviation), at most ``ceiling``. A change of hue hides in texture,
    not in the background's brightness, and skin's own grain (a few grey levels) hides none: under
    ``floor`` a pixel gets no colour change at all. B x 3 x H x W -> B x 1 x H x W in [0, ceiling]."""
    texture = (local_std(grey_levels(image), window) - floor).clamp_min(0)
    return (scale * texture_gain * texture / 255).clamp(max=ceiling)


def split_chroma(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A change's luma part (its mean over the channels, B x 1 x H x W) and its chroma part (the rest,
    B x 3 x H x W): delta = luma + chroma."""
    luma = delta.mean(1, keepdim=True)
    return luma, delta - luma


def limit_chroma(delta: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``delta`` with its chroma part scaled down, pixel by pixel, until no channel's exceeds ``bound``
    (scaled, not clipped per channel, so it stays a pure colour change; the luma part is untouched).
    delta: B x 3 x H x W; bound: B x 1 x H x W (or a number) -> B x 3 x H x W."""
    luma, chroma = split_chroma(delta)
    largest = chroma.abs().amax(1, keepdim=True)
    return luma + chroma * torch.clamp(bound / largest.clamp_min(1e-12), max=1.0)


def box_of(mask: torch.Tensor) -> tuple[slice, slice]:
    """The bounding box of a mask's pixels > 0.5 (the whole image when none). 1 x H x W -> (rows, columns)."""
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    if not len(ys):
        return slice(None), slice(None)
    return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


def box_weights(masks: torch.Tensor) -> torch.Tensor:
    """1 / (its pixel count) inside each mask's bounding box (:func:`box_of`), 0 outside: a weighted sum
    with it is the mean over the box. B x 1 x H x W -> same."""
    weights = torch.zeros_like(masks)
    for w, m in zip(weights, masks):
        rows, cols = box_of(m)
        w[:, rows, cols] = 1.0
    return weights / weights.flatten(1).sum(1).view(-1, 1, 1, 1)


def union_window(weights: torch.Tensor) -> tuple[slice, slice]:
    """The rows and columns that the SSIM of every face box reads: the union of the boxes grown by the
    SSIM window's radius (inside the image). :func:`box_weights` B x 1 x H x W -> (rows, columns)."""
    rows, cols = box_of((weights > 0).any(0).float())
    h, w, r = weights.shape[-2], weights.shape[-1], SSIM_WINDOW // 2
    return (slice(max((rows.start or 0) - r, 0), min((rows.stop or h) + r, h)),
            slice(max((cols.start or 0) - r, 0), min((cols.stop or w) + r, w)))


def face_ssim(clean: torch.Tensor, protected: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """SSIM over the bounding box of each face mask (the SSIM map, :func:`ssim_map`, averaged over the
    box, the pixels around it being the window's neighbours): the visibility the perceptual target
    holds and the evaluation reports. Only :func:`union_window` is filtered.
    clean, protected: B x 3 x H x W; masks: B x 1 x H x W -> B."""
    weights = box_weights(masks)
    rows, cols = union_window(weights)
    weights = weights[..., rows, cols]
    return (ssim_map(clean[..., rows, cols], protected[..., rows, cols]) * weights).flatten(1).sum(1) / clean.shape[1]


@dataclass(frozen=True)
class CleanFaces:
    """What :func:`face_ssim_along` needs of the clean faces, whatever the change: each face box's
    weights (:func:`box_weights`) and the clean image's local mean and variance under the SSIM window,
    over the whole image (inside the boxes they equal those of the blur of :func:`union_window` alone,
    which :func:`face_ssim` takes). Taken once for a batch, they serve every step of the refinement."""

    weights: torch.Tensor  # B x 1 x H x W
    mean: torch.Tensor     # B x 3 x H x W
    var: torch.Tensor      # B x 3 x H x W

    @classmethod
    def of(cls, images: torch.Tensor, masks: torch.Tensor) -> "CleanFaces":
        """images: B x 3 x H x W; masks: B x 1 x H x W."""
        mean = gaussian_blur(images, SSIM_SIGMA, SSIM_WINDOW)
        return cls(box_weights(masks), mean, gaussian_blur(images * images, SSIM_SIGMA, SSIM_WINDOW) - mean**2)

    def __getitem__(self, index: torch.Tensor) -> "CleanFaces":
        return CleanFaces(self.weights[index], self.mean[index], self.var[index])


def face_ssim_along(images: torch.Tensor, delta: torch.Tensor, masks: torch.Tensor, clean: CleanFaces | None = None
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """share -> :func:`face_ssim` of ``images + share * delta``, for shares in [0, 1], by closed form:
    the local moments of a change scaled along its own direction are polynomials in the share
    (mean_b = mean_a + s mean_d, cov = var_a + s cov_ad, var_b = var_a + 2 s cov_ad + s^2 var_d), so
    three blurs of the change (with ``clean``: the clean faces' own, :class:`CleanFaces`, else taken
    here) serve every share tried. ``images + delta`` must lie in [0, 1] (then every share's does,
    and no clamp is lost). images, delta: B x 3 x H x W; masks: B x 1 x H x W -> (B shares -> B)."""
    def blur(x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, SSIM_SIGMA, SSIM_WINDOW)

    weights = box_weights(masks) if clean is None else clean.weights
    rows, cols = union_window(weights)
    images, delta = images[..., rows, cols], delta[..., rows, cols]
    if clean is None:  # the window's own blur: inside the boxes, the same as the whole image's
        mean = blur(images)
        clean = CleanFaces(weights[..., rows, cols], mean, blur(images * images) - mean**2)
    else:
        clean = CleanFaces(*(t[..., rows, cols] for t in (clean.weights, clean.mean, clean.var)))
    mean_a, var_a, weights = clean.mean, clean.var, clean.weights
    mean_d = blur(delta)
    cov_ad = blur(images * delta) - mean_a * mean_d
    var_d = blur(delta * delta) - mean_d**2

    def at(share: torch.Tensor) -> torch.Tensor:
        s = share.view(-1, 1, 1, 1)
        ssim_of_share = ssim_from_moments(mean_a, mean_a + s * mean_d, var_a, var_a + 2 * s * cov_ad + s * s * var_d,
                                          var_a + s * cov_ad)
        return (ssim_of_share * weights).flatten(1).sum(1) / images.shape[1]
    return at


def scale_to_face_ssim(images: torch.Tensor, delta: torch.Tensor, masks: torch.Tensor, target: float,
                       iterations: int = 4, slack: float = 0.03, clean: CleanFaces | None = None) -> torch.Tensor:
    """Each face's change scaled down along its own direction to the largest share that keeps its face
    SSIM at least ``target`` (unchanged where it already does): the projection that sets each face's
    ``k``. A small change costs SSIM quadratically, so each try rescales by sqrt(allowed / measured
    loss) (secant steps on a quadratic, not a bisection), stopping within ``slack`` of the allowed
    loss; the largest share that met the target wins. Every try is a closed form on blurs taken
    once (:func:`face_ssim_along`; ``clean``: these faces' :class:`CleanFaces`, when the caller keeps
    them). ``images + delta`` in [0, 1].
    images, delta: B x 3 x H x W; masks: B x 1 x H x W -> B x 3 x H x W."""
    allowed = 1 - target
    with torch.no_grad():
        ssim_at = face_ssim_along(images, delta, masks, clean)
        loss = 1 - ssim_at(torch.ones(len(images)))
        over = loss > allowed
        if not over.any():
            return delta
        # a face under the target keeps share 1 throughout (its rows cost an elementwise pass, no blur)
        share, best = torch.ones(len(images)), torch.where(over, 0.0, 1.0)
        for _ in range(iterations):
            share = torch.where(over, share * (allowed / loss.clamp_min(1e-12)).sqrt() * (1 - slack / 4), 1.0)
            share = share.clamp(max=1.0)
            loss = 1 - ssim_at(share)
            best = torch.where(loss <= allowed, torch.maximum(best, share), best)
            if (best > 0).all() and (loss[over] >= (1 - slack) * allowed).all():
                break
    return best.view(-1, 1, 1, 1) * delta


def perceptual_projection(masks: torch.Tensor, chroma_bound: torch.Tensor | None,
                          target: float | None, images: torch.Tensor | None = None) -> Projection:
    """The perceptual constraints a step is projected back into, besides the per-pixel bound: the
    colour part under ``chroma_bound`` (B x 1 x H x W; None: no separate colour bound), then the whole
    change scaled to the face-SSIM ``target`` (None: no target). ``images``: the batch's clean faces,
    whose SSIM moments are then taken once here (:class:`CleanFaces`) instead of at every step.
    -> (images, delta, index) -> delta, for the faces ``index`` of the batch (the refinement steps a
    changing subset of its batch)."""
    clean = CleanFaces.of(images, masks) if images is not None and target is not None else None

    def project(images: torch.Tensor, delta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if chroma_bound is not None:
            delta = (images + limit_chroma(delta, chroma_bound[index])).clamp(0, 1) - images
        if target is None:
            return delta
        return scale_to_face_ssim(images, delta, masks[index], target, clean=None if clean is None else clean[index])
    return project


def smooth_pixels(clean: torch.Tensor, mask: torch.Tensor, share: float = 0.4, window: int = 7) -> torch.Tensor:
    """The ``share`` smoothest face pixels of each image (lowest local standard deviation of the clean
    grey levels over ``window`` px, among the mask's pixels > 0.5). B x 3 x H x W, B x 1 x H x W -> B x H x W bool."""
    variance = local_std(grey_levels(clean), window)[:, 0]
    out = torch.zeros_like(variance, dtype=torch.bool)
    for i, (v, m) in enumerate(zip(variance, mask[:, 0] > 0.5)):
        if m.any():
            out[i] = m & (v <= v[m].quantile(share))
    return out


def texture_ratio(clean: torch.Tensor, protected: torch.Tensor, mask: torch.Tensor, smooth_share: float = 0.4,
                  window: int = 7) -> torch.Tensor:
    """Mean |change| on the ``smooth_share`` smoothest face pixels (:func:`smooth_pixels`) over the mean on
    the other face pixels: under 1, the change hides in texture.
    clean, protected: B x 3 x H x W; mask: B x 1 x H x W (face pixels: > 0.5) -> B (nan: no change)."""
    smooth = smooth_pixels(clean, mask, smooth_share, window)
    change = (protected - clean).abs().mean(1)
    ratios = []
    for s, c, m in zip(smooth, change, mask[:, 0] > 0.5):
        rest = c[m & ~s].mean()
        ratios.append(c[s].mean() / rest if rest > 0 else torch.tensor(float("nan")))
    return torch.stack(ratios)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005; kL = kC = kH = 1) between CIELAB images:
    about 1 is the smallest difference people notice side by side, about 2 at a glance.
    B x 3 x H x W (L*, a*, b*) each -> B x H x W."""
    l1, a1, b1 = lab1.unbind(1)
    l2, a2, b2 = lab2.unbind(1)
    c_mean = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = torch.hypot(a1, b1), torch.hypot(a2, b2)
    h1 = torch.rad2deg(torch.atan2(b1, a1)) % 360
    h2 = torch.rad2deg(torch.atan2(b2, a2)) % 360
    chroma_zero = (c1 * c2) == 0
    dh = h2 - h1
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_l, d_c = l2 - l1, c2 - c1
    d_h = 2 * torch.sqrt(c1 * c2) * torch.sin(torch.deg2rad(dh) / 2)
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_sum = h1 + h2
    h_mean = torch.where((h1 - h2).abs() <= 180, h_sum / 2, torch.where(h_sum < 360, h_sum / 2 + 180, h_sum / 2 - 180))
    h_mean = torch.where(chroma_zero, h_sum, h_mean)
    t = (1 - 0.17 * torch.cos(torch.deg2rad(h_mean - 30)) + 0.24 * torch.cos(torch.deg2rad(2 * h_mean))
         + 0.32 * torch.cos(torch.deg2rad(3 * h_mean + 6)) - 0.20 * torch.cos(torch.deg2rad(4 * h_mean - 63)))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / torch.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_c = 2 * torch.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    r_t = -torch.sin(torch.deg2rad(60 * torch.exp(-(((h_mean - 275) / 25) ** 2)))) * r_c
    return torch.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def skin_delta_e(clean: torch.Tensor, protected: torch.Tensor, mask: torch.Tensor, smooth_share: float = 0.4,
                 window: int = 7) -> torch.Tensor:
    """Mean CIEDE2000 colour change on the ``smooth_share`` smoothest face pixels (smooth skin, where
    colour patches show). clean, protected: B x 3 x H x W in [0, 1]; mask: B x 1 x H x W -> B."""
    smooth = smooth_pixels(clean, mask, smooth_share, window)
    d = ciede2000(kornia.color.rgb_to_lab(clean), kornia.color.rgb_to_lab(protected.clamp(0, 1)))
    return torch.stack([e[s].mean() if s.any() else torch.tensor(float("nan")) for e, s in zip(d, smooth)])
