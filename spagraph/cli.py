"""Command-line interface: ``spagraph --help``.

Each command is a thin wrapper; the work lives in the package modules, imported lazily
so that ``spagraph --help`` is fast.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="spagraph: cancer tissue regions in spatial transcriptomics (H&E + genes on a spatial graph).")


def _version(value: bool) -> None:
    if value:
        from spagraph import __version__
        typer.echo(f"spagraph {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")):
    """spagraph: cancer tissue regions in spatial transcriptomics (H&E + genes on a spatial graph)."""
    import spagraph  # noqa: F401  (installs the filter for third-party import-time deprecation noise)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _guard():
    """Turn any error escaping a command into ``error: ...`` and exit code 2 (no traceback).

    Expected problems (bad config, bad file, bad data) carry their own message. Anything else is
    named by its type; ``SPAGRAPH_DEBUG=1`` re-raises it with the full traceback.
    """
    import click
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, typer.Exit):
        raise
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=130)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        if os.environ.get("SPAGRAPH_DEBUG"):
            raise
        expected = (ValueError, FileNotFoundError, OSError, ImportError, KeyError)
        msg = str(e) if isinstance(e, expected) and str(e) else f"{type(e).__name__}: {e}"
        if isinstance(e, ModuleNotFoundError):
            msg = f"missing module: {e.name or e} (this command needs it; is the package complete?)"
        elif not isinstance(e, expected):
            msg += "  (unexpected; rerun with SPAGRAPH_DEBUG=1 for the traceback)"
        _fail(msg)


def _guarded(fn):
    """Decorator form of :func:`_guard` for command functions (keeps the signature for typer)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _guard():
            return fn(*args, **kwargs)
    return wrapper


@app.command()
@_guarded
def fetch(dataset: str = typer.Argument(..., help="dataset card name (datasets/<name>.yaml) or path to a card"),
          dest: Path = typer.Option(..., "--dest", help="directory to download into"),
          mirror: Optional[str] = typer.Option(None, help="base URL/dir replacing the card's base URL (e.g. file:///mirror)")):
    """Download a dataset listed in a dataset card and verify its sha256 checksums."""
    from spagraph.io.fetch import fetch_dataset
    try:
        fetch_dataset(dataset, dest, mirror=mirror)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(str(e))


@app.command()
@_guarded
def info(path: Path = typer.Argument(..., help="her2st root, Space Ranger outs/, Visium HD outs/, Xenium folder, SpatialData .zarr, or .h5ad"),
         slice: Optional[str] = typer.Option(None, "--slice", help="slice name (her2st layout)"),
         bin_um: Optional[float] = typer.Option(None, "--bin-um", help="Xenium pseudo-spot size (default 50) / Visium HD bin size (default 16), microns"),
         grid: Optional[str] = typer.Option(None, "--grid", help="Xenium: square (default), hex or cells")):
    """Print platform, spot/bin size, spots, genes, image size and label counts of one slice."""
    from spagraph.io import read_slice, describe_slice
    kw = {k: v for k, v in (("bin_um", bin_um), ("grid", grid)) if v is not None}
    try:
        adata = read_slice(path, slice_name=slice, **kw)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(str(e))
    typer.echo(describe_slice(adata))


def _set_threads(n: int) -> None:
    """Pin torch's intra-op CPU threads (0 leaves torch's default)."""
    if n > 0:
        import torch
        torch.set_num_threads(n)


@app.command()
@_guarded
def run(config: Path = typer.Argument(..., help="experiment YAML (see experiments/)"),
        out: Optional[Path] = typer.Option(None, "--out", help="output directory (default: the YAML's 'out', else runs/<name>)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key: --set train.lr=3e-4 (repeatable)"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in OUT"),
        save_model: bool = typer.Option(False, "--save-model", help="save the trained models: OUT/model/ (protocol fit: "
                                        "one per seed, an ensemble) or OUT/models/<fold>_s<seed>; spagraph predict reads them"),
        recompute_changed: bool = typer.Option(False, "--recompute-changed",
                                               help="with --resume: recompute the folds whose config or data changed instead of refusing"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        threads: int = typer.Option(0, "--threads", min=0,
                                    help="torch CPU threads (0: torch's default); 1 is fastest on small shared machines"),
        executor: str = typer.Option("local", "--executor", help="local (this process) | ray (fold x seed tasks in parallel)"),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, ray://host:10001); default: start a local Ray"),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="CPUs of the local Ray (default: all)")):
    """Run an experiment (all folds x seeds) and write predictions, metrics and maps."""
    import os
    _set_threads(threads)
    from rich.console import Console
    from spagraph.experiment.config import ConfigError, load_config
    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        _fail(str(e))
    out_dir = Path(out or cfg.out or Path("runs") / cfg.name)
    if cfg.track.mode != "disabled":
        os.environ.setdefault("WANDB_MODE", "offline")
    from spagraph.experiment.runner import run_experiment
    from spagraph.experiment.progress import summary_table
    from spagraph.experiment.tracking import make_tracker
    from spagraph.experiment.executor import TaskFailed, get_executor
    if recompute_changed and not resume:
        _fail("--recompute-changed needs --resume")
    ex = get_executor(executor, address, workers, threads=threads or 1)
    tracker = make_tracker(cfg.track, cfg.to_dict(), out_dir, name=cfg.name, job_type="run")
    try:
        metrics = run_experiment(cfg, out_dir, resume=resume, progress=progress, tracker=tracker,
                                 base_dir=config.resolve().parent, executor=ex, recompute_changed=recompute_changed,
                                 save_models=save_model)
    except (ValueError, FileNotFoundError, TaskFailed) as e:
        _fail(str(e))
    finally:
        tracker.finish()
        ex.shutdown()
    con = Console()
    table = summary_table(metrics)
    # numbers are never folded: a console narrower than the tables' minimum is widened
    con = Console(width=max(con.width, Console(width=1000).measure(table).minimum))
    con.print(table)
    if metrics.get("evaluated_on", "").startswith("validation"):
        con.print(f"[yellow]metrics are on {metrics['evaluated_on']}[/yellow]")
    if save_model:
        con.print(f"model:       {out_dir / ('model' if cfg.protocol.kind == 'fit' else 'models')}/")
    con.print(f"wall time {metrics['wall_time_s']:.1f} s")
    con.print(f"metrics:     {out_dir / 'metrics.json'}")
    con.print(f"predictions: {out_dir / 'predictions.csv'}")
    con.print(f"maps:        {out_dir / 'maps'}/")


@app.command()
@_guarded
def tune(config: Path = typer.Argument(..., help="experiment YAML with a 'search:' block"),
         trials: int = typer.Option(20, "--trials", min=1, help="total finished trials wanted in the study (>= 1)"),
         storage: Optional[str] = typer.Option(None, "--storage", help="optuna storage URL (default sqlite:///OUT/study.db)"),
         out: Path = typer.Option(Path("runs/tune"), "--out", help="output directory (best.yaml, study.png)"),
         set_: Optional[List[str]] = typer.Option(None, "--set", help="override a key before searching"),
         exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="slice held out of tuning entirely (nested evaluation)"),
         max_folds: Optional[int] = typer.Option(None, "--max-folds", help="use only the first N folds per trial"),
         nested: bool = typer.Option(True, "--nested/--no-nested", help="LOSO: one study per outer test slice over the other slices only (default); --no-nested: one study over all folds"),
         outer: Optional[List[str]] = typer.Option(None, "--outer", help="nested: tune only for these outer test slices"),
         progress: bool = typer.Option(True, "--progress/--no-progress"),
         workers: int = typer.Option(1, "--workers", min=1, help="parallel tuning workers per study (default storage then journal:OUT/study.journal)"),
         executor: str = typer.Option("local", "--executor", help="local | ray (workers in parallel)"),
         address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: a local Ray")):
    """Search hyper-parameters (TPE + median pruning on validation AUC); resumable; nested by default.

    Writes OUT/best_<slice>.yaml per outer test slice (nested) or OUT/best.yaml (--no-nested)."""
    import os
    from spagraph.experiment.config import ConfigError
    from spagraph.experiment.tune import tune as run_tune
    os.environ.setdefault("WANDB_MODE", "offline")
    from spagraph.experiment.executor import TaskFailed, get_executor
    out.mkdir(parents=True, exist_ok=True)
    if storage is None:
        storage = f"journal:{out.resolve()}/study.journal" if workers > 1 else f"sqlite:///{out.resolve()}/study.db"
    ex = get_executor(executor, address, workers if executor == "ray" and not address else None)
    try:
        summary = run_tune(config, trials, storage, out, set_, exclude, max_folds=max_folds, progress=progress,
                           nested=nested, outer=outer, workers=workers, executor=ex)
    except (ConfigError, ValueError, FileNotFoundError, TaskFailed) as e:
        _fail(str(e))
    finally:
        ex.shutdown()
    if "outer" in summary:
        for x, s in summary["outer"].items():
            typer.echo(f"outer test slice {x}: best inner validation AUC {s['best_value']:.4f} "
                       f"(trial {s['best_trial']}, {s['n_complete']} complete) -> {s['best_config']}")
        return
    typer.echo(f"best mean validation AUC {summary['best_value']:.4f} (trial {summary['best_trial']}, "
               f"{summary['n_complete']} complete, {summary['n_pruned']} pruned)")
    typer.echo(f"best config: {out / 'best.yaml'}   plot: {out / 'study.png'}")


@app.command()
@_guarded
def predict(model_dir: Path = typer.Argument(..., help="saved model folder (RUN/model, RUN/models/<fold>_s<seed>) or a folder of them (seed ensemble)"),
            slice_paths: List[Path] = typer.Argument(..., metavar="SLICE...", help=".h5ad files, Space Ranger outs/, her2st roots (with --slice) or, with --card, dataset roots"),
            slice: Optional[List[str]] = typer.Option(None, "--slice", help="section name in a her2st root / card (repeatable)"),
            card: Optional[str] = typer.Option(None, "--card", help="dataset card (datasets/<name>.yaml or a path); SLICE is the root it was fetched to"),
            out: Path = typer.Option(..., "--out", help="output folder (one .h5ad + .csv + .png per slice, summary.csv), or X.h5ad for one slice"),
            mc_passes: int = typer.Option(20, "--mc-passes", help="MC-dropout passes per model for the uncertainty (0: off)"),
            boundary_pitches: float = typer.Option(1.0, "--boundary-pitches", help="boundary = spots within this many pitches of the other class"),
            k_hops: Optional[int] = typer.Option(None, "--k-hops", help="boundary by hops on the scale-1 graph instead of distance"),
            max_spread: Optional[float] = typer.Option(None, "--max-spread", help="spots with uncertainty (std) above this are high-risk only when their probability itself reaches --risk-level"),
            risk_level: float = typer.Option(0.25, "--risk-level", help="high-risk: predicted non-cancer with P(cancer), or P + 2 std, >= this"),
            threshold_method: Optional[str] = typer.Option(None, "--threshold-method", help="override the saved rule: prior_adjusted, expected_f1, spatial, quantile_beta, quantile_empirical, mixture, val_f1, val_youden, fixed"),
            threshold: Optional[float] = typer.Option(None, "--threshold", help="a fixed cut on the calibrated probability (overrides every rule)"),
            gene_aliases: Optional[Path] = typer.Option(None, "--gene-aliases", help="CSV of gene name pairs (alias,symbol) tried after exact and case-insensitive matching"),
            max_missing_weight: float = typer.Option(0.2, "--max-missing-weight", min=0.0, max=1.0,
                                                     help="refuse a slice whose missing genes carry more than this share of the gene encoder's weight"),
            plot: bool = typer.Option(True, "--plot/--no-plot", help="also write a PNG map per slice (H&E, score, uncertainty, regions, risk)"),
            sdata_table: Optional[str] = typer.Option(None, "--sdata-table", help="SLICE is a SpatialData .zarr: also write the predictions into it as this table (annotating the same shapes)"),
            bin_um: Optional[float] = typer.Option(None, "--bin-um", help="Xenium pseudo-spot size (default 50) / Visium HD bin size (default 16), microns: match what the model was trained on"),
            grid: Optional[str] = typer.Option(None, "--grid", help="Xenium: square (default) or hex"),
            threads: int = typer.Option(0, "--threads", min=0,
                                        help="torch CPU threads (0: torch's default); 1 is fastest on small shared machines")):
    """Predict new slices with a saved model: score, prediction, regions, risk, uncertainty -> .h5ad + .csv + .png per slice."""
    _set_threads(threads)
    from rich.console import Console
    import spagraph.tl as tl
    from spagraph.embed.match import read_aliases
    aliases = read_aliases(gene_aliases) if gene_aliases else None
    model = tl.load_model(model_dir)
    reader_kw = {k: v for k, v in (("bin_um", bin_um), ("grid", grid)) if v is not None}
    inputs = tl.read_inputs(list(slice_paths), slice, card, **reader_kw)
    if sdata_table and len(inputs) != 1:
        _fail(f"--sdata-table writes into one SpatialData store; {len(inputs)} slices were given")
    con = Console(stderr=False)

    def said(name, row):
        g = f"; genes missing {row['genes_missing']} ({row['missing_weight']:.2%} of the encoder weight)" \
            if row["genes_missing"] else ""
        con.print(f"{name}: {row['cancer']}/{row['spots']} spots cancer at threshold {row['threshold']:.4f} "
                  f"({row['rule']}){g} -> {row['h5ad']}", highlight=False, soft_wrap=True)
        prev = row.get("prevalence")
        con.print((f"  estimated cancer fraction {prev:.3f}; " if prev == prev and prev is not None else "  ")
                  + f"{row.get('tumour_regions', 0)} tumour region(s); {row['high_risk']} high-risk spot(s)"
                  + (f"; FLAGS: {row['flags']}" if row.get("flags") else ""), highlight=False, soft_wrap=True)
        if sdata_table:
            from spagraph.io.spatialdata import write_spatialdata_predictions
            write_spatialdata_predictions(row["adata"], slice_paths[0], table_name=sdata_table)
            con.print(f"table {sdata_table!r} written into {slice_paths[0]}", highlight=False, soft_wrap=True)

    df, summ = tl.predict_many(model, inputs, out, plot=plot, on_slice=said, n_mc=mc_passes,
                               distance_pitches=boundary_pitches, k_hops=k_hops, max_spread=max_spread,
                               risk_level=risk_level, threshold_method=threshold_method, threshold=threshold,
                               gene_aliases=aliases, max_missing_weight=max_missing_weight)
    typer.echo(f"\n{len(model.members)} model(s) from {model_dir}")
    typer.echo(tl.summary_text(df))
    typer.echo(f"summary: {summ}")


@app.command()
@_guarded
def report(run_dir: Path = typer.Argument(..., help="finished run directory (predictions.csv, metrics.json, config.yaml)"),
           base_dir: Optional[Path] = typer.Option(None, "--base-dir", help="where the config's relative data paths start (default: the run's YAML folder, then the working directory)"),
           boundary_pitches: float = typer.Option(1.0, "--boundary-pitches", help="boundary = spots within this many pitches of the other class"),
           k_hops: Optional[int] = typer.Option(None, "--k-hops", help="boundary by hops on the scale-1 graph instead of distance"),
           max_spread: float = typer.Option(0.1, "--max-spread", help="high-risk needs spread over seeds (std) <= this")):
    """Write RUN_DIR/report.html (self-contained), regions.csv, high_risk.csv and boundary.csv."""
    from spagraph.regions import RegionSettings
    from spagraph.report import write_report
    if base_dir is None:          # where the run's YAML was: recorded by spagraph run
        import json
        try:                      # a damaged metrics.json is reported by write_report, naming it
            rec = json.loads((run_dir / "metrics.json").read_text()).get("base_dir")
        except (OSError, ValueError, AttributeError):
            rec = None
        base_dir = Path(rec) if rec else None
    try:
        path = write_report(run_dir, base_dir=base_dir,
                            settings=RegionSettings(distance_pitches=boundary_pitches, k_hops=k_hops, max_spread=max_spread))
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(str(e))
    import pandas as pd
    bt = pd.read_csv(run_dir / "boundary.csv")
    for _, r in bt.iterrows():
        typer.echo(f"{r['slice']}: boundary Dice {r['dice_mean']:.3f}  F1(+-1 pitch) {r['f1_tol_mean']:.3f}  (mean over seeds)")
    typer.echo(f"report: {path}\nregions: {run_dir / 'regions.csv'}\nhigh-risk: {run_dir / 'high_risk.csv'}")


@app.command()
@_guarded
def bench(suite: Path = typer.Argument(..., help="suite YAML listing experiments (see experiments/suites/)"),
          out: Path = typer.Option(..., "--out", help="output directory: one folder per entry, table.md/csv, per_slice_auc.png"),
          only: Optional[List[str]] = typer.Option(None, "--only", help="run only this entry now (repeatable); finished ones stay in the table"),
          progress: bool = typer.Option(False, "--progress/--no-progress"),
          threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: torch's default)"),
          executor: str = typer.Option("local", "--executor", help="local | ray (entries in parallel)"),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address; default: a local Ray"),
          workers: Optional[int] = typer.Option(None, "--workers", min=1, help="CPUs of the local Ray (default: all)")):
    """Run a benchmark suite (resumable) and write its accuracy table and per-slice AUC heat-map."""
    _set_threads(threads)
    from spagraph.bench import run_suite
    from spagraph.bench.table import table_markdown
    from spagraph.experiment.executor import get_executor
    ex = get_executor(executor, address, workers)
    try:
        df = run_suite(suite, out, only=only, progress=progress and executor == "local", executor=ex)
    finally:
        ex.shutdown()
    typer.echo(table_markdown(df))
    typer.echo(f"table: {out / 'table.md'}  {out / 'table.csv'}\nheat-map: {out / 'per_slice_auc.png'}")


@app.command()
@_guarded
def embed(path: Path = typer.Argument(..., help="her2st root, Space Ranger outs/, or .h5ad"),
          slice: Optional[str] = typer.Option(None, "--slice", help="slice name (her2st layout)"),
          image_encoder: str = typer.Option("handcrafted", "--image-encoder", help="handcrafted | uni2h | timm:<name> | none"),
          gene_encoder: str = typer.Option("pca", "--gene-encoder", help="hvg | pca | sentence | omiclip | none"),
          out: Path = typer.Option(..., "--out", help="output .h5ad with obsm['img_emb'], obsm['gene_emb']"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="encoder setting key=value, e.g. --set n_pcs=30 (repeatable; YAML values)"),
          cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="cache image embeddings here"),
          progress: bool = typer.Option(True, "--progress/--no-progress"),
          threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: torch's default)")):
    """Embed one slice (image + genes) and write it as .h5ad; the gene encoder is fitted on this slice itself."""
    _set_threads(threads)
    import yaml
    from spagraph.utils import load_yaml
    from spagraph.embed import embed_slices
    from spagraph.io import read_slice
    from spagraph.utils import write_h5ad
    if out.suffix != ".h5ad":
        _fail(f"--out must end in .h5ad, got {out}")
    settings = {}
    for item in set_ or []:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            _fail(f"--set expects key=value, got {item!r}")
        try:
            settings[key.strip()] = load_yaml(val, f"--set {item}")
        except (yaml.YAMLError, ValueError) as e:
            _fail(f"--set {item!r}: value is not valid YAML: {e}")
    none = ("none", "null", "")
    img = None if image_encoder.lower() in none else image_encoder
    gene = None if gene_encoder.lower() in none else gene_encoder
    adata = read_slice(path, slice_name=slice)
    name = slice or (adata.uns.get("spagraph_slice", {}) or {}).get("library_id") or path.stem
    rep = embed_slices({str(name): adata}, fit_on=[str(name)], image_encoder=img, gene_encoder=gene,
                       settings=settings, cache_dir=cache_dir, progress=progress)
    write_h5ad(adata, out)
    typer.echo(f"{name}: {adata.n_obs} spots; genes {rep['genes_used']} used of {rep['genes_shared']}")
    if gene:
        typer.echo(f"gene_emb ({gene}): {rep['d_gene']} dims, fitted on this slice itself "
                   "(one slice: no held-out statistics; for a held-out slice use a saved model: spagraph predict)")
    if img:
        if rep["has_image"][str(name)]:
            typer.echo(f"img_emb ({img}): {rep['d_img']} dims" +
                       (f"  [cache: {rep['cache_hits']} hit, {rep['cache_misses']} miss]" if cache_dir else ""))
        else:
            typer.echo(f"img_emb: none (slice {name} has no image)")
    typer.echo(f"written: {out}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
