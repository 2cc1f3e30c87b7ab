"""The report of a learning-rate grid (``--batchprof-lr-grid``), on hand-made rows.

Every configuration was trained at each lr of the grid with two seeds; the rows carry
the choice the fixture made (``lr_chosen``, ``lr_grid``, ``lr_grid_criterion``,
``lr_grid_score``, ``lr_grid_note``). The table, histories, per-seed section and
per-batch plots show the chosen lr of each batch size; the heat-map section and the
``lr-grid`` plot show the whole grid; JSON, CSV and baselines keep every run; a
baseline comparison reads the chosen runs of either side and says when the lr moved.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_batchprof.gating import compare
from pytest_batchprof.plugin.report import SummaryCollector, SummaryTables
from pytest_batchprof.reports import figures as declared
from pytest_batchprof.reports.lr_grid import (
    ACCURACY_CRITERION,
    STEPS_CRITERION,
    chosen_rows,
    grid_section,
    grid_studies,
    lr_moved,
)
from pytest_batchprof.reports.plots import build_figures
from pytest_batchprof.reports.summary import table_from_report
from pytest_batchprof.reports.tables import table_columns
from tests.test_report import markdown_tables

GRID = "0.0001,0.0003,0.001,0.003"
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
WIDEN = "best lr is the grid's largest: widen the grid"
DIVERGED = "training loss became nan in epoch 1"

# (batch size, lr) -> the two seeds' final val accuracy; None: the seed diverged.
VAL = {
    (32, 1e-4): (0.80, 0.82), (32, 3e-4): (0.90, 0.92), (32, 1e-3): (0.95, 0.97),
    (32, 3e-3): (None, None),
    (128, 1e-4): (0.70, 0.72), (128, 3e-4): (0.80, 0.84), (128, 1e-3): (0.90, 0.90),
    (128, 3e-3): (0.93, 0.95),
}
CHOSEN = {32: 1e-3, 128: 3e-3}
"""The lr of each batch size with the highest mean val accuracy."""


def row(batch_size: int, lr: float, seed: int, val: float | None, **changes: object) -> dict:
    """A summary row of 64-8-10 on digits, as ``Run.summary()`` plus outcome and tests."""
    figures: dict[str, object] = {
        "model": "64-8-10", "dataset": "digits", "input_shape": [8, 8], "hidden": [8],
        "num_classes": 10, "activation": "relu", "batch_size": batch_size, "epochs": 1,
        "lr": lr, "optimizer": "adam", "seed": seed, "device": "cpu", "train_subset": None,
        "val_fraction": 1 / 12, "flush_denormals": True, "lr_warmup_epochs": 0.0,
        "lr_warmup_start": None, "target_accuracy": None, "architecture": "0123456789abcdef",
        "loss": "cross_entropy", "precision": "fp32", "processes": 1, "trainer": "batchprof",
        "train_seconds": 2.0 + seed, "train_accuracy": val, "val_accuracy": val,
        # the test split differs from the validation one, so a wrong filter shows
        "test_accuracy": None if val is None else round(val - 0.01 * (1 + LRS.index(lr)), 4),
        "diverged": DIVERGED if val is None else None,
        "history": [{"epoch": 1, "train_accuracy": val or 0.1, "val_accuracy": val or 0.1,
                     "train_loss": 0.5, "val_loss": 0.5, "train_seconds": 1.0,
                     "eval_seconds": 0.1}],
        "outcome": "passed", "tests": [f"test_grid[{batch_size}]"],
    }
    figures.update(changes)
    return figures


def grid_rows(val: dict = VAL, chosen: dict = CHOSEN,
              criterion: str = ACCURACY_CRITERION) -> list[dict]:
    """The grid's rows with the fixture's choice recorded on each, seed by seed."""
    rows = []
    for (batch_size, lr), seeds in val.items():
        values = [value for value in seeds if value is not None]
        is_chosen = lr == chosen[batch_size]
        note = None
        if is_chosen and lr == LRS[-1]:
            note = WIDEN
        for seed, value in enumerate(seeds):
            choice: dict[str, object] = {
                "lr_grid": GRID, "lr_chosen": is_chosen, "lr_grid_criterion": criterion,
                "lr_grid_score": sum(values) / len(values) if len(values) == len(seeds)
                else None}
            if is_chosen:
                choice["lr_grid_note"] = note
            rows.append(row(batch_size, lr, seed, value, **choice))
    return rows


def plain_rows() -> list[dict]:
    """A session without a grid: one lr, two batch sizes, two seeds."""
    return [row(batch_size, 1e-3, seed, 0.9 + 0.01 * seed)
            for batch_size in (32, 128) for seed in (0, 1)]


def fake_config() -> SimpleNamespace:
    """What SummaryTables and the markdown read of a pytest config: hooks that change nothing."""
    hook = SimpleNamespace(pytest_batchprof_summary=lambda config, rows: None,
                           pytest_batchprof_markdown=lambda config, markdown: None)
    return SimpleNamespace(hook=hook)


def settings(tmp_path: Path, **changes: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "columns": None, "no_report": False, "report_dir": tmp_path / "reports", "save": None,
        "baseline_dir": tmp_path / "reports" / "baselines", "fail_drop": 0.5,
        "fail_slowdown": None}
    values.update(changes)
    return SimpleNamespace(**values)




def column(table: list[list[str]], label: str) -> list[str]:
    index = table[0].index(label)
    return [cells[index] for cells in table[1:]]


def columns_of(rows: list[dict]) -> list[str]:
    """The default columns of ``rows`` (every key standard: no hook added one)."""
    return table_columns(rows, None, {key for one in rows for key in one})


def line_data(axes) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in axes.get_lines() if not line.get_label().startswith("_")}


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture
def session(tmp_path: Path):
    """The report of a finished session of the grid's rows."""
    collector = SummaryCollector()
    for one in grid_rows():
        collector.add([one], one["tests"][0], "passed")
    return collector.finish(fake_config(), settings(tmp_path), partial=False)


# ---------------------------------------------------------------- the table


def test_the_grid_choice_is_declared_once_in_the_figures() -> None:
    for key in ("lr_grid", "lr_chosen", "lr_grid_criterion", "lr_grid_score"):
        assert key in declared.COLUMNS and key not in declared.DEFAULT_COLUMNS
    assert "lr_grid_note" in declared.OPTIONAL_COLUMNS
    assert declared.COLUMNS["lr_grid_note"].label == "lr note"


def test_the_table_shows_each_batch_size_at_its_chosen_lr_with_the_edge_note() -> None:
    rows = grid_rows()
    tables = SummaryTables.build(fake_config(), settings(Path(".")), rows)
    assert len(tables.rows) == 16  # every run measured is kept
    assert [(one["batch_size"], one["lr"]) for one in tables.shown] == [
        (32, 1e-3), (32, 1e-3), (128, 3e-3), (128, 3e-3)]
    ((_, table),) = markdown_tables(tables.table)
    assert table[0][:7] == ["model", "data set", "batch", "epochs", "lr", "seeds", "lr note"]
    assert column(table, "batch") == ["32", "128"]
    assert column(table, "lr") == ["0.001", "0.003"]
    assert column(table, "lr note") == ["", WIDEN]  # no note: an empty cell, not n/a
    # the chosen runs' figures, folded over their seeds, never another lr's
    assert column(table, "val acc (%)") == ["96.0 ± 12.7", "94.0 ± 12.7"]
    assert tables.warnings == []


def test_one_chosen_lr_for_every_batch_size_still_shows_the_lr_column() -> None:
    rows = grid_rows(chosen={32: 1e-3, 128: 1e-3})
    shown = chosen_rows(rows)
    assert {one["lr"] for one in shown} == {1e-3}
    assert columns_of(shown)[3:7] == ["epochs", "lr", "seeds", "lr_grid_note"]


def test_chosen_rows_are_the_session_rows_themselves() -> None:
    """A caller that adds figures to the chosen rows (a fit across batch sizes) adds them
    to the session's rows, which the JSON report writes."""
    rows = grid_rows()
    shown = chosen_rows(rows)
    assert len(shown) == 4 and all(any(one is kept for kept in rows) for one in shown)


def test_a_session_without_a_grid_is_unchanged(tmp_path: Path) -> None:
    rows = plain_rows()
    assert chosen_rows(rows) == rows
    assert grid_section(rows) is None
    assert grid_studies(rows) == []
    assert "lr" not in columns_of(rows) and "lr_grid_note" not in columns_of(rows)
    assert "lr-grid" not in [name for name, _, _ in build_figures(rows)]
    collector = SummaryCollector()
    collector.add(rows, "test_plain", "passed")
    report = collector.finish(fake_config(), settings(tmp_path), partial=False)
    assert "Learning-rate grid" not in report.markdown
    assert "lr-grid" not in report.markdown
    ((_, table), *_) = markdown_tables(report.table)
    assert "lr" not in table[0] and "lr note" not in table[0]


# ---------------------------------------------------------------- the heat map


def test_the_heat_map_shades_ranks_and_bolds_the_chosen_cell() -> None:
    section = grid_section(grid_rows())
    assert section.startswith("## Learning-rate grid\n")
    ((heading, table),) = markdown_tables(section)
    assert heading == "64-8-10 on digits, 1 epoch, adam"
    assert table == [
        ["lr", "batch 32", "batch 128"],
        ["0.0001", "░ 81.0", "░ 71.0"],
        ["0.0003", "▓ 91.0", "▒ 82.0"],
        ["0.001", "█ **96.0** ★", "▓ 90.0"],
        ["0.003", "diverged", "█ **94.0** ★"],
    ]
    assert "Cells: final val accuracy (%), mean over 2 seeds." in section
    assert "darker is better (█, ▓, ▒, ░: best to worst)" in section
    assert ("Chosen on the validation split by the highest final val accuracy; the test split "
            "played no part.") in section
    assert f"Edge flags:\n\n- batch 128: {WIDEN}" in section


def test_steps_to_target_cells_not_reached_partly_diverged_and_not_trained() -> None:
    steps = {(32, 1e-4): ("not reached", "not reached"), (32, 3e-4): (1500, 1300),
             (32, 1e-3): (1000, 1200), (32, 3e-3): (900, "not reached"),
             (128, 1e-4): ("not reached", "not reached"), (128, 1e-3): (400, 500),
             (128, 3e-3): (300, None)}
    val = {key: tuple(0.5 if value is None else 0.97 for value in seeds)
           for key, seeds in steps.items()}
    rows = []
    for one in grid_rows(val, criterion=STEPS_CRITERION, chosen={32: 1e-3, 128: 1e-3}):
        value = steps[one["batch_size"], one["lr"]][one["seed"]]
        one.update(target_accuracy=0.97, target_steps=value)
        if value is None:
            one.update(diverged=DIVERGED, val_accuracy=None, test_accuracy=None)
        rows.append(one)
    ((study,),) = [grid_studies(rows)]
    assert study.criterion == STEPS_CRITERION
    section = grid_section(rows)
    ((_, table),) = markdown_tables(section)
    assert table == [
        ["lr", "batch 32", "batch 128"],
        ["0.0001", "not reached", "not reached"],
        ["0.0003", "░ 1,400", "n/a"],  # batch 128 did not train at 3e-4
        ["0.001", "█ **1,100** ★", "█ **450** ★"],  # fewer steps are darker
        ["0.003", "not reached by 1 of 2", "diverged by 1 of 2"],
    ]
    assert ("Chosen on the validation split by the fewest steps to 97% val accuracy; the test "
            "split played no part.") in section
    assert "No chosen lr lies at an edge of the grid." in section
    # the plot draws the steps on a log axis, with no point where a cell has no figure
    (panel,) = dict((name, figure) for name, _, figure in build_figures(rows))["lr-grid"].axes
    assert panel.get_yscale() == "log" and panel.get_xscale() == "log"
    lines = line_data(panel)
    assert lines["batch 32"] == ([3e-4, 1e-3], [1400.0, 1100.0])
    assert lines["batch 128"] == ([1e-3], [450.0])
    assert lines["batch 128: chosen lr"] == ([1e-3], [450.0])


def test_studies_are_split_by_every_setting_but_batch_lr_and_seed() -> None:
    rows = grid_rows() + [{**one, "precision": "bf16"} for one in grid_rows()]
    studies = grid_studies(rows)
    assert [study.title for study in studies] == [
        "64-8-10 on digits, 1 epoch, adam, precision fp32",
        "64-8-10 on digits, 1 epoch, adam, precision bf16"]
    assert [study.lrs for study in studies] == [list(LRS)] * 2
    assert [study.batch_sizes for study in studies] == [[32, 128]] * 2
    headings = [heading for heading, _ in markdown_tables(grid_section(rows))]
    assert headings == [study.title for study in studies]


def test_lr_moved_only_speaks_of_a_tuned_lr() -> None:
    tuned_before, tuned_now = grid_rows()[:1], grid_rows()[2:3]  # 1e-4, then 3e-4
    assert lr_moved(tuned_before, tuned_now) == "tuned lr 0.0001 -> 0.0003"
    assert lr_moved(tuned_before, tuned_before) is None
    assert lr_moved([row(32, 1e-3, 0, 0.9)], [row(32, 3e-3, 0, 0.9)]) is None  # no grid


# ---------------------------------------------------------------- plots


def test_the_lr_grid_plot_draws_every_lr_and_stars_the_chosen_one() -> None:
    built = build_figures(grid_rows())
    assert [name for name, _, _ in built] == ["accuracy", "time", "learning-curves", "lr-grid"]
    _, title, figure = built[-1]
    assert title == "Validation figure vs learning rate"
    (panel,) = [axes for axes in figure.axes if axes.get_lines()]
    assert panel.get_xscale() == "log"
    assert panel.get_ylabel() == "Validation accuracy (%)"
    lines = {label: ([round(x, 6) for x in xs], [round(y, 6) for y in ys])
             for label, (xs, ys) in line_data(panel).items()}
    assert lines == {
        "batch 32": ([1e-4, 3e-4, 1e-3], [81.0, 91.0, 96.0]),  # 3e-3 diverged: no point
        "batch 32: chosen lr": ([1e-3], [96.0]),
        "batch 128": ([1e-4, 3e-4, 1e-3, 3e-3], [71.0, 82.0, 90.0, 94.0]),
        "batch 128: chosen lr": ([3e-3], [94.0]),
    }
    assert [label.get_text() for label in panel.get_xticklabels()] == [
        "0.0001", "0.0003", "0.001", "0.003"]


def test_the_per_batch_plots_show_the_chosen_lr_only() -> None:
    figures = {name: figure for name, _, figure in build_figures(grid_rows())}
    (panel,) = figures["accuracy"].axes
    (label,) = [container.get_label() for container in panel.containers]
    (container,) = panel.containers
    xs, ys = container.lines[0].get_xdata(), container.lines[0].get_ydata()
    # test accuracy of the chosen lrs: 1e-3 at batch 32 (val - 0.03), 3e-3 at 128 (val - 0.04)
    assert label == "64-8-10"  # one line: the lr varies between batch sizes, not within one
    assert [round(value, 6) for value in ys] == [93.0, 90.0]
    assert list(xs) == [32, 128]
    curves = figures["learning-curves"].axes[0]
    assert len(curves.get_lines()) == 2  # one curve per batch size, not per lr


# ---------------------------------------------------------------- report files


def test_the_session_report_keeps_every_run_in_json_and_csv(session) -> None:
    report = session
    json_path = next(path for path in report.files if path.suffix == ".json")
    csv_path = next(path for path in report.files if path.suffix == ".csv")
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert len(document["rows"]) == 16
    assert sum(1 for one in document["rows"] if one["lr_chosen"]) == 4
    assert {one["lr_grid"] for one in document["rows"]} == {GRID}
    lines = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    assert len(lines) == 16
    assert sorted({(line["batch_size"], line["lr"]) for line in lines}) == sorted(
        {(str(batch), str(lr)) for batch, lr in VAL})
    # the saved report renders the very table the session printed: chosen lrs only
    assert table_from_report(json_path) == report.table
    assert any(path.name.endswith("-lr-grid.png") for path in report.files)


def test_the_session_markdown_shows_the_grid_and_only_the_chosen_runs(session) -> None:
    markdown = session.markdown
    order = [markdown.index(heading) for heading in (
        "## Summary", "## Learning-rate grid", "## Per-seed runs", "## Plots",
        "## Per-epoch history")]
    assert order == sorted(order)
    assert "![Validation figure vs learning rate](" in markdown
    per_seed = dict(markdown_tables(markdown))["Per-seed runs"]
    assert column(per_seed, "lr") == ["0.001", "0.001", "0.003", "0.003"]
    history = markdown.split("## Per-epoch history", 1)[1]
    assert history.count("### ") == 4  # two batch sizes x two seeds, at their chosen lr
    assert "Diverged" not in history  # batch 32's diverged lr was not chosen


# ---------------------------------------------------------------- baseline comparison


def compared(now: list[dict], before: list[dict]):
    return compare(now, {"rows": before, "environment": {}}, Path("base.json"), 0.5, None, {})


def test_a_baseline_comparison_reads_the_chosen_runs_of_either_side() -> None:
    comparison = compared(grid_rows(), grid_rows())
    assert [(entry.title, entry.verdict) for entry in comparison.entries] == [
        ("64-8-10 on digits, batch 32, seeds 0, 1", "ok"),
        ("64-8-10 on digits, batch 128, seeds 0, 1", "ok")]
    assert [entry.now for entry in comparison.entries] == [
        pytest.approx(0.93), pytest.approx(0.90)]


def test_a_moved_lr_is_said_in_the_verdict() -> None:
    before = grid_rows()
    now = grid_rows(chosen={32: 3e-4, 128: 3e-3})  # batch 32 now chooses 3e-4
    comparison = compared(now, before)
    moved, kept = comparison.entries
    # 3e-4 tests at 89% (mean of 88 and 90), 1e-3 at 93%: judged, and the move said
    assert moved.verdict.startswith("REGRESSION: -4.00 pp > 0.5 pp allowed")
    assert moved.verdict.endswith("; tuned lr 0.001 -> 0.0003")
    assert kept.verdict == "ok"  # batch 128 chose 3e-3 both times
    assert comparison.regressions == comparison.entries[:1]
    assert "tuned lr 0.001 -> 0.0003" in comparison.markdown()


def test_a_session_tuned_against_an_untuned_baseline_says_where_the_lr_went() -> None:
    before = [row(batch_size, 1e-3, seed, 0.9) for batch_size in (32, 128) for seed in (0, 1)]
    comparison = compared(grid_rows(), before)
    same, moved = comparison.entries
    assert same.verdict.startswith("improved") and "tuned lr" not in same.verdict
    assert moved.verdict.endswith("; tuned lr 0.001 -> 0.003")
