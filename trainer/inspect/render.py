"""Draw samples: a grid of images with their labels, or a table, as ``samples.png`` and ``samples.html``.

Matplotlib with the Agg backend (no display needed). Sizes are fixed so a file's
pixel size says what it holds: each grid cell is ``CELL_INCHES`` square at ``DPI``
(a grid of ``rows × cols`` images is ``cols·CELL_PX × rows·CELL_PX`` pixels).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np

from trainer.inspect.fields import Field, short_text

DPI = 100
CELL_INCHES = 1.5
CELL_PX = int(CELL_INCHES * DPI)
MAX_COLUMNS = 8
ROW_INCHES = 0.3
TABLE_INCHES_PER_COLUMN = 2.2


def grid_shape(count: int, max_columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """(rows, columns) of the image grid for ``count`` images."""
    cols = max(1, min(count, max_columns))
    return max(1, math.ceil(count / cols)), cols


def image_grid_png(images: Sequence[np.ndarray], captions: Sequence[str], path: Path) -> tuple[int, int]:
    """Write the images in a grid with a caption over each; returns (rows, columns)."""
    rows, cols = grid_shape(len(images))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * CELL_INCHES, rows * CELL_INCHES), dpi=DPI, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            image = images[index]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_title(captions[index], fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.88, wspace=0.1, hspace=0.35)
    fig.savefig(path, dpi=DPI, format="png")  # no bbox_inches="tight": the size stays cols × rows cells
    plt.close(fig)
    return rows, cols


def table_png(columns: Sequence[str], rows: Sequence[Sequence[str]], path: Path) -> None:
    """Write the rows as a drawn table (for data that is not images)."""
    width = max(4.0, TABLE_INCHES_PER_COLUMN * len(columns))
    fig, ax = plt.subplots(figsize=(width, ROW_INCHES * (len(rows) + 2)), dpi=DPI)
    ax.axis("off")
    table = ax.table(cellText=[list(r) for r in rows] or [["(no items)"] + [""] * (len(columns) - 1)],
                     colLabels=list(columns), loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)


def png_data_uri(image: np.ndarray) -> str:
    """One image as a ``data:image/png;base64,...`` URI (for the self-contained HTML page)."""
    buffer = io.BytesIO()
    plt.imsave(buffer, image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def samples_html(title: str, fields: Sequence[Field], summary_lines: Sequence[str], path: Path) -> None:
    """Write a self-contained HTML table of the samples (images inline), with the summary above it."""
    count = max((len(f.items) for f in fields), default=0)
    head = "".join(f"<th>{html.escape(f.name)} <small>({html.escape(f.kind)})</small></th>" for f in fields)
    body = []
    for i in range(count):
        cells = "".join(f"<td>{_cell_html(f, i)}</td>" for f in fields)
        body.append(f"<tr><td>{i}</td>{cells}</tr>")
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;font-size:13px}"
        "img{width:64px;height:64px;image-rendering:pixelated}table{border-collapse:collapse}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><ul>{notes}</ul>"
        f"<table><tr><th>#</th>{head}</tr>{''.join(body)}</table></body></html>\n",
        encoding="utf-8",
    )


def table_cells(fields: Sequence[Field]) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of short texts (images as their shape) for a drawn or printed table."""
    count = max((len(f.items) for f in fields), default=0)
    rows = [[_cell_text(f, i) for f in fields] for i in range(count)]
    return [f.name for f in fields], rows


def _cell_text(f: Field, index: int) -> str:
    if index >= len(f.items):
        return ""
    value: Any = f.items[index]
    if f.kind == "image":
        return "image " + "×".join(str(s) for s in value.shape)
    return short_text(value)


def _cell_html(f: Field, index: int) -> str:
    if index >= len(f.items):
        return ""
    if f.kind == "image":
        return f"<img alt='{html.escape(f.name)} {index}' src='{png_data_uri(f.items[index])}'>"
    return html.escape(_cell_text(f, index))
