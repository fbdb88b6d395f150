"""`rsam-dist report SWEEP_DIR`: figures and report.md for a sweep that `rsam-dist sweep` wrote.

    rsam-dist report runs/ablation      # prints the paths of the PNGs and report.md it wrote

Registered on the main group in cli.py; a missing or empty results.csv is a UserError (exit 2).
"""

from __future__ import annotations

import click


@click.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False))
def report(sweep_dir: str) -> None:
    """Write the paper's figures (PNG) and report.md into SWEEP_DIR, and print their paths."""
    from rsam_dist.report import write_report

    for path in write_report(sweep_dir):
        click.echo(path)
