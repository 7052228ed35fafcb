"""Face chips of the validated manifest as an in-memory torch Dataset.

Images are decoded and resized once (PIL, antialiased) into one uint8 tensor, so epochs cost no I/O:
8.6k UTKFace chips at 64 px take about 100 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """One RGB image -> 3 x size x size uint8 tensor (original size when ``size`` is None)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def sample_rows(manifest: str | Path | pd.DataFrame, splits: Sequence[str], n: int | None, seed: int) -> pd.DataFrame:
    """``n`` rows of ``splits`` drawn at random (seeded), in file order; all of them when ``n`` is None.

    The first rows in file order are no sample: UTKFace names start with the age, so a split's first
    800 chips are nearly all under 20. Nested by construction (the first ``n`` of one seeded
    permutation): a smaller ``n`` keeps a subset of a larger one's rows, so stages that share chips
    agree (the regions stage's 200 validation chips hold LD-MAN's 96)."""
    table = manifest if isinstance(manifest, pd.DataFrame) else pd.read_csv(manifest)
    rows = table[table["split"].isin(list(splits))].sort_values("file").reset_index(drop=True)
    if n is not None and n < len(rows):
        rows = rows.iloc[np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])].reset_index(drop=True)
    return rows


class FaceAttributes(Dataset):
    """Rows of ``manifest`` whose ``split`` is in ``splits``; ``limit``: a seeded sample of that many
    (:func:`sample_rows`).

    item -> (image: 3 x size x size float in [0, 1], {attribute: int64 scalar label})
    """

    def __init__(self, manifest: str | Path | pd.DataFrame, image_dir: str | Path,
                 splits: Sequence[str], attributes: Sequence[str], size: int = 64,
                 limit: int | None = None, seed: int = 0) -> None:
        table = sample_rows(manifest, splits, limit, seed)
        if table.empty:
            raise ValueError(f"no manifest rows in splits {list(splits)}")
        self.table, self.attributes, self.size = table, list(attributes), size
        image_dir = Path(image_dir)
        self.images = torch.stack([load_image(image_dir / f, size) for f in table["file"]])  # N x 3 x S x S
        self.labels = {a: torch.tensor(table[a].to_numpy(), dtype=torch.int64) for a in self.attributes}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[i].float() / 255.0, {a: y[i] for a, y in self.labels.items()}
