"""The plots of a session's markdown report, as PNG files.

Figures are drawn on :class:`~matplotlib.figure.Figure` objects with an Agg
canvas of their own, never through pyplot, so plotting needs no display and
touches no global state of the process (a user's backend, open figures).

Rows are ``Run.summary()`` dicts. Runs that differ only in their seed are
averaged per batch size, so every line stays single-valued; where a point has
two seeds or more, an error bar (a band on the learning curves) shows the 95%
Student t interval of that mean. The learning curves draw a run's finer curve
(validation figures between epochs, ``row["curve"]``) as the line
and its epoch records as dots, each panel on a y axis fitted to its own data.
Runs trained for different numbers of epochs (a 2-epoch study beside a
200-epoch one) get a panel each in the per-batch-size plots, with axes of their
own: their accuracies and times are not on one scale. A diverged run
(``test_accuracy`` None) is left out of every plot: its time and its learning
curve stop at the divergence and would pull the averages down. A batch size
that ran out of memory is a cross at the foot of its model's per-batch-size
plots, in the model's colour. Of a learning-rate grid (``--batchprof-lr-grid``), those
plots show each batch size at its chosen lr; the ``lr-grid`` plot shows every lr.
Runs scored by another metric than accuracy (``rmse``, ``f1``, ``perplexity``, the user's)
are drawn by it, titled by its name, in plots of their own: ``Test rmse vs batch size``
(``rmse.png``), their learning curves in its units, a trade-off plot per metric.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from pytest_batchprof.experiment.config import LINE_KEYS, PER_BATCH_LINE_KEYS
from pytest_batchprof.reports.figures import OUT_OF_MEMORY_KEY
from pytest_batchprof.reports.lr_grid import Study, chosen_rows, grid_studies
from pytest_batchprof.reports.stats import finite, mean_interval
from pytest_batchprof.reports.storage import atomic_file
from pytest_batchprof.reports.studies import metric_of

WIDTH, HEIGHT, DPI = 6.4, 4.2, 120
"""Figure size in inches and resolution: 768 x 504 pixels, readable in a markdown page."""

CURVE_ROW_HEIGHT = 2.8
"""Extra height (inches) of every further row of learning-curve panels."""

LOG_TIME_RATIO = 30.0
"""Training times are drawn on a log axis when the slowest is this many times the fastest."""

AXIS_INCHES, DIGIT_INCHES, LABEL_GAP_INCHES = 5.4, 0.08, 0.08
"""Approximate x-axis length, width of a 10 pt digit and the least gap between tick labels."""

MAX_EPOCH_TICKS = 10
"""Up to this many epochs every epoch gets a tick; beyond, matplotlib picks whole numbers."""

LEGEND_COLUMNS = 5
"""At most this many batch sizes side by side in the learning curves' legend."""

FINE_CURVE_NOTE = ("lines: a fixed part of the validation set, between epochs; "
                   "dots: all of it, after each epoch")
"""What the learning curves' lines and dots are, under them, when a run has a fine curve."""

LEGEND_HANDLE_INCHES, LEGEND_CHAR_INCHES = 0.75, 0.075
"""Width of a legend entry's line sample and spacing, and of one character of its text."""

OUT_OF_MEMORY_HEIGHT = 0.04
"""Where a batch size that ran out of memory is crossed: this far up its panel (axes units)."""

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
"""One marker per series, so lines stay apart in greyscale print."""

FIT_CURVE_POINTS = 100
"""Segments of the fitted steps-to-target curve over its batch sizes' range."""

PNG_METADATA = {"Software": None}
"""No matplotlib version in the file: the same rows give the same bytes."""


@dataclass
class Series:
    """One line of plots 1 and 2, one panel of plot 3: a model on a data set, averaged over seeds.

    ``accuracy`` is the test score by batch size: accuracy in percent, or the series'
    ``metric`` as it is (RMSE, F1...); ``curves`` maps a batch size to (epoch, mean
    validation score) pairs in epoch order, ``fine_curves`` to (fractional epoch, mean
    validation score) pairs of the curve between epochs.
    """

    label: str
    epochs: object = None
    accuracy: dict[int, float] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    steps_to_target: dict[int, float] = field(default_factory=dict)
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    errors: dict[str, dict[int, float]] = field(default_factory=dict)
    """Half-widths of the 95% intervals, by figure (``accuracy``, ...) and batch size,
    where two seeds or more were averaged."""
    curve_errors: dict[int, list[float | None]] = field(default_factory=dict)
    """Half-widths along each learning curve (``None`` at an epoch with one seed)."""
    flops: float | None = None
    """Forward FLOPs per sample (the same at every batch size)."""
    params: int | None = None
    latency: dict[int, float] = field(default_factory=dict)
    """Median inference seconds per sample, at the inference batch size of each run."""
    fine_curves: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    fine_errors: dict[int, list[float | None]] = field(default_factory=dict)
    out_of_memory: set[int] = field(default_factory=set)
    """Batch sizes at which the model ran out of memory: a cross at the foot of the
    per-batch-size plots."""
    critical_batch_fit: tuple[float, float] | None = None
    """``(S_min, B_crit)`` fitted to the study's steps to target (its rows'
    ``critical_batch_fit_s_min`` and ``critical_batch_fit``), drawn on the steps plot."""
    metric: str = "accuracy"
    """The metric the series' runs are scored by."""
    higher_is_better: bool = True

    @property
    def score_label(self) -> str:
        """The axis label of a validation or test score: ``accuracy (%)``, ``rmse (lower
        is better)``."""
        if self.metric == "accuracy":
            return "accuracy (%)"
        return f"{self.metric} ({'higher' if self.higher_is_better else 'lower'} is better)"

    def add(self, figure: str, batch_size: int, values: Iterable[object]) -> None:
        """Put the mean of the seeds' ``values`` at ``batch_size``, and its interval."""
        numbers = finite(values)
        if not numbers:
            return
        spread = mean_interval(numbers)
        getattr(self, figure)[batch_size] = spread.mean
        if spread.half_width is not None:
            self.errors.setdefault(figure, {})[batch_size] = spread.half_width


def write_plots(rows: Sequence[Mapping[str, object]], directory: Path, stem: str) -> (
        list[tuple[str, Path]]):
    """Write the report's plots into ``directory`` as ``{stem}-<name>.png``; return (title, path)
    pairs in display order.

    A plot without data is not written; rows without any finished run give ``[]``.
    Each file appears whole or not at all (a temporary file, then ``os.replace``).
    """
    figures = build_figures(rows)
    if not figures:
        return []
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, figure in figures:
        path = directory / f"{stem}-{name}.png"
        save_png(figure, path)
        written.append((title, path))
    return written


def learning_curves_png(rows: Sequence[Mapping[str, object]]) -> bytes | None:
    """The learning curves of ``rows`` (a test's runs), drawn as in the report's
    ``learning-curves`` plot, as PNG bytes; ``None`` when no run has a curve (every one
    diverged, ran out of memory, or recorded no history)."""
    series, note = _plotted(rows)
    figure = _curves_figure(series, f"Learning curves{note}")
    if figure is None:
        return None
    buffer = io.BytesIO()
    _write_png(figure, buffer)
    return buffer.getvalue()


def _plotted(rows: Sequence[Mapping[str, object]]) -> tuple[list[Series], str]:
    """The series the plots draw (of a learning-rate grid, its chosen lrs) and the note a
    title gets when every finished run is on one data set (`` (mnist)``, else empty)."""
    datasets = {str(row.get("dataset")) for row in rows if _finished(row)}
    return (group_series(chosen_rows(rows)),
            f" ({datasets.pop()})" if len(datasets) == 1 else "")


def build_figures(rows: Sequence[Mapping[str, object]]) -> list[tuple[str, str, Figure]]:
    """The report's figures as (file name part, title, figure), in display order.

    Kept apart from :func:`write_plots` so tests can read the plotted data
    instead of pixels.
    """
    series, note = _plotted(rows)
    metrics = sorted(dict.fromkeys(one.metric for one in series),
                     key=lambda metric: metric != "accuracy")  # accuracy first, then as met
    by_metric = {metric: [one for one in series if one.metric == metric] for metric in metrics}
    scores = [(_file_part(metric), f"Test {metric} vs batch size", _score_figure, members)
              for metric, members in by_metric.items()]
    trade_offs = [(f"trade-off{'' if metric == 'accuracy' else '-' + _file_part(metric)}",
                   f"{metric[:1].upper()}{metric[1:]}, FLOPs and latency of the models",
                   _trade_off_figure, members)
                  for metric, members in by_metric.items()]
    figures = []
    for name, title, draw, drawn in (
        *scores,
        ("time", "Training time vs batch size", _time_figure, series),
        ("steps-to-target", f"Steps to target {_one_metric(series)} vs batch size",
         _steps_figure, series),
        ("learning-curves", "Learning curves", _curves_figure, series),
        *trade_offs,
        ("lr-grid", "Validation figure vs learning rate",
         lambda _, title: _lr_grid_figure(grid_studies(rows), title), series),
    ):
        figure = draw(drawn, title + note)
        if figure is not None:
            figures.append((name, title, figure))
    return figures


def _one_metric(series: Sequence[Series]) -> str:
    """The metric of every series, or ``score`` when they have several."""
    metrics = {one.metric for one in series}
    return metrics.pop() if len(metrics) == 1 else "score"


def _file_part(metric: str) -> str:
    """A metric's name as a file name part: ``rmse``, ``meanabsoluteerror``."""
    return "".join(char for char in metric.lower() if char.isalnum() or char == "-") or "metric"


def group_series(rows: Iterable[Mapping[str, object]]) -> list[Series]:
    """Finished runs grouped into series (in order of first appearance), averaged per batch size.

    The label is the model, with the data set when the rows use several, and
    any :data:`LINE_KEYS` setting that differs between rows.
    """
    finished = [row for row in rows if _finished(row)]
    several_datasets = len({row.get("dataset") for row in finished}) > 1
    varying = [name for name in LINE_KEYS if _varies(finished, name)]
    if _varies(finished, "metric"):  # one model scored two ways: two series, named so
        varying.append("metric")
    groups: dict[tuple[object, ...], dict[int, list[Mapping[str, object]]]] = {}
    labels: dict[tuple[object, ...], str] = {}
    for row in finished:
        key = (row["model"], row.get("dataset"), *(repr(row.get(name)) for name in varying))
        if key not in groups:
            details = [str(row.get("dataset"))] if several_datasets else []
            details += [f"{name}={row.get(name)}" for name in varying]
            labels[key] = f"{row['model']} ({', '.join(details)})" if details else str(
                row["model"])
            groups[key] = {}
        groups[key].setdefault(int(row["batch_size"]), []).append(row)

    out_of_memory: dict[tuple[object, ...], set[int]] = {}
    for row in rows:
        if row.get(OUT_OF_MEMORY_KEY):
            key = (row["model"], row.get("dataset"), *(repr(row.get(name)) for name in varying))
            out_of_memory.setdefault(key, set()).add(int(row["batch_size"]))
    result = []
    for key, by_batch in groups.items():
        first = next(iter(by_batch.values()))[0]
        metric, higher_is_better = metric_of(first)
        series = Series(labels[key], epochs=first.get("epochs"),
                        out_of_memory=out_of_memory.get(key, set()), metric=metric,
                        higher_is_better=higher_is_better)
        for batch_size in sorted(by_batch):
            runs = by_batch[batch_size]
            steps = [run.get("target_steps") for run in runs]
            if all(isinstance(value, (int, float)) for value in steps):  # every seed reached it
                series.add("steps_to_target", batch_size, steps)
            series.add("accuracy", batch_size, [_score(run) for run in runs])
            seconds = [run.get("train_seconds") for run in runs]
            if any(isinstance(value, (int, float)) and value > 0 for value in seconds):
                series.add("seconds", batch_size, seconds)
            series.add("latency", batch_size, [run.get("latency_median_s") for run in runs])
            series.flops = series.flops or runs[0].get("flops")
            series.params = series.params or runs[0].get("params")
            curve = _mean_curve((run.get("history") or () for run in runs), metric=metric)
            if curve:
                series.curves[batch_size] = [(epoch, mean) for epoch, mean, _ in curve]
                series.curve_errors[batch_size] = [half for _, _, half in curve]
            fine = _mean_curve((run.get("curve") or () for run in runs), position="samples",
                               metric=metric)
            if fine:
                per_epoch = runs[0].get("samples_per_epoch") or 1
                series.fine_curves[batch_size] = [(samples / per_epoch, mean)
                                                  for samples, mean, _ in fine]
                series.fine_errors[batch_size] = [half for _, _, half in fine]
        series.critical_batch_fit = _critical_batch_fit(
            run for runs in by_batch.values() for run in runs)
        result.append(series)
    return result


def _critical_batch_fit(rows: Iterable[Mapping[str, object]]) -> tuple[float, float] | None:
    """The ``(S_min, B_crit)`` the rows carry (:mod:`pytest_batchprof.reports.critical_batch`
    fitted them, once per study), if they all carry the same one: a series that joins
    runs of several studies (another target, another device) gets no curve."""
    fits = {(row.get("critical_batch_fit_s_min"), row.get("critical_batch_fit"))
            for row in rows}
    if len(fits) != 1:
        return None
    s_min, b_crit = fits.pop()
    numbers = finite((s_min, b_crit))
    return (numbers[0], numbers[1]) if len(numbers) == 2 and min(numbers) > 0 else None


def _varies(rows: Sequence[Mapping[str, object]], name: str) -> bool:
    """Whether ``name`` differs between runs of one model on one data set (of one batch
    size, for :data:`PER_BATCH_LINE_KEYS`): two models that differ in it anyway (an MLP's
    activation against a CNN's none) are two lines already."""
    values: dict[tuple[object, ...], set[str]] = {}
    for row in rows:
        point = (row.get("model"), row.get("dataset"))
        if name in PER_BATCH_LINE_KEYS:
            point = (*point, row.get("batch_size"))
        values.setdefault(point, set()).add(repr(row.get(name)))
    return any(len(seen) > 1 for seen in values.values())


def save_png(figure: Figure, path: Path) -> None:
    """Save ``figure`` to ``path`` atomically: a reader never sees half a file."""
    with atomic_file(path) as handle:
        _write_png(figure, handle)


def _write_png(figure: Figure, handle: BinaryIO) -> None:
    """``figure`` as the report's PNGs are written: its DPI, no timestamp in the file."""
    figure.savefig(handle, format="png", dpi=DPI, metadata=PNG_METADATA)


def _finished(row: Mapping[str, object]) -> bool:
    return _score(row) is not None


def _score(row: Mapping[str, object]) -> float | None:
    """A run's test score as plotted: its accuracy in percent, or its metric as it is;
    ``None`` for a run that was not tested (diverged, out of memory)."""
    accuracy = metric_of(row)[0] == "accuracy"
    value = row.get("test_accuracy" if accuracy else "test_metric")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return 100 * value if accuracy else float(value)


def _mean_curve(histories: Iterable[Iterable[Mapping[str, object]]],
                position: str = "epoch", metric: str = "accuracy") -> (
        list[tuple[int, float, float | None]]):
    """Mean validation score (accuracy in %, or ``metric``'s figure) at each position (an
    epoch record's ``epoch``, a curve point's ``samples``) over the seeds that reached it,
    with the half-width of its 95% interval (``None`` where one seed reached it)."""
    key, scale = ("val_accuracy", 100) if metric == "accuracy" else ("val_metric", 1)
    by_position: dict[int, list[object]] = {}
    for history in histories:
        for record in history:
            by_position.setdefault(int(record[position]), []).append(record.get(key))
    curve = []
    for where in sorted(by_position):
        accuracies = finite(scale * value for value in by_position[where] if value is not None)
        if accuracies:
            spread = mean_interval(accuracies)
            curve.append((where, spread.mean, spread.half_width))
    return curve


def _new_figure(rows: int = 1, columns: int = 1, layout: str = "tight", width: float = WIDTH,
                **subplots: object) -> tuple[Figure, list[Axes]]:
    height = HEIGHT + CURVE_ROW_HEIGHT * (rows - 1)
    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False, **subplots)
    return figure, list(axes.flat)


def _panel_grid(count: int) -> tuple[Figure, list[Axes], int]:
    """A figure of ``count`` panels, two to a row (one alone), its empty cells removed;
    the figure, its panels and the number of columns."""
    columns = 1 if count == 1 else 2
    figure, axes = _new_figure(math.ceil(count / columns), columns, layout="constrained")
    for extra in axes[count:]:
        figure.delaxes(extra)
    return figure, axes, columns


def _style(index: int) -> dict[str, object]:
    """Colour and marker of the ``index``-th series, the same in every plot."""
    return {"color": f"C{index % 10}", "marker": MARKERS[index % len(MARKERS)]}


def _per_batch_figure(
    series: list[Series], values: str, title: str, ylabel: str
) -> tuple[Figure, list[tuple[Axes, list[float], list[tuple[Line2D, Series]]]]] | None:
    """Lines over a log-2 batch-size axis, a panel per training budget (epochs), with
    error bars where seeds were averaged.

    Returns the figure and each panel with the values drawn in it (error bar
    ends included) and its data lines with their series, or None when no series has data.
    """
    drawn = [(index, one) for index, one in enumerate(series) if getattr(one, values)]
    if not drawn:
        return None
    budgets: dict[str, list[tuple[int, Series]]] = {}
    for index, one in drawn:
        budgets.setdefault(repr(one.epochs), []).append((index, one))
    columns = len(budgets)
    figure, panels = _new_figure(1, columns, width=WIDTH * (1 + 0.6 * (columns - 1)))
    result = []
    for panel, members in zip(panels, budgets.values(), strict=True):
        sizes: set[int] = set()
        plotted: list[float] = []
        lines: list[tuple[Line2D, Series]] = []
        for index, one in members:
            points = getattr(one, values)
            x, y = list(points), list(points.values())
            halves = [one.errors.get(values, {}).get(size) for size in x]
            if any(half is not None for half in halves):
                # below the point, a bar stops short of 0 so that a log axis can draw it
                lower = [math.nan if half is None else min(half, 0.9 * mean)
                         for half, mean in zip(halves, y, strict=True)]
                upper = [math.nan if half is None else half for half in halves]
                drawn = panel.errorbar(x, y, yerr=[lower, upper], label=one.label,
                                       linewidth=1.6, markersize=6, capsize=3, elinewidth=1,
                                       **_style(index))
                lines.append((drawn.lines[0], one))
                plotted.extend(mean + sign * bar for mean, low, high in zip(y, lower, upper,
                                                                            strict=True)
                               for sign, bar in ((-1, low), (1, high)) if not math.isnan(bar))
            else:
                (line,) = panel.plot(x, y, label=one.label, linewidth=1.6, markersize=6,
                                     **_style(index))
                lines.append((line, one))
            sizes.update(points)
            plotted.extend(y)
            if one.out_of_memory:
                crosses = sorted(one.out_of_memory)
                panel.plot(crosses, [OUT_OF_MEMORY_HEIGHT] * len(crosses), linestyle="none",
                           marker="x", markersize=9, markeredgewidth=2,
                           color=_style(index)["color"], transform=panel.get_xaxis_transform(),
                           label=f"{one.label}: out of memory")
                sizes.update(crosses)
        _batch_size_axis(panel, sorted(sizes), AXIS_INCHES * (1 + 0.6 * (columns - 1)) / columns)
        panel.set_ylabel(ylabel)
        if columns > 1:
            epochs = members[0][1].epochs
            panel.set_title(f"{epochs} epoch{'' if epochs == 1 else 's'}", fontsize="medium")
        panel.grid(True, which="major", alpha=0.35)
        panel.legend(loc="best", fontsize="small", framealpha=0.85)
        result.append((panel, plotted, lines))
    if columns > 1:
        figure.suptitle(title)
    else:
        panels[0].set_title(title)
    return figure, result


def _score_figure(series: list[Series], title: str) -> Figure | None:
    """The test score against batch size, of series of one metric (accuracy in %)."""
    if not series:
        return None
    drawn = _per_batch_figure(series, "accuracy", title, f"Test {series[0].score_label}")
    if drawn is None:
        return None
    figure, panels = drawn
    if series[0].metric == "accuracy":
        for axes, values, _ in panels:
            _percent_axis(axes, values)
    return figure


def _time_figure(series: list[Series], title: str) -> Figure | None:
    drawn = _per_batch_figure(series, "seconds", title, "Training time (s)")
    if drawn is None:
        return None
    figure, panels = drawn
    for axes, seconds, _ in panels:
        if max(seconds) > LOG_TIME_RATIO * min(seconds):
            axes.set_yscale("log")
            decades = math.log10(max(seconds) / min(seconds))
            # 1-2-5 ticks read better than bare decades, until they crowd the axis.
            axes.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if decades <= 2.5 else (1,)))
            axes.yaxis.set_minor_locator(LogLocator(subs="auto"))
            axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axes.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        else:
            axes.set_ylim(bottom=0)
    return figure


def _steps_figure(series: list[Series], title: str) -> Figure | None:
    """Steps to the target accuracy against batch size, log-log, as Shallue et al. (2018) draw it.

    The dashed line of each series is perfect scaling from its smallest batch:
    doubling the batch halves the steps. Where the points leave it, a bigger
    batch gives diminishing returns; where they flatten, the maximal useful
    batch size is passed. Where the study's critical batch size was fitted, the
    dash-dotted curve is ``S_min (1 + B_crit / B)`` (McCandlish et al. 2018) over the
    batch sizes drawn, and a dotted vertical line marks ``B_crit``.
    """
    drawn = _per_batch_figure(series, "steps_to_target", title, "Steps to target (log scale)")
    if drawn is None:
        return None
    figure, panels = drawn
    for axes, _, lines in panels:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        for line, one in lines:
            sizes, steps = list(line.get_xdata()), list(line.get_ydata())
            if len(sizes) > 1:
                axes.plot(sizes, [steps[0] * sizes[0] / size for size in sizes],
                          linestyle="--", linewidth=1, color=line.get_color(), alpha=0.6)
            if one.critical_batch_fit is not None and len(sizes) > 1:
                _fitted_steps_curve(axes, one.critical_batch_fit, sizes, line.get_color())
        axes.plot([], [], linestyle="--", color="grey", label="perfect scaling")
        axes.legend(loc="best", fontsize="small", framealpha=0.85)
    return figure


def _fitted_steps_curve(axes: Axes, fit: tuple[float, float], sizes: Sequence[float],
                        colour: object) -> None:
    """``S_min (1 + B_crit / B)`` as a smooth line over ``sizes``' range, and a vertical
    dotted line at ``B_crit``; the legend names ``B_crit``."""
    s_min, b_crit = fit
    low, high = math.log(min(sizes)), math.log(max(sizes))
    x = [math.exp(low + (high - low) * step / FIT_CURVE_POINTS)
         for step in range(FIT_CURVE_POINTS + 1)]
    axes.plot(x, [s_min * (1 + b_crit / size) for size in x], linestyle="-.", linewidth=1.3,
              color=colour, label=f"fit: B_crit = {b_crit:,.0f}")
    axes.axvline(b_crit, linestyle=":", linewidth=1.2, color=colour, alpha=0.8)


def _curves_figure(series: list[Series], title: str) -> Figure | None:
    """One panel per series, one line per batch size, coloured by batch size.

    A batch size has the same colour in every panel, so one legend below the
    panels serves them all and covers no curve. Each panel's y axis fits its
    own data: a 2-epoch MNIST study near 97% and a 200-epoch one near 40% are
    both readable. Where a run recorded a curve between epochs, that curve is
    the line and the epoch records (on the whole validation set) are dots on it.
    """
    panels = [one for one in series if one.curves or one.fine_curves]
    if not panels:
        return None
    figure, axes, columns = _panel_grid(len(panels))
    sizes = sorted({size for one in panels for size in (*one.curves, *one.fine_curves)})
    colormap = colormaps["viridis"]
    handles = {}
    fine_drawn = False
    for index, (one, panel) in enumerate(zip(panels, axes, strict=False)):
        drawn: list[float] = []
        positions: list[float] = []
        for size in sorted({*one.curves, *one.fine_curves}):
            # viridis without its last, pale yellow fifth: small batches dark, large ones light.
            colour = colormap(0.85 * sizes.index(size) / max(len(sizes) - 1, 1))
            epochs = one.curves.get(size, [])
            fine = one.fine_curves.get(size)
            if fine:
                fine_drawn = True
                line = _curve_line(panel, fine, one.fine_errors.get(size, []), colour,
                                   marker=None, label=f"batch {size}")
                panel.plot([x for x, _ in epochs], [y for _, y in epochs], linestyle="none",
                           marker="o", markersize=3.5, color=colour)
                points = [*fine, *epochs]
            else:
                line = _curve_line(panel, epochs, one.curve_errors.get(size, []), colour,
                                   marker="o", label=f"batch {size}")
                points = epochs
            handles.setdefault(size, line)
            positions += [x for x, _ in points]
            drawn += [y for _, y in points]
        # Half a panel is too narrow for "400-1024-1024-10 (fashion-mnist, lr=0.001)" on one line.
        panel.set_title(one.label.replace(" (", "\n(", 1), fontsize="medium")
        _epoch_axis(panel, positions)
        if one.metric == "accuracy":
            _percent_axis(panel, drawn)
        panel.grid(True, alpha=0.35)
        if index % columns == 0 or len({other.metric for other in panels}) > 1:
            panel.set_ylabel(f"Validation {one.score_label}")
        if index >= len(panels) - columns:
            panel.set_xlabel("Epoch")
    figure.suptitle(title)
    labels = [f"batch {size}" for size in sizes]
    note = FINE_CURVE_NOTE if fine_drawn else None
    figure.legend([handles[size] for size in sizes], labels, loc="outside lower center",
                  ncols=_legend_columns(labels, WIDTH), fontsize="small", frameon=False,
                  title=note, title_fontsize="small")
    return figure


def _trade_off_figure(series: list[Series], title: str) -> Figure | None:
    """Test accuracy against forward FLOPs per sample (left) and inference latency per
    sample (right), both on log axes: a marker per model and batch size, a line per
    model, its parameter count in the legend. Drawn when two models or more have them."""
    drawn = [(index, one) for index, one in enumerate(series)
             if one.accuracy and one.flops and one.latency]
    if len({one.label for _, one in drawn}) < 2:
        return None
    score = drawn[0][1]  # every series of the figure has its metric
    figure, (by_flops, by_latency) = _new_figure(1, 2, width=WIDTH * 1.6, sharey=True)
    accuracies: list[float] = []
    for index, one in drawn:
        sizes = sorted(set(one.accuracy) & set(one.latency))
        accuracy = [one.accuracy[size] for size in sizes]
        accuracies.extend(accuracy)
        params = f", {one.params:,} params" if one.params else ""
        by_flops.plot([one.flops] * len(sizes), accuracy, linestyle="none", markersize=6,
                      label=f"{one.label}{params}", **_style(index))
        by_latency.plot([one.latency[size] * 1e6 for size in sizes], accuracy, linewidth=1.2,
                        markersize=6, **_style(index))
        for size, value, latency in zip(sizes, accuracy, (one.latency[s] for s in sizes),
                                        strict=True):
            by_latency.annotate(f"{size}", (latency * 1e6, value), textcoords="offset points",
                                xytext=(4, 3), fontsize="x-small")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for panel in (by_flops, by_latency):
        panel.set_xscale("log")
        panel.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        panel.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    by_flops.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _millions(value)))
    by_latency.xaxis.set_major_formatter(plain)
    by_flops.set_xlabel("Forward FLOPs per sample")
    by_latency.set_xlabel("Inference latency per sample (µs), by batch size")
    by_flops.set_ylabel(f"Test {score.score_label}")
    if score.metric == "accuracy":
        _percent_axis(by_flops, accuracies)
    for panel in (by_flops, by_latency):
        panel.grid(True, which="major", alpha=0.35)
    by_flops.legend(loc="best", fontsize="small", framealpha=0.85)
    figure.suptitle(title)
    return figure


def _lr_grid_figure(studies: list[Study], title: str) -> Figure | None:
    """The validation figure the lr choice read against the learning rate (log axis), a
    panel per tuned study, a line per batch size coloured as in the learning curves, a
    star on each batch size's chosen lr. Steps to target are on a log axis too, like the
    steps plot; a cell without a figure (not reached, diverged) has no point."""
    panels = [study for study in studies
              if any(study.points(size) for size in study.batch_sizes)]
    if not panels:
        return None
    figure, axes, columns = _panel_grid(len(panels))
    sizes = sorted({size for study in panels for size in study.batch_sizes})
    colormap = colormaps["viridis"]
    handles: dict[int, Line2D] = {}
    for index, (study, panel) in enumerate(zip(panels, axes, strict=False)):
        drawn: list[float] = []
        for size in study.batch_sizes:
            points = study.points(size)
            if not points:
                continue
            colour = colormap(0.85 * sizes.index(size) / max(len(sizes) - 1, 1))
            scale = 100 if not study.by_steps and study.metric == "accuracy" else 1
            lrs, values = [lr for lr, _ in points], [scale * value for _, value in points]
            (line,) = panel.plot(lrs, values, color=colour, marker="o", markersize=4,
                                 linewidth=1.5, label=f"batch {size}")
            handles.setdefault(size, line)
            drawn += values
            chosen = study.chosen(size)
            value = study.cell(chosen, size).value if chosen is not None else None
            if value is not None:
                panel.plot([chosen], [scale * value], linestyle="none", marker="*",
                           markersize=15, color=colour, markeredgecolor="black",
                           markeredgewidth=0.8, zorder=3, label=f"batch {size}: chosen lr")
        panel.set_xscale("log")
        panel.set_xticks(study.lrs, [f"{lr:g}" for lr in study.lrs])
        panel.xaxis.set_minor_locator(NullLocator())
        panel.set_xlim(study.lrs[0] / 1.6, study.lrs[-1] * 1.6)
        if study.by_steps:
            panel.set_yscale("log")
            panel.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            if study.metric == "accuracy":
                target = "target" if study.target is None else f"{100 * study.target:g}%"
                ylabel = f"Steps to {target} val acc (log scale)"
            else:
                ylabel = f"{study.figure_words[:1].upper()}{study.figure_words[1:]} (log scale)"
        elif study.metric == "accuracy":
            _percent_axis(panel, drawn)
            ylabel = "Validation accuracy (%)"
        else:
            ylabel = f"Validation {study.metric}"
        panel.set_ylabel(ylabel)
        if index >= len(panels) - columns:
            panel.set_xlabel("Learning rate (log scale)")
        panel.set_title(study.title.replace(", ", "\n", 1) if columns > 1 else study.title,
                        fontsize="medium")
        panel.grid(True, which="major", alpha=0.35)
    figure.suptitle(title)
    star = Line2D([], [], linestyle="none", marker="*", markersize=12, color="grey",
                  markeredgecolor="black", markeredgewidth=0.8)
    labels = [*(f"batch {size}" for size in sizes if size in handles),
              "chosen lr (on the validation split)"]
    figure.legend([*(handles[size] for size in sizes if size in handles), star], labels,
                  loc="outside lower center", ncols=_legend_columns(labels, WIDTH),
                  fontsize="small", frameon=False)
    return figure


def _millions(value: float) -> str:
    """``500k``, ``2M``: a FLOP count in a tick label."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value >= 1e3 else f"{value:g}"


def _curve_line(panel: Axes, points: list[tuple[float, float]], halves: list[float | None],
                colour: object, marker: str | None, label: str) -> Line2D:
    """A learning curve, with the seeds' 95% band where it has one; the line drawn."""
    x, means = [x for x, _ in points], [y for _, y in points]
    (line,) = panel.plot(x, means, color=colour, marker=marker, markersize=3.5, linewidth=1.5,
                         label=label)
    if any(half is not None for half in halves):
        panel.fill_between(
            x, [mean - (half or 0) for mean, half in zip(means, halves, strict=True)],
            [mean + (half or 0) for mean, half in zip(means, halves, strict=True)],
            color=colour, alpha=0.18, linewidth=0)
    return line


def _legend_columns(labels: Sequence[str], width: float) -> int:
    """Columns of a figure legend as wide as the figure allows, in balanced rows (7 as 4 + 3).

    An entry is its handle plus its text in the small font, about
    :data:`LEGEND_CHAR_INCHES` a character; six ``batch 10000`` entries do not fit
    a 6.4-inch figure.
    """
    entry = LEGEND_HANDLE_INCHES + LEGEND_CHAR_INCHES * max(len(label) for label in labels)
    fitting = max(1, min(LEGEND_COLUMNS, int(width // entry)))
    rows = math.ceil(len(labels) / fitting)
    return math.ceil(len(labels) / rows)


def _percent_axis(axes: Axes, values: list[float]) -> None:
    """Keep an accuracy axis near its data and below 100 %.

    Left alone, matplotlib pads a lone point by 5 % of its value (92-102 % around 97 %).
    """
    low, high = min(values), max(values)
    if high - low < 1:
        middle = (low + high) / 2
        axes.set_ylim(middle - 1, middle + 1)
    bottom, top = axes.get_ylim()
    if top > 100 >= high:
        axes.set_ylim(top=100 + 0.03 * (100 - bottom))


def _epoch_axis(axes: Axes, epochs: list[float]) -> None:
    """Ticks at whole epochs only; a lone epoch gets room on both sides instead of a
    zoomed-in axis of fractional epochs. A curve that starts within the first epoch
    gets an axis from 0."""
    last = math.ceil(max(epochs))
    first = 0 if min(epochs) < 1 else math.floor(min(epochs))
    if last - first <= MAX_EPOCH_TICKS:
        axes.set_xticks(range(first, last + 1))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.xaxis.set_minor_locator(NullLocator())
    if first == last:
        axes.set_xlim(last - 1, last + 1)
    elif first == 0:
        axes.set_xlim(0, max(epochs) + 0.03 * max(epochs))


def _batch_size_axis(axes: Axes, sizes: list[int], axis_inches: float = AXIS_INCHES) -> None:
    """Log-2 x axis with a tick at every batch size, labelled as a plain integer.

    A label that would run into another is left out (its tick stays); powers
    of two are labelled first, so 96 gives way to 64 and 128 rather than the reverse.
    """
    axes.set_xscale("log", base=2)
    low, high = math.log2(sizes[0]) - 0.5, math.log2(sizes[-1]) + 0.5
    axes.set_xlim(2 ** low, 2 ** high)
    inches_per_doubling = axis_inches / (high - low)
    labelled: dict[int, tuple[float, float]] = {}
    for size in sorted(sizes, key=lambda size: size & (size - 1) != 0):
        centre = math.log2(size) * inches_per_doubling
        half_width = DIGIT_INCHES * len(str(size)) / 2
        span = (centre - half_width - LABEL_GAP_INCHES, centre + half_width + LABEL_GAP_INCHES)
        if all(span[1] <= left or span[0] >= right for left, right in labelled.values()):
            labelled[size] = span
    axes.set_xticks(sizes, [str(size) if size in labelled else "" for size in sizes])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("Batch size (samples per step, log scale)")
