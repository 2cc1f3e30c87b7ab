"""Measurements of a trained model: parameters, FLOPs, size, latency and peak memory.

Conventions, as the reference posts and the tools use them:

* FLOPs are floating-point operations of one sample (batch 1): 2 per
  multiply-add, as ``torch.utils.flop_counter.FlopCounterMode`` counts them
  (784-1024-10: 1,626,112). Bias additions and activations are not counted.
* MACs (multiply-accumulates) come from fvcore's ``FlopCountAnalysis``, which
  calls them "flops" but counts one per multiply-add (784-1024-10: 813,056). It
  traces the model as inference calls it (a model that takes a dict of inputs inside
  :class:`~pytest_batchprof.data.batches.BatchModel`).
* Training FLOPs per sample are forward plus backward (FlopCounterMode).
* Attention (``scaled_dot_product_attention``) counts its two matrix products on the CPU
  as on CUDA (:func:`attention_formulas`); the softmax is not counted.
* Sizes are bytes of ``torch.save`` output: the model's ``state_dict`` alone,
  and a checkpoint with the optimizer's state (what the posts called "size").
* Latency is seconds per sample: the median over timed blocks of
  ``torch.utils.benchmark.Timer`` (which warms up, and synchronises CUDA before
  reading its clock), divided by the inference batch size.
* Peak memory is the growth of the process's resident set size during
  training (the kernel's peak mark on Linux, sampled elsewhere), or
  ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import io
import logging
import math
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from pytest_batchprof.data.batches import (
    Inputs,
    batch_length,
    inputs_device,
    take_rows,
)
from pytest_batchprof.errors import one_line
from pytest_batchprof.measuring.carbon import Carbon, CarbonMeter

LATENCY_MIN_RUN_TIME = 0.05
"""Seconds of timed inference per latency figure, after the warm-up."""

LATENCY_BLOCK_SECONDS = 0.002
"""Target length of one timed block of calls: long against the clock's overhead."""

LATENCY_MIN_REPEATS = 20
"""Timed blocks per latency figure at least, so that the median and IQR mean something."""

RSS_SAMPLE_SECONDS = 0.02
"""How often the resident set size is sampled during training where the kernel keeps no peak."""

CO2_INFERENCE_SECONDS = 0.5
"""Seconds of repeated inference behind the CO2eq-per-1,000-inferences figure."""


@dataclass(frozen=True)
class FlopCount:
    """FLOPs and MACs of one sample; ``None`` with a reason in ``notes`` when not countable."""

    forward_flops: int | None
    train_flops: int | None
    macs: int | None
    macs_by_layer: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Latency:
    """Inference time per sample, in seconds, at one batch size."""

    batch_size: int
    median: float
    iqr: float
    minimum: float
    repeats: int
    per_repeat: int
    clock: str = "time.perf_counter"
    """What timed the blocks of calls: CUDA events on CUDA (:mod:`~pytest_batchprof.engine.
    clock`), torch.utils.benchmark's perf_counter elsewhere."""

    def describe(self) -> str:
        return (
            f"{self.median * 1e6:.2f} us/sample at batch {self.batch_size} "
            f"(IQR {self.iqr * 1e6:.2f} us, {self.repeats} repeats of {self.per_repeat})"
        )


@dataclass(frozen=True)
class PeakMemory:
    """Memory growth during training, in bytes, and how it was measured."""

    bytes: int
    method: str


@dataclass(frozen=True)
class Measurements:
    """Everything measured about a trained run besides its accuracy and training time."""

    params: int
    trainable_params: int
    flops: FlopCount
    state_dict_bytes: int
    checkpoint_bytes: int
    latency: Latency
    latency_single: Latency
    peak_memory: PeakMemory
    train_carbon: Carbon | None
    inference_carbon_per_1000: Carbon | None

    def summary(self) -> dict[str, object]:
        """Flat, JSON-ready figures; every name carries its unit."""
        figures: dict[str, object] = {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "flops": self.flops.forward_flops,
            "train_flops": self.flops.train_flops,
            "macs": self.flops.macs,
            "macs_by_layer": dict(self.flops.macs_by_layer),
            "flops_notes": list(self.flops.notes),
            "state_dict_bytes": self.state_dict_bytes,
            "checkpoint_bytes": self.checkpoint_bytes,
            "peak_memory_bytes": self.peak_memory.bytes,
            "peak_memory_method": self.peak_memory.method,
        }
        for prefix, latency in (("latency", self.latency), ("latency_single", self.latency_single)):
            figures.update({
                f"{prefix}_batch_size": latency.batch_size,
                f"{prefix}_median_s": latency.median,
                f"{prefix}_iqr_s": latency.iqr,
                f"{prefix}_min_s": latency.minimum,
                f"{prefix}_repeats": latency.repeats,
                f"{prefix}_clock": latency.clock,
            })
        for prefix, carbon in (("train", self.train_carbon),
                               ("inference_per_1000", self.inference_carbon_per_1000)):
            figures.update({
                f"{prefix}_energy_kwh": carbon.energy_kwh if carbon else None,
                f"{prefix}_co2eq_kg": carbon.co2eq_kg if carbon else None,
                f"{prefix}_co2_note": carbon.note if carbon else "off (--batchprof-no-co2)",
            })
        return figures


def measure(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    test_images: torch.Tensor,
    inference_batch_size: int,
    peak: PeakMemory,
    train_carbon: Carbon | None,
    meter: CarbonMeter | None,
    precision: str = "fp32",
) -> Measurements:
    """Measure a trained model; ``meter`` is ``None`` when CO2 is off. Latency and
    inference CO2eq are measured in the run's ``precision``; FLOPs count the model's
    operations, which precision does not change."""
    from pytest_batchprof.hardware.precision import in_precision

    inputs = inference_inputs(test_images, inference_batch_size)
    timed = in_precision(model, precision, inputs_device(inputs))
    one = take_rows(inputs, slice(0, 1))
    params, trainable = count_parameters(model)
    state_bytes, checkpoint_bytes = model_sizes(model, optimizer)
    return Measurements(
        params=params,
        trainable_params=trainable,
        flops=count_flops(model, one),
        state_dict_bytes=state_bytes,
        checkpoint_bytes=checkpoint_bytes,
        latency=measure_latency(timed, inputs),
        latency_single=measure_latency(timed, one),
        peak_memory=peak,
        train_carbon=train_carbon,
        inference_carbon_per_1000=(None if meter is None
                                   else inference_carbon(meter, timed, inputs)),
    )


def inference_carbon(meter: CarbonMeter, model: nn.Module, inputs: torch.Tensor,
                     seconds: float = CO2_INFERENCE_SECONDS) -> Carbon:
    """Energy and CO2eq per 1,000 inferences, from ``seconds`` of repeated batches."""
    predict = predictor(model, inputs)
    was_training = model.training
    model.eval()
    count = 0
    try:
        with meter.measure() as result:
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                predict()
                count += batch_length(inputs)
    finally:
        model.train(was_training)
    return result[0].scaled(1000 / count)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Total and trainable parameter counts (shared parameters counted once)."""
    parameters = list(model.parameters())
    return (sum(p.numel() for p in parameters),
            sum(p.numel() for p in parameters if p.requires_grad))


def count_flops(model: nn.Module, example: torch.Tensor) -> FlopCount:
    """Count the FLOPs and MACs of ``model`` on ``example``, a batch of one sample.

    Each counter fails alone: a model fvcore cannot trace keeps its
    FlopCounterMode figures, and the reason goes into ``notes``.
    """
    if batch_length(example) != 1:
        raise ValueError(f"FLOPs are counted for one sample; got a batch of "
                         f"{batch_length(example)}")
    notes: list[str] = []
    was_training = model.training
    model.eval()
    try:
        forward, train = _flop_counter(model, example, notes)
        macs, by_layer = _fvcore_macs(model, example, notes)
    finally:
        model.train(was_training)
    if forward is not None and macs is not None and forward != 2 * macs:
        notes.append(f"the counters disagree: FlopCounterMode {forward:,} FLOPs, "
                     f"fvcore {macs:,} MACs (expected FLOPs = 2 x MACs)")
    return FlopCount(forward, train, macs, by_layer, tuple(notes))


def _cpu_attention_flops(query_shape: torch.Size, key_shape: torch.Size,
                         value_shape: torch.Size, *args: object, out_shape: object = None,
                         **kwargs: object) -> int:
    """FLOPs of the CPU's fused attention: torch's formula for the CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape: torch.Size, query_shape: torch.Size,
                                  key_shape: torch.Size, value_shape: torch.Size,
                                  *args: object, out_shape: object = None,
                                  **kwargs: object) -> int:
    """FLOPs of the CPU's fused attention's backward pass: torch's formula for CUDA's."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def attention_formulas() -> dict[object, Callable[..., int]]:
    """FlopCounterMode formulas for the operators ``scaled_dot_product_attention`` runs as
    on the CPU, which torch's registry lacks (it has the CUDA kernels'): without them a
    transformer's attention counts 0 FLOPs on the CPU and its full matmuls on CUDA, and
    the same model's FLOPs would hang on the device. The attention is counted as its two
    matrix products, as an eager (unfused) attention's ``bmm`` are; the softmax is not,
    by either. A torch that registers the operators itself keeps its own formulas."""
    aten = torch.ops.aten
    formulas: dict[object, Callable[..., int]] = {}
    for name, formula in (
            ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention_flops),
            ("_scaled_dot_product_flash_attention_for_cpu_backward",
             _cpu_attention_backward_flops)):
        operator = getattr(aten, name, None)
        if operator is not None and operator not in flop_registry:
            formulas[operator] = formula
    return formulas


def _flop_counter(model: nn.Module, example: torch.Tensor, notes: list[str]) -> (
        tuple[int | None, int | None]):
    """Forward FLOPs, then forward + backward FLOPs; each fails alone, with a note."""
    formulas = attention_formulas()
    try:
        with torch.no_grad(), FlopCounterMode(display=False,
                                              custom_mapping=formulas) as counter:
            model(example)
        forward = counter.get_total_flops()
    except Exception as error:  # any model-specific failure becomes n/a, never a crash
        notes.append(f"FlopCounterMode failed: {one_line(error)}")
        return None, None
    try:
        parameters = [p for p in model.parameters() if p.requires_grad]
        with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
            output = model(example)
            torch.autograd.grad(output.float().sum(), parameters)  # leaves .grad untouched
        return forward, counter.get_total_flops()
    except Exception as error:
        notes.append(f"FlopCounterMode failed (training FLOPs): {one_line(error)}")
        return forward, None


def _attention_macs(inputs: list, outputs: list) -> int:
    """fvcore's count of ``scaled_dot_product_attention``, which it has no handle for: the
    multiply-adds of its two matrix products (``Q Kᵀ`` and the weights times ``V``), as
    fvcore counts an eager attention's ``matmul``; 0 when the traced shapes are unknown."""
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(operand) for operand in inputs[:3])
    if query is None or key is None or value is None:
        return 0
    matrices = math.prod(query[:-2])  # batch x heads
    return matrices * query[-2] * key[-2] * (query[-1] + value[-1])


def _fvcore_macs(model: nn.Module, example: torch.Tensor, notes: list[str]) -> (
        tuple[int | None, dict[str, int]]):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, example)
            analysis.set_op_handle("aten::scaled_dot_product_attention", _attention_macs)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            by_module = analysis.by_module()
    except Exception as error:
        notes.append(f"fvcore could not trace the model: {one_line(error)}")
        return None, {}
    layers = {name: int(count) for name, count in by_module.items()
              if name and "." not in name and count}
    return total, layers


def serialized_bytes(obj: object) -> int:
    """Bytes that ``torch.save(obj)`` writes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def model_sizes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[int, int]:
    """Bytes of the model's ``state_dict``, and of a checkpoint with the optimizer state
    (without an optimizer, the checkpoint is the ``state_dict``)."""
    state = model.state_dict()
    if optimizer is None:
        size = serialized_bytes(state)
        return size, size
    return (serialized_bytes(state),
            serialized_bytes({"model": state, "optimizer": optimizer.state_dict()}))


def inference_inputs(images: Inputs, batch_size: int) -> Inputs:
    """A batch of ``batch_size`` inputs taken (cyclically) from ``images`` (a tensor, or the
    tuple or mapping of tensors a model takes)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"inference batch size must be a whole number >= 1, got {batch_size!r}")
    index = torch.arange(batch_size, device=inputs_device(images)) % batch_length(images)
    return take_rows(images, index)


def predictor(model: nn.Module, inputs: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument callable that runs one inference batch, for timers.

    It synchronises the device before returning, so wall-clock timers such as
    pytest-benchmark's measure finished work on CUDA too.
    """
    from pytest_batchprof.hardware.devices import synchronize

    def predict() -> torch.Tensor:
        with torch.inference_mode():
            output = model(inputs)
        synchronize(inputs_device(inputs))
        return output

    return predict


def measure_latency(model: nn.Module, inputs: torch.Tensor,
                    min_run_time: float = LATENCY_MIN_RUN_TIME) -> Latency:
    """Time ``model(inputs)`` in eval mode with ``torch.utils.benchmark.Timer``.

    After a warm-up that also estimates the cost of one call, blocks of calls
    lasting about :data:`LATENCY_BLOCK_SECONDS` are timed until there are at
    least :data:`LATENCY_MIN_REPEATS` of them and ``min_run_time`` has passed.
    (``Timer.blocked_autorange`` grows its blocks tenfold at a time, which
    leaves one or two blocks for a fast model: no spread to report.)
    """
    if inputs_device(inputs).type == "cuda":
        return _latency_by_cuda_events(model, inputs, min_run_time)
    Measurement, Timer = benchmark_timer()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            timer = Timer(stmt="model(inputs)", globals={"model": model, "inputs": inputs},
                          num_threads=torch.get_num_threads())
            per_call = timer.timeit(1).median
            warmup = max(1, min(100, int(LATENCY_BLOCK_SECONDS / max(per_call, 1e-9))))
            per_call = timer.timeit(warmup).median
            number = max(1, round(LATENCY_BLOCK_SECONDS / max(per_call, 1e-9)))
            blocks = []
            started = time.perf_counter()
            while (len(blocks) < LATENCY_MIN_REPEATS
                   or time.perf_counter() - started < min_run_time):
                blocks.append(timer.timeit(number))
            (measurement,) = Measurement.merge(blocks)
    finally:
        model.train(was_training)
    batch = batch_length(inputs)
    return Latency(
        batch_size=batch,
        median=measurement.median / batch,
        iqr=measurement.iqr / batch,
        minimum=min(measurement.times) / batch,
        repeats=len(blocks),
        per_repeat=number,
    )


def _latency_by_cuda_events(model: nn.Module, inputs: torch.Tensor,
                            min_run_time: float) -> Latency:
    """:func:`measure_latency` on CUDA: each block of calls is timed by a pair of CUDA events
    around it, with one host wait at its end and none inside it."""
    from pytest_batchprof.hardware.clock import Stopwatch

    stopwatch = Stopwatch(inputs_device(inputs))
    was_training = model.training
    model.eval()

    def block(number: int) -> float:
        stopwatch.start()
        for _ in range(number):
            model(inputs)
        return stopwatch.stop() / number

    try:
        with torch.inference_mode():
            per_call = block(1)
            block(max(1, min(100, int(LATENCY_BLOCK_SECONDS / max(per_call, 1e-9)))))
            number = max(1, round(LATENCY_BLOCK_SECONDS / max(block(10), 1e-9)))
            times: list[float] = []
            started = time.perf_counter()
            while (len(times) < LATENCY_MIN_REPEATS
                   or time.perf_counter() - started < min_run_time):
                times.append(block(number))
    finally:
        model.train(was_training)
    batch = batch_length(inputs)
    quartiles = statistics.quantiles(times, n=4)
    return Latency(batch_size=batch, median=statistics.median(times) / batch,
                   iqr=(quartiles[2] - quartiles[0]) / batch, minimum=min(times) / batch,
                   repeats=len(times), per_repeat=number, clock=stopwatch.name)


class PeakMemoryMeter:
    """Measures memory growth over a ``with`` block; ``result`` holds it afterwards, and
    :meth:`reached` tells the growth so far while the block runs (a memory budget reads it).

    On CUDA the allocator's own statistics (``max_memory_allocated``). On Linux
    the kernel keeps the process's peak RSS (``VmHWM``), which can be reset
    through ``/proc/self/clear_refs``: exact and free. Elsewhere a thread
    samples the RSS; on two cores that costs the training loop several percent.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: PeakMemory | None = None
        self._before = 0
        self._sampled: list[int] | None = None
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None
        self.method = ""

    def __enter__(self) -> PeakMemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated growth"
            return self
        process = psutil.Process()
        if _reset_peak_rss():
            self._before = process.memory_info().rss
            self.method = "process peak RSS growth (Linux VmHWM)"
            return self
        self._before = process.memory_info().rss
        self._sampled = [self._before]
        self.method = f"process RSS growth, sampled every {RSS_SAMPLE_SECONDS * 1e3:g} ms"

        def sample() -> None:
            while not self._done.wait(RSS_SAMPLE_SECONDS):
                self._sampled[0] = max(self._sampled[0], process.memory_info().rss)

        self._sampler = threading.Thread(target=sample, name="batchprof-rss", daemon=True)
        self._sampler.start()
        return self

    def reached(self) -> int:
        """The growth, in bytes, from the start of the block to its highest point so far."""
        if self.device.type == "cuda":
            return max(torch.cuda.max_memory_allocated(self.device) - self._before, 0)
        current = psutil.Process().memory_info().rss
        if self._sampled is None:
            return max(max(_peak_rss(), current) - self._before, 0)
        self._sampled[0] = max(self._sampled[0], current)
        return max(self._sampled[0] - self._before, 0)

    def __exit__(self, *exc_info: object) -> None:
        if self._sampler is not None:
            self._done.set()
            self._sampler.join()
        self.result = PeakMemory(max(self.reached(), 0), self.method)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where that is not possible."""
    try:
        _peak_rss()
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, ValueError):
        return False
    return True


def _peak_rss() -> int:
    """``VmHWM`` of ``/proc/self/status``, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no VmHWM in /proc/self/status")


def benchmark_timer() -> tuple[type, type]:
    """``torch.utils.benchmark``'s Measurement and Timer, imported quietly.

    Importing it loads ``torch.utils.cpp_extension``, which logs a warning on a
    CUDA build of torch without a CUDA runtime; that is no news to the user.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Measurement, Timer
    finally:
        logger.setLevel(level)
    return Measurement, Timer
