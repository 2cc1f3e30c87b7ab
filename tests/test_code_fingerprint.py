"""The ``code`` fingerprint: a cache key covers all the code that computes a run.

First as a user meets it, in real pytester sessions of a small project with its own
conftest, a model made of helper classes in its own module (``mymodels.py``, with a
class from ``blocks.py``), and a loss and an optimizer factory in modules of their
own: an edit of any of those files between two sessions is a cache miss, and the
run trained afresh computes with the new code. Then the fingerprint itself: torch's
and the plugin's classes add nothing, an installed library adds its version,
unchanged code fingerprints alike wherever its files lie, and what cannot be
fingerprinted says why.

Inner sessions run in-process: pytester restores ``sys.modules`` after each, so the
next session imports the project's edited modules afresh. Every edit changes the
file's length and moves its modification time, so that no stale bytecode is used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_batchprof.data.description import DataDescription
from pytest_batchprof.experiment.code import Code, code_of, model_code
from pytest_batchprof.experiment.models import cnn, mlp, prepare_model

BASE = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
        "--device", "cpu", "--no-co2", "--epochs", "1", "--dataset", "digits",
        "--batch-sizes", "16", "--batchprof-no-report")
DIGITS = DataDescription((8, 8), 10)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Train on one CPU thread (the machine's cores are shared); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` (once) in ``path`` by ``new``, a text of another length, and move the
    file's modification time on, so that Python compiles it afresh."""
    text = path.read_text()
    assert text.count(old) == 1 and len(old) != len(new), (path, old)
    path.write_text(text.replace(old, new))
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 2_000_000_000))


# ---------------------------------------------------------------- an edit is a miss

PROJECT = {
    "conftest": """
        from pathlib import Path

        import pytest


        @pytest.fixture
        def note():
            def write(label, run):
                with Path("accuracies.txt").open("a") as handle:
                    handle.write(f"{label}={run.test_accuracy!r}\\n")
            return write
    """,
    "blocks": """
        from torch import nn


        class Scale(nn.Module):
            def __init__(self, factor=1.0):
                super().__init__()
                self.factor = factor

            def forward(self, x):
                return x * self.factor
    """,
    "mymodels": """
        from torch import nn

        from blocks import Scale


        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.linear = nn.Linear(width, width)
                self.scale = Scale()

            def forward(self, x):
                return self.scale(self.linear(x).relu())


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Linear(64, 32)
                self.block = Block(32)
                self.head = nn.Linear(32, 10)

            def forward(self, x):
                return self.head(self.block(self.stem(x.flatten(1)).relu()))
    """,
    "losses": """
        import torch.nn.functional as F


        def smooth_loss(outputs, targets):
            return F.cross_entropy(outputs, targets, label_smoothing=0.05)
    """,
    "optimizers": """
        import torch


        def momentum_sgd(parameters):
            return torch.optim.SGD(parameters, lr=1.0, momentum=0.9)
    """,
    "test_project": """
        from losses import smooth_loss
        from mymodels import Net
        from optimizers import momentum_sgd


        def test_net(trained_model, note):
            note("net", trained_model(Net, lr=0.01))


        def test_recipe(trained_model, note):
            note("recipe", trained_model(Net, loss=smooth_loss, optimizer=momentum_sgd,
                                         lr=0.05))
    """,
}


def session(pytester: pytest.Pytester) -> tuple[list[str], list[str], dict[str, float]]:
    """One session of the project with its cache: the tests whose run trained, those whose
    run loaded from the cache, and each test's test accuracy."""
    (pytester.path / "accuracies.txt").unlink(missing_ok=True)
    result = pytester.runpytest(*BASE, "--batchprof-cache", str(pytester.path / "cache"))
    result.assert_outcomes(passed=2)
    trained = [line for line in result.outlines if line.startswith("batchprof: training ")]
    loaded = [line for line in result.outlines if line.startswith("batchprof: loaded ")]
    assert all(re.fullmatch(r"batchprof: loaded Net \(.*\) on digits, .* from the cache", line)
               for line in loaded), loaded
    assert "is not cached" not in result.stdout.str()
    labels = ["recipe" if "momentum_sgd" in line else "net" for line in trained]
    accuracies = dict(line.split("=") for line in
                      (pytester.path / "accuracies.txt").read_text().split())
    return labels, loaded, {label: float(value) for label, value in accuracies.items()}


def test_an_edit_of_any_file_of_the_runs_code_is_a_cache_miss(
        pytester: pytest.Pytester) -> None:
    for name, text in PROJECT.items():
        pytester.makepyfile(**{name: textwrap.dedent(text)})
    trained, loaded, first = session(pytester)
    assert sorted(trained) == ["net", "recipe"] and not loaded
    assert len(list((pytester.path / "cache").glob("*.pt"))) == 2

    trained, loaded, again = session(pytester)
    assert (trained, len(loaded)) == ([], 2)  # nothing changed: both from the cache
    assert again == first

    edits = [  # (file, old, new, the tests whose run it changes)
        ("blocks.py", "factor=1.0", "factor=0.25", ["net", "recipe"]),  # a class it is made of
        ("losses.py", "label_smoothing=0.05", "label_smoothing=0.1", ["recipe"]),
        ("optimizers.py", "momentum=0.9", "momentum=0.75", ["recipe"]),
    ]
    entries = 2
    for name, old, new, changed in edits:
        edit(pytester.path / name, old, new)
        trained, loaded, _ = session(pytester)
        assert sorted(trained) == changed, name
        assert len(loaded) == 2 - len(changed), name  # the others still load
        entries += len(changed)  # each a new key; the old entries stay, valid for old code
        assert len(list((pytester.path / "cache").glob("*.pt"))) == entries, name

    # Block.forward, a helper class beside the model, now throws its input away
    edit(pytester.path / "mymodels.py", "    def forward(self, x):\n        return self.scale",
         "    def forward(self, x):\n        x = x * 0\n        return self.scale")
    trained, loaded, edited = session(pytester)
    assert (sorted(trained), loaded) == (["net", "recipe"], [])
    assert edited["net"] < first["net"]  # trained with the new code: the input is lost


# ---------------------------------------------------------------- what cannot be fingerprinted

UNREADABLE = """
    from torch import nn


    def block_class():
        class Local(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(64, 10)

            def forward(self, x):
                return self.linear(x.flatten(1))

        return Local


    def make():
        return nn.Sequential(block_class()())


    namespace = {}
    exec("from torch import nn\\n"
         "class Typed(nn.Module):\\n"
         "    def __init__(self):\\n"
         "        super().__init__()\\n"
         "        self.linear = nn.Linear(64, 10)\\n"
         "    def forward(self, x):\\n"
         "        return self.linear(x.flatten(1))\\n", namespace)


    def typed():
        return namespace["Typed"]()


    def test_class_inside_the_test(trained_model):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(64, 10)

            def forward(self, x):
                return self.linear(x.flatten(1))

        trained_model(Net, lr=0.01)


    def test_module_class_inside_a_function(trained_model):
        trained_model(make, lr=0.01)


    def test_module_class_made_by_exec(trained_model):
        trained_model(typed, lr=0.01)
"""
NOTES = [
    "batchprof: Net (650) is not cached: its factory is defined inside a function "
    "(test_class_inside_the_test.<locals>.Net); define it at module level, so that its name "
    "identifies it",
    "batchprof: make (650) is not cached: its module class block_class.<locals>.Local is "
    "defined inside a function; define it at module level, so that its source file "
    "identifies it",
    "batchprof: typed (650) is not cached: its module class Typed has no source file to "
    "fingerprint (defined in an interactive session or by exec); define it in a module's "
    "file",
]


def test_code_that_cannot_be_fingerprinted_is_trained_and_not_cached(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unreadable=textwrap.dedent(UNREADABLE))
    cache = pytester.path / "cache"
    result = pytester.runpytest(*BASE, "--batchprof-cache", str(cache))
    result.assert_outcomes(passed=3)
    assert [line for line in result.outlines if "is not cached" in line] == NOTES
    assert len([line for line in result.outlines if line.startswith("batchprof: training ")]) == 3
    assert list(cache.glob("*.pt")) == []


# ---------------------------------------------------------------- the fingerprint


class Residual(nn.Module):
    """A module class of this file: its code is this file."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_torch_and_the_plugins_classes_add_no_code() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(),
                          nn.Flatten(), nn.Linear(72, 10))
    assert model_code(model) == Code()
    for factory in (cnn(), mlp(8)):
        prepared = prepare_model(factory, DataDescription((28, 28), 10))
        assert prepared.code == Code() and prepared.code.fingerprint() is None
    assert code_of(torch.optim.SGD, "its optimizer") == Code()
    assert code_of(nn.CrossEntropyLoss(label_smoothing=0.1), "its loss") == Code()


def test_a_module_class_adds_its_file_and_an_installed_library_its_version() -> None:
    torchvision = pytest.importorskip("torchvision")
    digest = Code(frozenset({f"file {hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}"}))
    assert model_code(Residual()) == digest
    squeeze = torchvision.ops.SqueezeExcitation(4, 2)
    assert model_code(nn.Sequential(Residual(), squeeze)) == digest | Code(frozenset({
        f"library torchvision {importlib.metadata.version('torchvision')}"}))


PACKAGE = {
    "__init__.py": "",
    "models.py": """
        from typing import TYPE_CHECKING

        from torch import nn

        from . import helpers
        from .layers import Block

        if TYPE_CHECKING:
            from . import never_imported


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = Block()

            def forward(self, x):
                return helpers.squash(self.block(x))
    """,
    "layers.py": """
        from torch import nn


        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(64, 10)

            def forward(self, x):
                return self.linear(x.flatten(1))
    """,
    "helpers.py": """
        def squash(x):
            return x.tanh()
    """,
    "never_imported.py": """
        raise RuntimeError("the fingerprint must not run a module's code")
    """,
}


def write_package(root: Path) -> Path:
    """The package ``proj`` (a model, a layer, a helper function, a typing-only module)."""
    package = root / "proj"
    package.mkdir(parents=True)
    for name, text in PACKAGE.items():
        (package / name).write_text(textwrap.dedent(text))
    return package


def forget_proj() -> None:
    for name in [name for name in sys.modules if name == "proj" or name.startswith("proj.")]:
        del sys.modules[name]


@pytest.fixture
def no_proj() -> Iterator[None]:
    """The test imports ``proj`` from several places; none of them stays imported."""
    yield
    forget_proj()


def fingerprint_of_proj(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str | None]:
    """``proj.models.Net``'s architecture and code fingerprints, imported afresh from
    ``root``."""
    forget_proj()
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(root))
        from proj.models import Net

        prepared = prepare_model(Net, DIGITS)
        assert prepared.uncached_reason is None
        assert prepare_model(Net, DIGITS).code == prepared.code  # built twice, one code
        assert "proj.never_imported" not in sys.modules
        return prepared.architecture, prepared.code.fingerprint()


def test_the_code_is_the_files_contents_wherever_they_lie(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_proj: None) -> None:
    """Two copies of one project (two machines, two checkouts) fingerprint alike; an edit
    of any of its files, a helper function another module imports, or a module imported
    only for type checking (found without running it), changes the fingerprint."""
    write_package(tmp_path / "a")
    second = write_package(tmp_path / "b")
    architecture, original = fingerprint_of_proj(tmp_path / "a", monkeypatch)
    assert original is not None and re.fullmatch(r"[0-9a-f]{16}", original)
    assert fingerprint_of_proj(tmp_path / "b", monkeypatch) == (architecture, original)
    seen = {original}
    for name, old, new in [("helpers.py", "x.tanh()", "x.sigmoid()"),
                           ("never_imported.py", "must not", "should never"),
                           ("layers.py", "x.flatten(1)", "x.reshape(len(x), -1)"),
                           ("models.py", "self.block(x)", "self.block(x * 2)")]:
        edit(second / name, old, new)
        structure, changed = fingerprint_of_proj(tmp_path / "b", monkeypatch)
        assert changed not in seen, name
        assert structure == architecture, name  # the structure alone: no layer changed
        seen.add(changed)
    assert fingerprint_of_proj(tmp_path / "a", monkeypatch) == (architecture, original)


def test_what_cannot_be_fingerprinted_has_a_reason() -> None:
    def make_local() -> type[nn.Module]:
        class Local(Residual):
            pass

        return Local

    local = model_code(nn.Sequential(make_local()()))
    assert local.reason == (
        "its module class test_what_cannot_be_fingerprinted_has_a_reason.<locals>.make_local"
        ".<locals>.Local is defined inside a function; define it at module level, so that its "
        "source file identifies it")
    namespace: dict[str, object] = {}
    exec("from torch import nn\nclass Typed(nn.Module):\n    pass\n", namespace)
    typed = model_code(namespace["Typed"]())
    assert typed.reason is not None and typed.reason.startswith(
        "its module class Typed has no source file to fingerprint")
    assert (local | typed).reason == local.reason  # the first reason is the one said
    assert (local | typed).fingerprint() == model_code(Residual()).fingerprint()
