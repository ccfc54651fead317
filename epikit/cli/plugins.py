"""``epikit plugins``: list every registered segmenter, classifier and explainer."""

from __future__ import annotations

import json

import typer

from epikit.cli import command


@command("plugins")
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    kind: str = typer.Option("", "--kind", help="Only this kind: segmenter, classifier or explainer."),
) -> None:
    """List registered plugins: kind, name, summary, provider and version."""
    from epikit.interfaces import KINDS
    from epikit.registry import list_entries

    kinds = [kind] if kind else list(KINDS)
    rows = []
    for each in kinds:
        for entry in list_entries(each):
            row = entry.provenance()
            row["summary"] = entry.summary
            rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    headers = ["kind", "name", "summary", "plugin", "distribution", "version"]
    table = [headers] + [[str(row[h]) for h in headers] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    for line in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
