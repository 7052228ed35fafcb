"""Photos composed from UTKFace chips, so tests and benchmarks need no photos beside the dataset.

Aligned 200x200 chips are pasted, with a feathered border and optionally rolled, onto a smooth
background (a heavily blurred mosaic of chips: skin and hair colours, no edges that look like a
face) at the sizes faces have in real photos. dlib's HOG detector, which the protector runs on
photos (upsample 1), finds every face of :data:`LAYOUTS` and nothing in ``no_face.jpg``. The same
dataset always gives the same photos.

    python -m invisible_face.data.synthetic_photos OUT_DIR   # write them (default image_dir of params)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from invisible_face.data.labels import LabelError, parse_utkface_name


@dataclass(frozen=True)
class Placement:
    """One chip in a photo: chip number ``chip`` of :func:`pick_chips`, scaled to ``side`` px square,
    centred at (cx, cy) px, rolled ``angle`` degrees counter-clockwise. The face (HOG box) covers
    about 0.9 of ``side``."""

    chip: int
    cx: float
    cy: float
    side: int
    angle: float = 0.0


@dataclass(frozen=True)
class Layout:
    """A photo of ``size`` (W, H) px holding ``faces``; ``mode`` RGB, L (grayscale) or RGBA (alpha:
    a ramp from 255 on the left to 64 on the right, so a copied alpha channel is checkable)."""

    size: tuple[int, int]
    faces: tuple[Placement, ...]
    mode: str = "RGB"


# Each face is another person (chip). The suffix gives the format the photo is saved in.
LAYOUTS: dict[str, Layout] = {
    "portrait.jpg": Layout((300, 240), (Placement(0, 150, 115, 110),)),  # one face, quick to protect
    "two_faces.jpg": Layout((640, 480), (Placement(1, 210, 250, 180), Placement(2, 480, 170, 120, angle=15))),
    "small_face.jpg": Layout((320, 240), (Placement(3, 200, 100, 60),)),  # near HOG's 40 px limit at upsample 1
    "edge_face.jpg": Layout((320, 240), (Placement(4, 250, 130, 150),)),  # its margin runs past the photo
    "no_face.jpg": Layout((320, 240), ()),
    "gray.jpg": Layout((300, 240), (Placement(5, 140, 120, 120),), mode="L"),
    "rgba.png": Layout((240, 300), (Placement(6, 120, 140, 130),), mode="RGBA"),
}


# Group photos of 1 to 4 people (the load benchmark's default, benchmarks/serve_load.py): every face
# at least 120 px, as in a photo people post of themselves and their friends.
GROUP_LAYOUTS: dict[str, Layout] = {
    "one.jpg": Layout((400, 300), (Placement(0, 200, 150, 160),)),
    "two.jpg": Layout((640, 360), (Placement(1, 200, 180, 160), Placement(2, 440, 180, 150))),
    "three.jpg": Layout((800, 400), (Placement(3, 150, 200, 150), Placement(4, 400, 190, 160),
                                     Placement(5, 650, 200, 140))),
    "four.jpg": Layout((800, 500), (Placement(6, 170, 150, 140), Placement(7, 560, 150, 150),
                                    Placement(8, 230, 360, 130), Placement(9, 600, 360, 140, angle=10))),
}


def face_count(name: str) -> int:
    """Faces placed in the photo ``name`` of :data:`LAYOUTS` (what a detector should find)."""
    return len(LAYOUTS[name].faces)


def pick_chips(image_dir: str | Path, n: int = 8, seed: int = 0, min_score: float = 1.5) -> list[Path]:
    """``n`` chips of different people for the faces: a seeded walk over the labelled chips keeping
    adults of a (gender, race) not yet taken (so no two look alike) on which HOG finds one clearly
    frontal face (score >= ``min_score`` at upsample 0, reached by about a fifth of the chips: weaker
    ones, e.g. with glasses, drop to a score near 0 once scaled down, rolled or turned gray)."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    paths = sorted(Path(image_dir).glob("*.jpg"))
    picked, taken = [], set()
    for i in np.random.default_rng(seed).permutation(len(paths)):
        try:
            label = parse_utkface_name(paths[i].name)
        except LabelError:
            continue
        if not 20 <= label.age < 60 or (label.gender, label.race) in taken:
            continue
        with Image.open(paths[i]) as img:
            pixels = np.asarray(img.convert("RGB"))
        _, scores, _ = detector.run(pixels, 0, 0.0)
        if len(scores) == 1 and scores[0] >= min_score:
            picked.append(paths[i])
            taken.add((label.gender, label.race))
            if len(picked) == n:
                return picked
    raise ValueError(f"only {len(picked)} of {n} suitable chips in {image_dir}")


def background(chips: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """A smooth W x H RGB background: the chips tiled at 100 px, blurred until no feature is left."""
    width, height = size
    mosaic = Image.new("RGB", size)
    for k, (x, y) in enumerate((x, y) for y in range(0, height, 100) for x in range(0, width, 100)):
        mosaic.paste(chips[k % len(chips)].resize((100, 100), Image.BILINEAR), (x, y))
    return mosaic.filter(ImageFilter.GaussianBlur(40))


def feathered_mask(side: int) -> Image.Image:
    """side x side L mask: opaque inside, fading to 0 over the outer tenth, so no chip edge shows."""
    edge = max(2, side // 10)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle((edge // 2, edge // 2, side - 1 - edge // 2, side - 1 - edge // 2), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(edge / 3))


def compose(layout: Layout, chips: list[Image.Image]) -> Image.Image:
    """The photo of ``layout`` (mode ``layout.mode``, ``layout.size``) from RGB chips (:func:`pick_chips`)."""
    photo = background(chips, layout.size)
    for face in layout.faces:
        chip = chips[face.chip].resize((face.side, face.side), Image.LANCZOS)
        mask = feathered_mask(face.side)
        if face.angle:
            chip = chip.rotate(face.angle, Image.BICUBIC, expand=True)
            mask = mask.rotate(face.angle, Image.BICUBIC, expand=True)  # the corners come in transparent
        photo.paste(chip, (round(face.cx - chip.width / 2), round(face.cy - chip.height / 2)), mask)
    if layout.mode == "RGBA":
        alpha = np.linspace(255, 64, layout.size[0]).round().astype(np.uint8)
        photo.putalpha(Image.fromarray(np.tile(alpha, (layout.size[1], 1))))
    return photo.convert(layout.mode)


def write_photos(image_dir: str | Path, out_dir: str | Path, layouts: dict[str, Layout] = LAYOUTS) -> Path:
    """Compose every photo of ``layouts`` from the chips in ``image_dir`` into ``out_dir`` -> ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 1 + max(face.chip for layout in layouts.values() for face in layout.faces)
    chips = []
    for path in pick_chips(image_dir, n):
        with Image.open(path) as img:
            chips.append(img.convert("RGB"))
    for name, layout in layouts.items():
        photo = compose(layout, chips)
        photo.save(out_dir / name, **({"quality": 92} if name.endswith(".jpg") else {}))
    return out_dir


if __name__ == "__main__":
    from invisible_face.params import PROJECT_ROOT, load_params

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "synthetic_photos")
    print(write_photos(PROJECT_ROOT / load_params(PROJECT_ROOT / "params.yaml")["data"]["image_dir"], target))
