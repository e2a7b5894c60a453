"""``inspect data``: sample a split of the config's DataModule, then plot it, summarise it, and log it.

Builds the DataModule exactly as a fit would (``prepare_data`` + ``setup``),
draws ``n`` items from the split's loader and shows them as fits the data (see
``fields.py``): images in a grid with their labels, anything else as a table.
Label counts cover the whole split (up to ``max_count_items`` items), so a
skewed class balance shows before a long run does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import ConfigError
from trainer.inspect.fields import Field, batch_length, classify, fields_of, label_field, named_fields
from trainer.inspect.tables import samples_table
from trainer.inspect.wandb_log import log_to_wandb
from trainer.job import LoadedJob, guarded, load_job

SPLITS = ("train", "val", "test", "predict")
STAGE_OF = {"train": "fit", "val": "fit", "test": "test", "predict": "predict"}
MAX_COUNT_ITEMS = 200_000


@dataclass
class DataReport:
    """What ``inspect data`` found (its ``--json`` is ``as_dict()``)."""

    split: str
    n: int  # items drawn
    num_items: dict[str, int | None]  # per split the DataModule defines; None: an iterable without a length
    batch_shapes: dict[str, list[int] | None]
    dtypes: dict[str, str]
    kinds: dict[str, str]
    label_counts: dict[str, int] | None
    label_counts_items: int  # how many items the label counts cover
    shown_as: str  # "images" or "table"
    files: list[str] = field(default_factory=list)
    wandb_run: str | None = None  # the W&B run directory the table went to

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (``--json``)."""
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """The summary as short lines (printed, and put above the HTML table)."""
        lines = ["items per split: " + ", ".join(f"{k} {'?' if v is None else v}" for k, v in self.num_items.items())]
        for name, shape in self.batch_shapes.items():
            lines.append(f"{name}: batch shape {shape}, dtype {self.dtypes[name]}, shown as {self.kinds[name]}")
        if self.label_counts is not None:
            counts = ", ".join(f"{k}: {v}" for k, v in self.label_counts.items())
            lines.append(f"label counts over {self.label_counts_items} {self.split} items: {counts}")
        else:
            lines.append("no class labels found in the batches")
        return lines


def inspect_data(config: str, overrides: Sequence[str] = (), *, split: str = "train", n: int = 16,
                 out: str | Path = "inspect", log_wandb: bool = True,
                 max_count_items: int = MAX_COUNT_ITEMS) -> DataReport:
    """Sample ``n`` items of ``split``, write ``out/samples.png`` and ``out/samples.html``, and report.

    When the config has W&B on (and ``log_wandb``), the samples also go to a
    ``wandb.Table`` in a run of the job's project (job type ``inspect-data``).
    """
    from trainer.inspect.render import image_grid_png, samples_html, table_cells, table_png  # matplotlib: slow

    loaded = load_job(config, overrides)
    datamodule = loaded.build_data()
    loader = split_loader(loaded, datamodule, split)
    image_shape = getattr(datamodule, "image_shape", None)
    batches, label_counts, counted = _sample_and_count(loader, n, image_shape, max_count_items, config, split)
    fields = fields_of(batches, n, image_shape)
    drawn = max((len(f.items) for f in fields), default=0)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, page = out_dir / "samples.png", out_dir / "samples.html"
    image = next((f for f in fields if f.kind == "image"), None)
    if image is not None:
        image_grid_png(image.items, captions(fields, drawn), png)
    else:
        columns, rows = table_cells(fields)
        table_png(columns, rows, png)
    report = DataReport(
        split=split, n=drawn, num_items=split_sizes(loaded, datamodule, split),
        batch_shapes={f.name: f.batch_shape for f in fields}, dtypes={f.name: f.dtype for f in fields},
        kinds={f.name: f.kind for f in fields}, label_counts=label_counts, label_counts_items=counted,
        shown_as="images" if image is not None else "table", files=[str(png), str(page)],
    )
    samples_html(f"{loaded.cfg.name}: {drawn} {split} samples", fields, report.summary_lines(), page)
    if log_wandb:
        report.wandb_run = log_samples_to_wandb(loaded, fields, out_dir)
    return report


def captions(fields: Sequence[Field], count: int) -> list[str]:
    """The caption over each image: its label, else its other short fields, else its index."""
    labels = label_field(fields)
    if labels is not None:
        return [f"{labels.name} {v}" for v in labels.items[:count]]
    return [f"#{i}" for i in range(count)]


def split_loader(loaded: LoadedJob, datamodule: Any, split: str) -> Any:
    """``prepare_data``, ``setup`` for the split's stage, and the split's DataLoader."""
    if split not in SPLITS:
        raise ConfigError(loaded.source, "data", f"no split {split!r}: choose one of {', '.join(SPLITS)}")
    if not defines_loader(datamodule, split):
        raise ConfigError(loaded.source, "data.class_path",
                          f"{type(datamodule).__name__} defines no {split}_dataloader()")
    guarded(loaded.source, "data", "prepare_data()", datamodule.prepare_data)
    guarded(loaded.source, "data", f"setup({STAGE_OF[split]!r})", lambda: datamodule.setup(STAGE_OF[split]))
    return guarded(loaded.source, "data", f"{split}_dataloader()", getattr(datamodule, f"{split}_dataloader"))


def first_batch(loaded: LoadedJob, split: str = "train") -> Any:
    """One real batch of the split (for ``inspect model``)."""
    datamodule = loaded.build_data()
    loader = split_loader(loaded, datamodule, split)
    iterator = guarded(loaded.source, "data", f"iterating {split}_dataloader()", lambda: iter(loader))
    end = object()
    batch = guarded(loaded.source, "data", f"the first {split} batch", lambda: next(iterator, end))
    if batch is end:
        raise ConfigError(loaded.source, "data", f"the {split} loader yields no batch")
    return batch


def defines_loader(datamodule: Any, split: str) -> bool:
    """Whether the DataModule overrides ``<split>_dataloader`` (Lightning's default raises)."""
    from pytorch_lightning import LightningDataModule  # Lightning: once load_job applied the job's env

    name = f"{split}_dataloader"
    return getattr(type(datamodule), name, None) is not getattr(LightningDataModule, name)


def split_sizes(loaded: LoadedJob, datamodule: Any, split: str) -> dict[str, int | None]:
    """Items per split, for the splits set up by the stages already run (``fit``, and the chosen split's)."""
    sizes: dict[str, int | None] = {}
    stages = {"fit", STAGE_OF[split]}
    for name in SPLITS:
        if STAGE_OF[name] not in stages or not defines_loader(datamodule, name):
            continue
        if STAGE_OF[name] != STAGE_OF[split]:
            stage = STAGE_OF[name]
            guarded(loaded.source, "data", f"setup({stage!r})", lambda: datamodule.setup(stage))  # noqa: B023
        try:
            loader = getattr(datamodule, f"{name}_dataloader")()
            sizes[name] = len(loader.dataset)
        except Exception:  # an iterable dataset has no length; a split may need more setup: not worth failing
            sizes[name] = None
    return sizes


def _sample_and_count(loader: Any, n: int, image_shape: Any, limit: int, source: str, split: str
                      ) -> tuple[list[Any], dict[str, int] | None, int]:
    """The first batches holding ``n`` items, and the label counts over the split (up to ``limit`` items)."""
    batches: list[Any] = []
    drawn = 0
    counts: Counter[int] = Counter()
    counted = 0
    label_name: str | None = None
    iterator = guarded(source, "data", f"iterating {split}_dataloader()", lambda: iter(loader))
    end = object()
    for index in range(10**9):
        batch = guarded(source, "data", f"{split} batch {index}", lambda: next(iterator, end))
        if batch is end:
            break
        pairs = named_fields(batch)
        if index == 0:
            label_name = next((name for i, (name, value) in enumerate(pairs)
                               if classify(name, value, i, image_shape) == "label"), None)
        if drawn < n:
            batches.append(batch)
            drawn += batch_length(pairs[0][1]) if pairs else 0
        if label_name is None:
            if drawn >= n:
                break
            continue
        labels = dict(pairs)[label_name]
        counts.update(int(v) for v in labels.reshape(-1).tolist())
        counted += int(labels.shape[0])
        if counted >= limit and drawn >= n:
            break
    if label_name is None:
        return batches, None, 0
    return batches, {str(k): counts[k] for k in sorted(counts)}, counted


def log_samples_to_wandb(loaded: LoadedJob, fields: Sequence[Field], out_dir: Path) -> str | None:
    """Log the samples as a ``wandb.Table`` (``samples``) to a run of the job's project; None when W&B is off."""
    return log_to_wandb(loaded, out_dir, "inspect-data", lambda run: run.log({"samples": samples_table(fields)}))
