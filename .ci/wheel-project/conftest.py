"""A user's project: its own --device option and a batchprof hook beside the plugin."""

from pathlib import Path


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="the project's own device option")


def pytest_batchprof_summary(config, rows):
    Path("hook-called").write_text(str(len(rows)))
