"""Early stopping on validation AUC, shared by spagraph's fit loop and the baselines."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np


@dataclass
class EarlyStopping:
    """Keeps the model state of the best validation epoch and counts epochs without gain.

    Without validation slices (``has_val`` False) every epoch counts as the best, so the
    last epoch's state is kept and training never stops early.
    """
    patience: int
    min_epochs: int
    has_val: bool
    best_state: dict | None = None
    best_auc: float = -np.inf
    best_epoch: int = -1
    bad: int = 0

    def update(self, epoch: int, auc: float | None, model) -> None:
        """Record an epoch's validation AUC (``None`` when undefined or without validation)."""
        if (auc is not None and auc > self.best_auc + 1e-6) or (auc is None and not self.has_val):
            if auc is not None:
                self.best_auc = auc
            self.best_state, self.best_epoch, self.bad = copy.deepcopy(model.state_dict()), epoch, 0
        else:
            self.bad += 1

    def should_stop(self, epoch: int) -> bool:
        """True once ``patience`` epochs passed without gain and ``min_epochs`` are done."""
        return self.has_val and self.bad >= self.patience and epoch + 1 >= self.min_epochs

    def restore_best(self, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    @property
    def best_val_auc(self) -> float | None:
        return None if self.best_auc == -np.inf else float(self.best_auc)
