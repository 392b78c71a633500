"""scikit-learn's 8x8 handwritten digits: 1,797 real images with 17 grey levels (0..16).

Shipped inside scikit-learn, so it needs no download: the embedded default dataset.
The native 17 levels are kept (no rescaling to 8 bits), so bits/dim refer to 17 levels.
"""

from __future__ import annotations

import torch

from genlab.data.base import DataInfo, InMemoryDataModule, TensorSplit, seeded_split


class DigitsDataModule(InMemoryDataModule):
    """Train/val/test split of sklearn's digits, seeded.

    Args:
        test_fraction: share of the 1,797 images held out for the test split.
        (others: see :class:`InMemoryDataModule`)
    """

    def __init__(self, test_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.test_fraction = test_fraction

    @property
    def info(self) -> DataInfo:
        return DataInfo(name="digits", kind="image", shape=(1, 8, 8), levels=17, num_classes=10)

    def load_splits(self) -> dict[str, TensorSplit]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.as_tensor(d.images, dtype=torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8), 0..16
        y = torch.as_tensor(d.target, dtype=torch.long)
        train_frac = 1.0 - self.val_fraction - self.test_fraction
        tr, va, te = seeded_split(len(x), (train_frac, self.val_fraction, self.test_fraction), self.seed)
        return {k: TensorSplit(x[i], y[i]) for k, i in (("train", tr), ("val", va), ("test", te))}
