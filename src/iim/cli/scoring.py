"""What ``iim score`` and ``iim sweep`` share: the job (a run, or zero-shot), its notes, and the printing
of what the library functions (:mod:`iim.score.run`) return."""
from __future__ import annotations

import time

import click

from ..errors import IIMError
from ..score.pipeline import Job, prepare_run, prepare_zero_shot
from ..score.run import format_score, format_sweep, run_score, run_sweep


def make_job(run, runs_dir, cache, zero_shot, out, knn_split=None) -> Job:
    """The run (``--run``, else the newest under ``runs_dir``) or the zero-shot prototypes to score."""
    if zero_shot:
        if run is not None:
            raise IIMError("--zero-shot scores without a run; drop --run")
        return prepare_zero_shot(cache, out, knn_split=knn_split)
    return prepare_run(run, runs_dir=runs_dir, cache_path=cache, out=out, knn_split=knn_split)


def announce(job: Job) -> None:
    """The job's notes on stdout, its warnings on stderr."""
    for note in job.notes:
        click.echo(note)
    for w in job.warnings:
        click.echo(f"Warning: {w}", err=True)


def print_score(job: Job, **kw) -> dict:
    """Score ``job`` at one setting (:func:`iim.score.run.run_score`) and print the table and files."""
    results = run_score(job, **kw)
    if results["knn_bank"]:
        click.echo(results["knn_bank"])
    click.echo(format_score(results))
    click.echo(f"Wrote {job.out_dir}/{', '.join(results['files'])} ({results['seconds']:.1f} s)")
    return results


def print_sweep(job: Job, ks, alphas, **kw) -> list[dict]:
    """Sweep ``job`` over ``ks`` x ``alphas`` in one pass (:func:`iim.score.run.run_sweep`) and print the best."""
    t0 = time.perf_counter()
    rows = run_sweep(job, ks, alphas, **kw)
    click.echo(format_sweep(rows, ks, alphas))
    click.echo(f"Wrote {job.out_dir}/sweep.csv ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    return rows
