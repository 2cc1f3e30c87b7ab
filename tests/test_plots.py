"""The report's plots: files written, and the data the figures actually draw."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.figure import Figure

from pytest_batchprof.reports import plots
from pytest_batchprof.reports.plots import build_figures, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL, DEEP = "784-1024-10", "400-1024-1024-10"
TITLES = ["Test accuracy vs batch size", "Training time vs batch size", "Learning curves"]

# (model, batch size) -> test accuracy and training seconds of seed 0; seed 1 adds the offsets.
RESULTS = {
    (SMALL, 1): (0.935, 400.0), (SMALL, 16): (0.968, 38.0), (SMALL, 64): (0.972, 12.0),
    (DEEP, 1): (0.942, 380.0), (DEEP, 16): (0.962, 45.0), (DEEP, 64): (0.970, 7.0),
}
SEED_OFFSET = (0.004, 10.0)


def row(model: str, batch_size: int, seed: int, accuracy: float | None, seconds: float,
        curve: tuple[float, ...] = (), dataset: str = "mnist", **config: object) -> dict:
    return {"model": model, "dataset": dataset, "batch_size": batch_size, "seed": seed,
            "test_accuracy": accuracy, "train_seconds": seconds,
            "history": [{"epoch": epoch, "val_accuracy": value}
                        for epoch, value in enumerate(curve, start=1)],
            **config}


def finished_row(model: str, batch_size: int, seed: int) -> dict:
    accuracy, seconds = RESULTS[model, batch_size]
    accuracy += seed * SEED_OFFSET[0]
    seconds += seed * SEED_OFFSET[1]
    return row(model, batch_size, seed, accuracy, seconds, (accuracy - 0.01, accuracy))


def mean_accuracy(model: str, batch_size: int) -> float:
    return 100 * (RESULTS[model, batch_size][0] + SEED_OFFSET[0] / 2)


@pytest.fixture
def rows() -> list[dict]:
    """Two models x three batch sizes x two seeds, and a run that diverged after one epoch."""
    rows = [finished_row(model, batch_size, seed)
            for seed in (0, 1) for model, batch_size in RESULTS]
    rows.insert(3, row(SMALL, 16, 2, None, 0.5, (0.10,), diverged="training loss became nan"))
    return rows


@pytest.fixture
def figures(rows: list[dict]) -> dict[str, Figure]:
    built = build_figures(rows)
    assert [title for _, title, _ in built] == TITLES
    return {name: figure for name, _, figure in built}


def line_data(axes) -> dict[str, tuple[list[float], list[float]]]:
    """The labelled data lines, drawn plainly or as the line of an error bar."""
    lines = {line.get_label(): line for line in axes.get_lines()
             if not line.get_label().startswith("_")}
    lines.update({container.get_label(): container.lines[0] for container in axes.containers})
    return {label: (list(line.get_xdata()), list(line.get_ydata()))
            for label, line in lines.items()}


def error_bars(axes) -> dict[str, list[tuple[float, float]]]:
    """Each error-bar series' (bottom, top) per point, as drawn (NaN: no bar)."""
    bars = {}
    for container in axes.containers:
        (segments,) = container.lines[2]
        bars[container.get_label()] = [(bottom[1], top[1])
                                       for bottom, top in segments.get_segments()]
    return bars


def test_write_plots_writes_pngs_in_display_order(rows: list[dict], tmp_path: Path):
    written = write_plots(rows, tmp_path / "report", "session")

    assert [title for title, _ in written] == TITLES
    assert [path.name for _, path in written] == [
        "session-accuracy.png", "session-time.png", "session-learning-curves.png"]
    assert sorted(path.name for path in (tmp_path / "report").iterdir()) == sorted(
        path.name for _, path in written), "no temporary files left behind"
    for _, path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
        pixels = matplotlib.image.imread(path)
        assert pixels.shape == (504, 768, 4)  # 6.4 x 4.2 in at 120 dpi, RGBA
        assert pixels[..., :3].std() > 0.05, f"{path.name} is blank"


def test_same_rows_give_the_same_bytes(rows: list[dict], tmp_path: Path):
    first = write_plots(rows, tmp_path / "a", "s")
    second = write_plots(rows, tmp_path / "b", "s")
    for (_, one), (_, other) in zip(first, second, strict=True):
        assert one.read_bytes() == other.read_bytes()
        assert b"Software" not in one.read_bytes()


def test_accuracy_plot_draws_the_seed_mean_per_batch_size(figures: dict[str, Figure]):
    (axes,) = figures["accuracy"].axes

    assert axes.get_xscale() == "log"
    assert axes.xaxis.get_transform().base == 2
    assert [label.get_text() for label in axes.get_xticklabels()] == ["1", "16", "64"]
    assert list(axes.get_xticks()) == [1, 16, 64]
    assert axes.get_ylabel() == "Test accuracy (%)"
    assert "Batch size" in axes.get_xlabel()
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [SMALL, DEEP]
    data = line_data(axes)
    assert len(data) == 2
    for model in (SMALL, DEEP):
        sizes, accuracies = data[model]
        assert sizes == [1, 16, 64]
        # The diverged SMALL run at batch 16 is left out, not counted as 0.
        assert accuracies == pytest.approx([mean_accuracy(model, size) for size in sizes])


def test_time_plot_uses_log_axes_when_times_span_more_than_30x(figures: dict[str, Figure]):
    (axes,) = figures["time"].axes

    assert axes.xaxis.get_transform().base == 2
    assert axes.get_yscale() == "log"
    assert axes.get_ylabel() == "Training time (s)"
    data = line_data(axes)
    assert data[SMALL] == ([1, 16, 64], pytest.approx([405.0, 43.0, 17.0]))
    assert data[DEEP] == ([1, 16, 64], pytest.approx([385.0, 50.0, 12.0]))
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert "100" in labels and not any("^" in label for label in labels)


def test_time_plot_is_linear_from_zero_when_times_are_close():
    rows = [row(SMALL, size, 0, 0.97, seconds) for size, seconds in ((16, 30.0), (64, 12.0))]
    (axes,) = dict((name, figure) for name, _, figure in build_figures(rows))["time"].axes

    assert axes.get_yscale() == "linear"
    assert axes.get_ylim()[0] == 0


def test_learning_curves_average_seeds_in_one_panel_per_model(figures: dict[str, Figure]):
    figure = figures["learning-curves"]
    first, second = figure.axes

    assert [axes.get_title() for axes in figure.axes] == [SMALL, DEEP]
    assert not first.get_shared_y_axes().joined(first, second)  # each fits its own data
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["batch 1", "batch 16", "batch 64"]
    for axes, model in ((first, SMALL), (second, DEEP)):
        assert list(axes.get_xticks()) == [1, 2]
        data = line_data(axes)
        assert list(data) == ["batch 1", "batch 16", "batch 64"]
        for size in (1, 16, 64):
            epochs, accuracies = data[f"batch {size}"]
            assert epochs == [1, 2]
            final = mean_accuracy(model, size)
            assert accuracies == pytest.approx([final - 1, final])
    colours = [line.get_color() for line in first.get_lines()]
    assert colours == [line.get_color() for line in second.get_lines()]
    assert len(set(colours)) == 3


def test_no_finished_runs_give_no_plots(tmp_path: Path):
    assert build_figures([]) == []
    assert write_plots([], tmp_path / "empty", "s") == []
    diverged = [row(SMALL, 16, 0, None, 3.0, (0.5,)), row(DEEP, 64, 0, math.nan, 2.0)]
    assert write_plots(diverged, tmp_path / "empty", "s") == []
    assert not (tmp_path / "empty").exists()


def test_a_single_batch_size_still_plots_a_marker(tmp_path: Path):
    rows = [row(SMALL, 64, 0, 0.97, 12.0, (0.96,))]
    built = {name: figure for name, _, figure in build_figures(rows)}

    (axes,) = built["accuracy"].axes
    (line,) = axes.get_lines()
    assert (list(line.get_xdata()), list(line.get_ydata())) == ([64], [pytest.approx(97.0)])
    assert line.get_marker() == "o"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["64"]
    assert 95 < axes.get_ylim()[0] < 97 < axes.get_ylim()[1] < 99, "not matplotlib's 92-102 %"
    assert list(built["learning-curves"].axes[0].get_xticks()) == [1]
    assert len(write_plots(rows, tmp_path, "one")) == 3


def test_labels_name_the_dataset_and_settings_that_differ():
    rows = [row(SMALL, 16, 0, 0.97, 30.0, (0.96,), dataset="mnist", lr=0.001),
            row(SMALL, 16, 0, 0.88, 30.0, (0.87,), dataset="fashion-mnist", lr=0.001),
            row(SMALL, 16, 0, 0.95, 30.0, (0.94,), dataset="mnist", lr=0.1)]
    built = {name: figure for name, _, figure in build_figures(rows)}

    (axes,) = built["accuracy"].axes
    assert [line.get_label() for line in axes.get_lines()] == [
        f"{SMALL} (mnist, lr=0.001)", f"{SMALL} (fashion-mnist, lr=0.001)",
        f"{SMALL} (mnist, lr=0.1)"]
    assert len(built["learning-curves"].axes) == 3


def test_crowded_batch_size_labels_are_thinned_keeping_powers_of_two():
    sizes = [1, 2, 4, 8, 16, 32, 64, 96, 128, 256, 512, 1024]
    rows = [row(SMALL, size, 0, 0.9, 10.0) for size in sizes]
    (axes,) = build_figures(rows)[0][2].axes

    assert list(axes.get_xticks()) == sizes
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert labels == [str(size) if size != 96 else "" for size in sizes]


def test_a_failed_save_leaves_the_old_file_and_no_temporary(
        rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "s-accuracy.png"
    target.write_bytes(b"previous report")

    def broken_savefig(self: Figure, handle, **options) -> None:
        handle.write(PNG_MAGIC)
        raise OSError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        write_plots(rows, tmp_path, "s")
    assert target.read_bytes() == b"previous report"
    assert [path.name for path in tmp_path.iterdir()] == ["s-accuracy.png"]


def test_studies_of_different_epochs_get_a_panel_each_with_own_axes() -> None:
    short = [row(SMALL, size, 0, acc, sec, epochs=2)
             for size, acc, sec in ((16, 0.97, 20.0), (64, 0.968, 9.0))]
    long = [row("784-1-10", size, 0, acc, sec, epochs=200, activation="linear")
            for size, acc, sec in ((1000, 0.44, 28.0), (20000, 0.25, 30.0))]
    built = {name: figure for name, _, figure in build_figures(short + long)}
    for name in ("accuracy", "time"):
        panels = built[name].axes
        assert [axes.get_title() for axes in panels] == ["2 epochs", "200 epochs"]
        assert [len(axes.get_lines()) for axes in panels] == [1, 1]
    low, high = built["accuracy"].axes[0].get_ylim()
    assert low > 90 and high < 100  # the 2-epoch panel is not squashed by the 25-44 % study
    assert list(built["accuracy"].axes[1].get_lines()[0].get_xdata()) == [1000, 20000]


def test_one_budget_keeps_one_panel(rows: list[dict]) -> None:
    for row_ in rows:
        row_["epochs"] = 2
    built = {name: figure for name, _, figure in build_figures(rows)}
    assert len(built["accuracy"].axes) == 1
    assert built["accuracy"].axes[0].get_title().startswith("Test accuracy vs batch size")


def test_lr_scaled_with_the_batch_size_keeps_one_line():
    """--lr-scaling gives each batch size its own lr; a sweep at one batch size splits lines."""
    scaled = [row(SMALL, size, 0, 0.97, 10.0, (0.96,), lr=0.001 * size / 64)
              for size in (16, 64, 256)]
    (series,) = plots.group_series(scaled)
    assert series.label == SMALL and sorted(series.accuracy) == [16, 64, 256]
    sweep = [*scaled, row(SMALL, 64, 0, 0.95, 10.0, (0.94,), lr=0.1)]
    assert [one.label for one in plots.group_series(sweep)] == [
        f"{SMALL} (lr={0.001 * 16 / 64})", f"{SMALL} (lr=0.001)", f"{SMALL} (lr={0.001 * 4})",
        f"{SMALL} (lr=0.1)"]


def test_learning_curve_legend_wraps_seven_batch_sizes_into_balanced_rows():
    sizes = (16, 32, 64, 128, 256, 512, 1024)
    rows = [row(SMALL, size, 0, 0.97, 10.0, (0.95, 0.96)) for size in sizes]
    figure = dict((name, figure) for name, _, figure in build_figures(rows))["learning-curves"]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [f"batch {s}" for s in sizes]
    assert legend._ncols == 4  # 4 + 3, not 6 + 1 running off the figure


def fine_row(model: str, batch_size: int, seed: int, points: list[tuple[int, float]],
             epochs: tuple[float, ...], per_epoch: int = 55_000, **config: object) -> dict:
    """A run with a learning curve between epochs: (samples, val accuracy) points."""
    result = row(model, batch_size, seed, epochs[-1], 10.0, epochs, **config)
    result["samples_per_epoch"] = per_epoch
    result["curve"] = [{"samples": samples, "epoch": samples / per_epoch, "val_loss": 0.1,
                        "val_accuracy": accuracy} for samples, accuracy in points]
    return result


def test_learning_curves_draw_the_fine_curve_as_the_line_and_epochs_as_dots():
    points = [(10_000, 0.90), (20_000, 0.93), (30_000, 0.95), (40_000, 0.955),
              (50_000, 0.96), (60_000, 0.965), (70_000, 0.966)]
    rows = [fine_row(SMALL, 64, seed, [(s, a + seed * 0.002) for s, a in points],
                     (0.962 + seed * 0.002, 0.968 + seed * 0.002)) for seed in (0, 1)]
    figure = dict((name, figure) for name, _, figure in build_figures(rows))["learning-curves"]
    (axes,) = figure.axes
    line, dots = axes.get_lines()
    assert list(line.get_xdata()) == pytest.approx([s / 55_000 for s, _ in points])
    assert list(line.get_ydata()) == pytest.approx([100 * a + 0.1 for _, a in points])
    assert line.get_marker() in ("None", None, "")
    assert list(dots.get_xdata()) == [1, 2] and dots.get_linestyle() == "None"
    assert list(dots.get_ydata()) == pytest.approx([96.3, 96.9])
    assert len(axes.collections) == 1  # the two seeds' 95% band along the fine curve
    low, high = axes.get_ylim()
    assert 88 < low < 90 and 97 < high <= 100  # fitted to 90-97 %, not 20-100 %
    assert list(axes.get_xticks()) == [0, 1, 2] and axes.get_xlim()[0] == 0
    (legend,) = figure.legends
    assert legend.get_title().get_text() == plots.FINE_CURVE_NOTE


def test_learning_curve_panels_of_different_studies_have_their_own_ranges():
    short = fine_row(SMALL, 64, 0, [(10_000, 0.95), (60_000, 0.97)], (0.965, 0.972))
    long = row("784-1-10", 1000, 0, 0.44, 28.0, tuple(0.2 + i / 1000 for i in range(200)),
               epochs=200, activation="linear")
    figure = dict((name, figure) for name, _, figure in build_figures([short, long]))[
        "learning-curves"]
    first, second = figure.axes
    assert first.get_ylim()[0] > 90 and first.get_ylim()[1] <= 100
    assert second.get_ylim()[1] < 50 and second.get_ylim()[0] > 15


def test_legend_of_long_batch_labels_fits_the_figure():
    sizes = (1, 16, 64, 1000, 2000, 5000, 10000, 20000, 50000)
    rows = [row(SMALL, size, 0, 0.9, 10.0, (0.85, 0.9)) for size in sizes]
    figure = dict((name, figure) for name, _, figure in build_figures(rows))["learning-curves"]
    (legend,) = figure.legends
    assert legend._ncols == 3  # 3 rows of 3: four "batch 10000" entries overflow 6.4 inches
    figure.canvas.draw()
    box = legend.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width


def test_trade_off_plot_draws_accuracy_against_flops_and_latency():
    """Two models or more with FLOPs and latency get the trade-off plot: accuracy (mean of the
    seeds) at the model's FLOPs (left) and at each batch size's latency in µs (right), the
    parameter count in the legend."""
    measured = [{**row(model, batch, seed, accuracy, 1.0), "flops": flops, "params": params,
                 "latency_median_s": latency}
                for model, flops, params in (("mlp", 1_626_112, 814_090),
                                             ("lenet", 833_040, 61_706))
                for batch, accuracy, latency in ((16, 0.96, 20e-6), (64, 0.97, 10e-6))
                for seed in (0, 1)]
    built = {name: figure for name, _, figure in build_figures(measured)}
    by_flops, by_latency = built["trade-off"].axes
    assert by_flops.get_xscale() == by_latency.get_xscale() == "log"
    data = line_data(by_flops)
    assert data == {"mlp, 814,090 params": ([1_626_112] * 2, [96.0, 97.0]),
                    "lenet, 61,706 params": ([833_040] * 2, [96.0, 97.0])}
    latencies = [list(line.get_xdata()) for line in by_latency.get_lines()]
    assert latencies == [[pytest.approx(20.0), pytest.approx(10.0)]] * 2


def test_one_model_gets_no_trade_off_plot(rows: list[dict]):
    one = [{**entry, "flops": 100, "latency_median_s": 1e-6} for entry in rows
           if entry["model"] == SMALL]
    assert "trade-off" not in [name for name, _, _ in build_figures(one)]
