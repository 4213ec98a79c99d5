"""What every data set shares: the error a data set that cannot be read raises, and the seeded,
stratified train / val / test split of arrays (`vitshrink.data` and `vitshrink.image_folder` both use them)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split


class DataError(ValueError):
    """A data set that cannot be found or read; the message says where it was looked for."""


def stratified_split(
    x: np.ndarray, y: np.ndarray, seed: int, val_frac: float, test_frac: float
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(train, val, test) parts of (x, y), each class in the same proportion, seeded."""
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_frac, random_state=seed, stratify=y)
    rel_val = val_frac / (1.0 - test_frac)
    x_tr, x_val, y_tr, y_val = train_test_split(x_rest, y_rest, test_size=rel_val, random_state=seed, stratify=y_rest)
    return (x_tr, y_tr), (x_val, y_val), (x_test, y_test)


__all__ = ["DataError", "stratified_split"]
