"""Models of the field's libraries through ``trained_model``: trained, measured and cached.

Each session test runs two real sessions (``pytester``) of a small inner project with the
same cache directory: the first trains the model and stores the run, the second loads it
("loaded ... from the cache") with the same figures. The models are the issue's:
torchvision's ``resnet18(num_classes=10)`` on 3x32x32 images, a timm model (``test_vit``),
a tiny Hugging Face ``BertForSequenceClassification`` built from a ``BertConfig`` (no
download) fed dict batches by a DataLoader, and a Keras 3 ``Sequential`` of ``Dense``
layers on the torch backend; and, needing no library, a model of the user's that takes dict
batches and returns ``.logits``. Each library is optional (the ``libraries`` extra): its
tests are skipped without it. The figures asserted are the parameter count (exact), the
forward FLOPs of one sample (what ``FlopCounterMode`` counts, attention included on the
CPU), the MACs (fvcore traced the model as inference calls it), a row in the report, and
the cache hit.

Then what the libraries needed: a fused attention counted on the CPU as an eager one, and a
Keras model built alike every time, its layers in its fingerprints.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pytest_batchprof.data.description import DataDescription
from pytest_batchprof.experiment.code import model_code
from pytest_batchprof.experiment.models import PreparedModel, prepare_model
from pytest_batchprof.measuring.metrics import count_flops

BASE = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
        "--device", "cpu", "--no-co2", "--epochs", "1", "--batchprof-inference-batch-size", "1")
"""Every inner session: on the CPU, no CO2 metering, one epoch, latency timed at batch 1
(a ResNet-18's inference at batch 16 takes seconds of timed repeats on the CPU)."""

CONFTEST = """
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import torch

import pytest_batchprof


def learnable(shape, classes, counts, seed, noise=0.3):
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(classes, *shape, generator=generator)
    splits = []
    for count in counts:
        labels = torch.arange(count) % classes
        splits.append((prototypes[labels] + noise * torch.randn(count, *shape,
                                                                generator=generator), labels))
    return splits


class Sentences(torch.utils.data.Dataset):
    \"\"\"Padded token sequences whose first tokens tell their class: dict items, as a
    tokenizer's output and its labels.\"\"\"

    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(count) % 3
        lengths = torch.randint(6, 13, (count,), generator=generator)
        self.mask = (torch.arange(12) < lengths[:, None]).long()
        ids = torch.randint(4, 30, (count, 12), generator=generator)
        ids[:, :3] = 1 + self.labels[:, None]
        self.ids = ids * self.mask

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "attention_mask": self.mask[index],
                "labels": self.labels[index]}


pytest_batchprof.register_dataset("lib-images", *learnable((3, 32, 32), 10, (40, 20), seed=0))
pytest_batchprof.register_dataset("lib-flat", *learnable((784,), 10, (200, 50), seed=1))
pytest_batchprof.register_dataset("lib-tokens", train=Sentences(120, 0), test=Sentences(30, 1),
                                  val=Sentences(30, 2), num_classes=3)
"""

RECORD = """
import json

import pytest


def record(run, label):
    \"\"\"What the outer test compares between the two sessions.\"\"\"
    weights = [float(tensor.double().sum()) for tensor in run.model.state_dict().values()
               if tensor.is_floating_point()]
    flops = run.measurements.flops
    figures = {"name": run.name, "lr": run.config.lr, "params": run.params,
               "flops": run.flops, "macs": flops.macs, "train_flops": flops.train_flops,
               "notes": list(flops.notes), "test_accuracy": run.test_accuracy,
               "test_loss": run.test_loss, "train_loss": run.history[-1].train_loss,
               "weights": weights}
    with open(f"{label}.json", "w") as file:
        json.dump(figures, file)
"""

TESTS = {
    "dict_batches": """
from dataclasses import dataclass

import torch
from torch import nn

from record import record


@dataclass
class Output:
    logits: torch.Tensor


class MeanOfEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return Output(self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1)))


@pytest.mark.dataset("lib-tokens")
def test_dict_batches(trained_model):
    run = trained_model(MeanOfEmbeddings, batch_size=16, lr=3e-2)
    record(run, "dict_batches")
""",
    "torchvision": """
import functools

from torchvision.models import resnet18

from record import record


@pytest.mark.dataset("lib-images")
def test_resnet18(trained_model):
    run = trained_model(functools.partial(resnet18, num_classes=10), batch_size=16, lr=1e-3)
    record(run, "torchvision")
""",
    "timm": """
import functools

import timm

from record import record


@pytest.mark.dataset("lib-images")
def test_timm(trained_model):
    run = trained_model(functools.partial(timm.create_model, "test_vit", pretrained=False,
                                          num_classes=10, img_size=32), batch_size=16, lr=1e-3)
    record(run, "timm")
""",
    "transformers": """
from transformers import BertConfig, BertForSequenceClassification

from record import record


def tiny_bert():
    return BertForSequenceClassification(BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3))


@pytest.mark.dataset("lib-tokens")
def test_bert(trained_model):
    run = trained_model(tiny_bert, batch_size=16, lr=1e-2)
    assert run.config.data_feed == "DataLoader"
    record(run, "transformers")
""",
    "keras": """
import keras

from record import record


def keras_mlp():
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10)])


@pytest.mark.dataset("lib-flat")
def test_keras(trained_model):
    run = trained_model(keras_mlp, batch_size=32, lr=1e-3)
    record(run, "keras")


@pytest.mark.dataset("lib-flat")
def test_keras_seeds(trained_model):
    repeated = trained_model(keras_mlp, batch_size=32, lr=2e-3, repeats=2)
    for run in repeated.runs:  # torch.func cannot stack a Keras model's weights
        assert run.ensemble.startswith("trained alone: a Keras model computes with its own")
""",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Train on one CPU thread (two cores shared with other processes); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def library(name: str) -> object:
    """``name`` imported, or a skip when it is not installed."""
    return pytest.importorskip(name)


# The libraries are imported by module-scoped fixtures, before ``pytester`` snapshots
# ``sys.modules``: what a test imports after that is forgotten when it ends, and a library
# imported again fails (ml_dtypes, which Keras imports, registers its NumPy types once per
# process), or leaves a lazy module's class naming a module no longer imported, whose file
# the code fingerprint cannot find (transformers' BertForSequenceClassification).


@pytest.fixture(scope="module")
def torchvision_models() -> object:
    return library("torchvision.models")


@pytest.fixture(scope="module")
def timm() -> object:
    return library("timm")


@pytest.fixture(scope="module")
def transformers() -> object:
    module = library("transformers")
    library("transformers.models.bert.modeling_bert")
    return module


@pytest.fixture(scope="module")
def keras(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Keras on the torch backend, its config file written to a temporary directory."""
    with pytest.MonkeyPatch.context() as patch:
        if "keras" not in sys.modules:
            patch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
            patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras-home")))
        module = library("keras")
    if module.backend.backend() != "torch":
        pytest.skip(f"keras runs on the {module.backend.backend()} backend (KERAS_BACKEND), "
                    f"not torch")
    return module


def sessions(pytester: pytest.Pytester, label: str, tests: int = 1) -> (
        tuple[dict, list[dict]]):
    """Two sessions of the ``label`` tests with one cache: what the recorded run's figures
    were (the same in both), and the second's report rows. Asserts that the first trained
    and the second loaded."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(record=RECORD, **{f"test_{label}": "import pytest\n" + TESTS[label]})
    cache = pytester.path / "cache"
    figures = []
    for session in ("first", "second"):
        result = pytester.runpytest(*BASE, f"--batchprof-cache={cache}",
                                    f"--batchprof-report={pytester.path / session}")
        result.assert_outcomes(passed=tests)
        text = result.stdout.str()
        if session == "first":
            assert "batchprof: training " in text and "from the cache" not in text, text
        else:
            assert "batchprof: training " not in text, text
            result.stdout.fnmatch_lines(["batchprof: loaded * from the cache"])
        figures.append(json.loads((pytester.path / f"{label}.json").read_text()))
    rows = json.loads((pytester.path / "second" / "latest.json").read_text())["rows"]
    first, second = figures
    assert first == second
    return first, rows


def forward_flops(model: torch.nn.Module, *args: object, **kwargs: object) -> int:
    """What FlopCounterMode counts for one forward pass of ``model`` in eval mode."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops()


def assert_row(rows: list[dict], figures: dict) -> None:
    """The report's row of the recorded run holds its figures, and a code fingerprint (the
    run was cacheable); fvcore traced the model as inference calls it (MACs)."""
    (row,) = [row for row in rows if row["lr"] == figures["lr"] and row["seed"] == 0]
    assert row["model"] == figures["name"]
    assert (row["params"], row["flops"], row["macs"]) == (
        figures["params"], figures["flops"], figures["macs"])
    assert row["code"] is not None and row["architecture"] is not None
    assert figures["macs"] > 0, figures["notes"]


def test_dict_batches_into_a_model_returning_logits(pytester: pytest.Pytester) -> None:
    """The convention the libraries' models follow, without any of them: items that are
    dicts, the model called with their inputs by name, its scores in ``.logits``."""
    figures, rows = sessions(pytester, "dict_batches")
    assert figures["params"] == 32 * 8 + 8 * 3 + 3
    assert figures["flops"] == 2 * 8 * 3  # the head: embedding lookups and means are free
    assert_row(rows, figures)


def test_torchvision_resnet18(pytester: pytest.Pytester, torchvision_models: object) -> None:
    figures, rows = sessions(pytester, "torchvision")
    model = torchvision_models.resnet18(num_classes=10)
    assert figures["params"] == 11_181_642
    assert figures["flops"] == forward_flops(model, torch.zeros(1, 3, 32, 32)) > 0
    assert_row(rows, figures)


def test_timm_model(pytester: pytest.Pytester, timm: object) -> None:
    figures, rows = sessions(pytester, "timm")
    model = timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=32)
    assert figures["params"] == 300_746 == sum(param.numel() for param in model.parameters())
    for module in model.modules():  # eager attention: its matrix products are counted
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    assert figures["flops"] == forward_flops(model, torch.zeros(1, 3, 32, 32)) > 0
    assert_row(rows, figures)


def test_tiny_transformers_model_on_dict_batches(pytester: pytest.Pytester,
                                                 transformers: object) -> None:
    figures, rows = sessions(pytester, "transformers")
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        attn_implementation="eager")
    model = transformers.BertForSequenceClassification(config)
    assert figures["params"] == 3_379 == sum(param.numel() for param in model.parameters())
    eager = forward_flops(model, input_ids=torch.ones(1, 12, dtype=torch.int64))
    assert figures["flops"] == eager > 0
    assert_row(rows, figures)


def test_keras_sequential(pytester: pytest.Pytester, keras: object) -> None:
    figures, rows = sessions(pytester, "keras", tests=2)
    assert figures["params"] == 784 * 128 + 128 + 128 * 10 + 10
    assert figures["flops"] == 2 * (784 * 128 + 128 * 10)
    assert_row(rows, figures)


# ---------------------------------------------------------------- attention FLOPs


class Attention(nn.Module):
    """One head-split self-attention, fused (``scaled_dot_product_attention``) or eager
    (two ``matmul`` and a softmax): the same computation."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        query, key, value = self.qkv(tokens).view(batch, length, 3, 2, 8).permute(2, 0, 3, 1, 4)
        if self.fused:
            mixed = F.scaled_dot_product_attention(query, key, value)
        else:
            weights = torch.softmax(query @ key.transpose(-2, -1) / math.sqrt(8), dim=-1)
            mixed = weights @ value
        return self.head(mixed.transpose(1, 2).flatten(2).mean(1))


def test_fused_attention_counts_on_the_cpu_as_eager_attention_does() -> None:
    """On the CPU, ``scaled_dot_product_attention`` runs as an operator torch's
    FlopCounterMode has no formula for, and fvcore has no handle for: both counters give
    it its two matrix products, as they count an eager attention's."""
    one = torch.randn(1, 10, 16)
    fused, eager = count_flops(Attention(True), one), count_flops(Attention(False), one)
    products = 2 * (2 * 10 * 10 * 8) * 2  # 2 matmuls of (2 heads, 10x8 by 8x10), 2 per MAC
    linear = 2 * (10 * 16 * 48 + 16 * 4)
    assert fused.forward_flops == eager.forward_flops == linear + products
    assert fused.macs == eager.macs == (linear + products) // 2
    assert fused.notes == eager.notes == ()
    # The fused backward pass recomputes Q Kᵀ, as torch counts its CUDA kernels.
    assert fused.train_flops == eager.train_flops + products // 2


# ---------------------------------------------------------------- Keras models' identity

KERAS_MODELS = """
import keras


class Scale(keras.layers.Layer):
    def build(self, shape):
        self.factor = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.factor


def relu_net():
    return keras.Sequential([keras.Input((4,)), Scale(), keras.layers.Dense(3, activation="relu"),
                             keras.layers.Dense(2)])


def tanh_net():
    return keras.Sequential([keras.Input((4,)), Scale(), keras.layers.Dense(3, activation="tanh"),
                             keras.layers.Dense(2)])
"""


def test_a_keras_model_builds_alike_and_its_layers_are_fingerprinted(
        pytester: pytest.Pytester, keras: object) -> None:
    """Two builds with one seed have the same ``state_dict`` keys and weights (another seed
    other weights); a layer's settings are in the architecture fingerprint, and the file
    of a layer class of the user's in the code fingerprint, though Keras layers are not
    torch submodules."""
    path = pytester.makepyfile(keras_models=KERAS_MODELS)
    pytester.syspathinsert()
    module = importlib.import_module("keras_models")
    data = DataDescription((4,), 2)

    def built(factory: object, seed: int = 0) -> tuple[PreparedModel, nn.Module]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            prepared = prepare_model(factory, data)
            torch.manual_seed(seed)
            return prepared, prepared.build()

    try:
        relu, first = built(module.relu_net)
        again, second = built(module.relu_net)
        _, reseeded = built(module.relu_net, seed=1)
        tanh, _ = built(module.tanh_net)
        layer_code = model_code(first)  # the layers' alone, without the factory's file
    finally:
        sys.modules.pop("keras_models", None)
    assert relu.params == 4 + 4 * 3 + 3 + 3 * 2 + 2
    assert first.state_dict().keys() == second.state_dict().keys()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert any(not torch.equal(tensor, reseeded.state_dict()[name])
               for name, tensor in first.state_dict().items())
    assert relu.architecture == again.architecture != tanh.architecture
    assert relu.uncached_reason is None
    file_part = f"file {hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert file_part in layer_code.parts and layer_code.reason is None
    assert any(part.startswith("library keras ") for part in layer_code.parts)
