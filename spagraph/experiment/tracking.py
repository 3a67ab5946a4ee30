"""Run tracking: Weights & Biases in offline mode by default, or nothing at all.

Offline runs never log in nor touch the network; sync them later with ``wandb sync DIR``.
W&B writes under ``track.dir`` (default ``OUT/wandb``), never in the repository.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class NullTracker:
    """Tracking disabled: every call does nothing and nothing is written."""
    run_dir: Path | None = None

    def log(self, data: dict, step: int | None = None) -> None: ...
    def log_table(self, name: str, rows: list[dict]) -> None: ...
    def log_image(self, name: str, path: str | Path) -> None: ...
    def log_artifact(self, path: str | Path, name: str, type: str = "predictions") -> None: ...
    def summary(self, data: dict) -> None: ...
    def finish(self) -> None: ...


class WandbTracker(NullTracker):
    """A W&B run (offline unless ``mode='online'``)."""

    def __init__(self, config: dict, project: str, mode: str, dir: str | Path, name: str | None = None,
                 group: str | None = None, job_type: str | None = None):
        import wandb
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        # keep W&B's caches and staging next to the run, not in ~/.cache / ~/.local/share
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                         ("WANDB_CONFIG_DIR", "config")):
            os.environ.setdefault(var, str(dir / sub) if sub else str(dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(project=project, mode=mode, dir=str(dir), config=config, name=name, group=group,
                              job_type=job_type, reinit="create_new",
                              settings=wandb.Settings(console="off", x_disable_stats=True))
        self.run_dir = Path(self.run.dir).parent if self.run.dir else None

    def log(self, data: dict, step: int | None = None) -> None:
        self.run.log(data, step=step)

    def log_table(self, name: str, rows: list[dict]) -> None:
        if not rows:
            return
        cols = list(rows[0].keys())
        table = self._wandb.Table(columns=cols, data=[[_plain(r.get(c)) for c in cols] for r in rows])
        self.run.log({name: table})

    def log_image(self, name: str, path: str | Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def log_artifact(self, path: str | Path, name: str, type: str = "predictions") -> None:
        art = self._wandb.Artifact(_safe(name), type=type)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def summary(self, data: dict) -> None:
        for k, v in data.items():
            self.run.summary[k] = v

    def finish(self) -> None:
        self.run.finish()


def _plain(v: Any):
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def make_tracker(track, config: dict, out_dir: Path, name: str | None = None, group: str | None = None,
                 job_type: str | None = None) -> NullTracker:
    """Tracker for a ``track`` config section; ``mode: disabled`` (or WANDB_MODE=disabled) gives a no-op."""
    mode = os.environ.get("WANDB_MODE", track.mode) if track.mode != "disabled" else "disabled"
    if mode == "disabled":
        return NullTracker()
    os.environ["WANDB_MODE"] = mode
    return WandbTracker(config, track.project, mode, Path(track.dir) if track.dir else Path(out_dir) / "wandb",
                        name=name, group=group or track.group, job_type=job_type)
