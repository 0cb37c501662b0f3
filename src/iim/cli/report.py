"""``iim report``: mean and std over several scored runs, side by side per method and shots."""
from __future__ import annotations

from pathlib import Path

import click

from .. import metrics as M
from ..atomic import check_writable
from ..registry import EVALUATORS, METHODS, ZERO_SHOT, label
from ..score import report
from .options import out_option


class MetricList(click.ParamType):
    """``"fpr95,auroc"`` -> a tuple of names from :data:`iim.metrics.METRICS`."""
    name = "list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        names = tuple(c.strip() for c in str(value).split(",") if c.strip())
        bad = [c for c in names if c not in M.METRICS]
        if not names or bad:
            self.fail(f"{', '.join(map(repr, bad)) or 'no metric'} given; choose from {', '.join(M.METRICS)}",
                      param, ctx)
        return names


def _reported() -> str:
    """Which evaluators each method's rows show (:mod:`iim.registry`; the mined-negative ones only when scored
    with --negatives)."""
    return "; ".join(f"{m.label}: {', '.join(label(e) for e in m.evaluators if e in EVALUATORS)}"
                     for m in (*METHODS.values(), ZERO_SHOT))


REPORT_HELP = f"""Mean and std over several scored runs (e.g. seeds 1, 2, 3), as the paper reports (SPEC §5).

    Runs of several methods or shots (and zero-shot results) are put side by side: one row group per
    method and shots, each averaged over its seeds, with the evaluators its paper reports ({_reported()};
    scored with --negatives, also those with mined negatives).

    \b
    iim report runs/in1k-shots16-seed{1,2,3}-iim --out results/in1k-shots16      # the shell lists the 3 seeds
    iim report results/zeroshot runs/in1k-shots4-seed*-* runs/in1k-shots16-seed*-* --out results/table1
    """


@click.command("report", help=REPORT_HELP)
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@out_option("Also write summary.json and summary.md (mean ± std table) into this folder.")
@click.option("--metrics", "columns", default="fpr95,auroc", show_default=True, type=MetricList(),
              help=f"Columns of the printed tables: {', '.join(M.METRICS)}.")
@click.option("--every-evaluator", is_flag=True,
              help="Side by side: every evaluator of every method, not only those its paper reports.")
@click.option("--allow-incomplete", is_flag=True,
              help="Also average runs scored before their last epoch (marked in the tables and summary).")
def report_cmd(runs, out, columns, every_evaluator, allow_incomplete):
    from ..score.summary import group_results, load_results, markdown_table, reported, reported_line, summarise

    results = [load_results(r) for r in runs]
    if out:
        check_writable(out)
    groups = group_results(results)
    cols = columns
    if len(groups) > 1:
        return _report_side_by_side(groups, out, cols, every_evaluator, allow_incomplete)
    summary = summarise(results, allow_incomplete=allow_incomplete)
    for u in summary["incomplete"]:
        click.echo(f"Warning: {u['run']} is unfinished (epoch {u['epoch']} of {u['epochs']}); averaged "
                   f"because of --allow-incomplete", err=True)
    seeds = ", ".join(str(s) for s in summary["seeds"])
    st = summary["settings"]
    unfinished = f" ({len(summary['incomplete'])} unfinished)" if summary["incomplete"] else ""
    click.echo(f"Mean over {len(runs)} runs{unfinished} (seeds {seeds}); k={st['k']} alpha={st['alpha']} "
               f"T={st['T']}; percent")
    click.echo(report.format_table(summary["mean"], columns=cols))
    for note in summary["notes"]:
        click.echo(f"Note: {note}")
    peers = reported(results)
    for row in peers:      # kept apart: not measured here
        click.echo(f"{reported_line(row)} (average FPR95 / AUROC, as its paper reports; not measured here)")
    click.echo(f"\nStandard deviation over the {len(runs)} runs")
    click.echo(report.format_table(summary["std"], columns=cols))
    acc = summary["id_accuracy"]
    click.echo(f"\nID accuracy {acc['mean']:.2f} ± {acc['std']:.2f}%" if acc["values"] else "\nID accuracy n/a")
    diags = summary.get("diagnostics") or {}
    if any(diags.values()):
        from ..train.diagnostics import format_diagnostics
        click.echo("\nTraining diagnostics (last epoch, ID support views only)")
        for run, d in diags.items():
            click.echo(f"  {run}: " + (format_diagnostics(d) + ("  COLLAPSED" if d.get("collapsed") else "")
                                        if d else "not recorded"))
    if out:
        report.write_json(Path(out) / "summary.json", summary)
        report.write_text(Path(out) / "summary.md", markdown_table(summary, reported_rows=peers) + "\n")
        click.echo(f"Wrote {Path(out) / 'summary.json'}, summary.md")


def _report_side_by_side(groups, out, cols, every_evaluator, allow_incomplete=False):
    from ..score.summary import markdown_table, side_by_side

    table = side_by_side(groups, every_evaluator=every_evaluator, allow_incomplete=allow_incomplete)
    click.echo(f"{len(groups)} groups side by side, each the mean over its runs; percent")
    for g in table["groups"]:
        st = g["settings"]
        unfinished = f" ({len(g['incomplete'])} unfinished)" if g["incomplete"] else ""
        click.echo(f"  {g['label']}: {len(g['runs'])} run(s){unfinished}, seeds "
                   f"{', '.join(str(s) for s in g['seeds'])}; k={st['k']} alpha={st['alpha']} T={st['T']}")
        for u in g["incomplete"]:
            click.echo(f"Warning: {u['run']} is unfinished (epoch {u['epoch']} of {u['epochs']}); averaged "
                       f"because of --allow-incomplete", err=True)
    kw = dict(methods=table["rows"], columns=cols, labels=table["labels"])
    click.echo(report.format_table(table["mean"], **kw))
    for note in table["notes"]:
        click.echo(f"Note: {note}")
    click.echo("\nStandard deviation over each group's runs")
    click.echo(report.format_table(table["std"], **kw))
    if out:
        report.write_json(Path(out) / "summary.json", table)
        report.write_text(Path(out) / "summary.md",
                          markdown_table(table, methods=table["rows"], labels=table["labels"]) + "\n")
        click.echo(f"Wrote {Path(out) / 'summary.json'}, summary.md")
    return table
