"""`rsam-dist report SWEEP_DIR`: the paper's figures and a Markdown report for a finished sweep.

    rsam-dist report runs/ablation      # writes runs/ablation/report.md and fig_*.png, prints their paths

Reads the sweep directory through `rsam_dist.sweep.results` (sweep.yaml, results.csv, history.csv)
and writes beside them:

    fig_top1_per_epoch.png     test top-1 per epoch, one line per arm (the paper's Figure 3)
    fig_top1_vs_glimpses.png   final test top-1 against glimpse count (Figure 4), when glimpses vary
    fig_search.png             final metric against each numeric searched key (random/optuna sweeps)
    report.md                  what ran, the arms, the best trial, the comparison with the paper
    report.html                the same, as one self-contained page (figures embedded)

`analysis` holds the numbers (the paper's and the arms'), `figures` the plots, `markdown` the prose.
Trials that errored or never ran are counted but left out of figures and averages. Trials that
ASHA stopped early are drawn for the epochs they ran, and left out of "final" averages.
"""

from __future__ import annotations

from pathlib import Path

from rsam_dist.report.analysis import glimpses_vary, is_sampled
from rsam_dist.runs import write_bytes
from rsam_dist.sweep.results import load_sweep_results

REPORT_FILE = "report.md"
REPORT_PAGE = "report.html"


def write_report(sweep_dir: str | Path) -> list[Path]:
    """Write the figures, report.md and report.html into `sweep_dir`; returns the paths written."""
    results = load_sweep_results(sweep_dir)
    # matplotlib and markdown only now: a wrong directory is said in a fraction of a second.
    from rsam_dist.report.figures import (
        FIG_GLIMPSES,
        FIG_PER_EPOCH,
        FIG_SEARCH,
        plot_search,
        plot_top1_per_epoch,
        plot_top1_vs_glimpses,
    )
    from rsam_dist.report.html import render_html
    from rsam_dist.report.markdown import render_markdown

    directory = results.directory
    figures = [
        plot_top1_per_epoch(results, directory / FIG_PER_EPOCH),
        plot_top1_vs_glimpses(results, directory / FIG_GLIMPSES) if glimpses_vary(results) else None,
        plot_search(results, directory / FIG_SEARCH) if is_sampled(results) else None,
    ]
    written = [path for path in figures if path is not None]
    report = directory / REPORT_FILE
    text = render_markdown(results, written)
    write_bytes(str(report), text.encode())
    page = directory / REPORT_PAGE
    write_bytes(str(page), render_html(text, directory, f"rsam-dist report: {directory.name}").encode())
    return [*written, report, page]


__all__ = ["REPORT_FILE", "REPORT_PAGE", "write_report"]
