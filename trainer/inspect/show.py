"""The terminal output of the inspection commands (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def human(count: float) -> str:
    """A count as Lightning's summary writes it: 1.2 K, 3.4 M, 5.6 G."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)}"


def print_model(console: Console, report: Any) -> None:
    """The layer table (as Lightning's ModelSummary, plus output shapes and FLOPs) and the totals."""
    table = Table(title=report.model_class, title_justify="left")
    for name, justify in (("", "right"), ("Name", "left"), ("Type", "left"), ("Params", "right"),
                          ("Trainable", "right"), ("Out sizes", "left"), ("FLOPs", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i, row in enumerate(report.layers):
        table.add_row(str(i), row.name, row.type, human(row.params), human(row.trainable),
                      "?" if row.output_shape is None else str(row.output_shape), human(row.flops))
    console.print(table)
    console.print(f"{human(report.trainable_params)} trainable params ({report.trainable_params:,})")
    console.print(f"{human(report.total_params - report.trainable_params)} non-trainable params")
    console.print(f"{human(report.total_params)} total params ({report.total_params:,})")
    console.print(f"input {report.input_shape} (from {report.input_source}) -> output {report.output_shape}")
    what = "one forward" if report.measured == "forward" else "one training_step (the module has no forward)"
    console.print(f"{human(report.flops)}FLOPs for {what} of a batch of {report.batch_size} "
                  f"({report.flops:,}; torch.utils.flop_counter, on {report.device})")
    if report.onnx:
        console.print(f"ONNX: {report.onnx}" + (f" (saved in W&B run {report.wandb_run})" if report.wandb_run else ""),
                      markup=False)


def print_data(console: Console, report: Any) -> None:
    """The data summary lines and the files written."""
    console.print(f"[bold]{report.n} {report.split} samples[/], shown as {report.shown_as}")
    for line in report.summary_lines():
        console.print("  " + line, markup=False)
    for path in report.files:
        console.print(f"wrote {path}", markup=False)
    if report.wandb_run:
        console.print(f"W&B table 'samples' logged to {report.wandb_run}", markup=False)


def print_lr(console: Console, report: Any) -> None:
    """Every rule's rate (the default marked), the warnings, --verify's table, and the override to use."""
    descent = report.descent
    where = (f"the loss falls from {descent['from_lr']:.3g} to its lowest at {descent['to_lr']:.3g}"
             if descent else "no descent region")
    console.print(f"learning-rate finder: {report.points} points, seed {report.seed}; {where}", markup=False)
    table = Table(title_justify="left", box=None, pad_edge=False)
    for name, justify in (("", "left"), ("rule", "left"), ("rate", "right"), ("", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in report.suggestions:
        note = s["description"]
        if s["before_descent"]:
            note += " [yellow](before the loss falls)[/]"
        table.add_row("[bold]*[/]" if s["default"] else "", s["rule"], f"{s['lr']:.3g}", note)
    if report.config_lr is not None:
        table.add_row("", "config", f"{report.config_lr:.3g}", "the config's rate")
    console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if report.suggested_lr is not None:
        console.print(f"suggested learning rate: [bold]{report.suggested_lr:.3g}[/] ({report.default_rule}, "
                      "the middle of valley, steepest_descent and minimum_div_10)")
    else:
        console.print(f"[yellow]no suggestion:[/] {report.reason}", highlight=False)
    if report.verify is not None:
        verify = report.verify
        console.print(f"--verify: {verify.steps} steps at each rate from the same start, then {verify.monitor} "
                      f"({'lower' if verify.mode == 'min' else 'higher'} is better)", markup=False)
        runs = Table()
        for name, justify in (("rate", "right"), ("suggested by", "left"), (verify.monitor, "right"), ("", "left")):
            runs.add_column(name, justify=justify)  # type: ignore[arg-type]
        for run in verify.runs:
            value = "not finite" if run.value is None else f"{run.value:.4g}"
            runs.add_row(f"{run.lr:.3g}", ", ".join(run.labels), value, "[bold]best[/]" if run.winner else "")
        console.print(runs)
    if report.override is not None:
        console.print(f"use it with: {report.override}", markup=False)
    console.print(f"wrote {report.plot}", markup=False)
