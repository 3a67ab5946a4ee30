"""Command-line interface: ``spagraph --help``.

Each command is a thin wrapper; the work lives in the package modules, imported lazily
so that ``spagraph --help`` is fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="spagraph: cancer tissue regions in spatial transcriptomics (H&E + genes on a spatial graph).")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
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
def info(path: Path = typer.Argument(..., help="her2st root, Space Ranger outs/, or .h5ad"),
         slice: Optional[str] = typer.Option(None, "--slice", help="slice name (her2st layout)")):
    """Print spots, genes, image size and label counts of one slice."""
    from spagraph.io import read_slice, describe_slice
    try:
        adata = read_slice(path, slice_name=slice)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(str(e))
    typer.echo(describe_slice(adata))


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
