"""Latency: direct measurement on the machine running the search, and a lookup table that predicts
a policy's latency in microseconds.

Measurement (:func:`measure`) follows what CPU timing needs to be trusted: one thread, warm-up,
candidates *interleaved* round by round (so a noisy neighbour slows all of them alike), and the
median of many samples, each of back-to-back calls lasting at least :data:`SAMPLE_S`. Not one call
per sample: the first call after another model's finds the caches cold. Timed one call per sample,
three pruned MobileNetV2s measured 60-62% of dense; in 10 ms samples, what a serving loop sees,
55-58%, and steadier from round to round (benchmarks/README.md, *Latency-constrained search*).

The table (:class:`LatencyTable`) times every prunable Conv/Linear layer alone, on a grid of kept
(output, input) widths, in the target runtime, and interpolates between grid points. Identical
layers (ResNet blocks of one stage) share measurements. What the layers do not cover (BatchNorm,
activations, additions, pooling, framework overhead) is fitted as ``a + b * activation size`` from
a few whole-model measurements, together with a scale on the summed layer times: a layer run
alone pays per-call overhead (input copies, output allocation) and misses the fusions the runtime
applies in the whole graph (onnxruntime folds BatchNorm into the conv and fuses activations).
Tables are cached on disk, keyed by model, input shape, runtime
and machine, so they are measured once.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import io
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.costs import Dim
from autoprune.run_directory import write_atomically
from autoprune.search_spaces import SearchSpace

__all__ = ["RUNTIMES", "LatencyTable", "Timing", "make_runner", "measure", "measure_latency", "time_against_dense"]

RUNTIMES = ("torch", "onnxruntime")
CACHE_ENV = "AUTOPRUNE_CACHE"
TABLE_FORMAT = 3  # part of the cache key: tables measured or fitted differently are rebuilt
# Random whole models the remainder is fitted on: with 8, the fit of ResNet-20 and MobileNetV2 at torch
# batch 64 swung from run to run (median ratio error 17.5% and 23.0% in one quiet run, 7.6% and 5.6% with 24).
CALIBRATION_POLICIES = 24
# Copies of the dense model timed side by side; their median is the dense latency. Every fractional
# latency budget divides by it, so one slow reading biases every ratio alike: a table whose single
# dense copy read 170 ms where the check read 121 ms predicted every ratio of ResNet-20 at torch
# batch 64 15-30% low, while its absolute predictions of the pruned models were right.
DENSE_COPIES = 3


@contextmanager
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_runner(model: nn.Module, x: torch.Tensor, runtime: str = "torch") -> Callable[[], Any]:
    """A zero-argument callable running one inference of ``model`` on ``x`` in ``runtime``."""
    model.eval()
    if runtime == "torch":
        def run_torch() -> Any:
            with torch.inference_mode():
                return model(x)
        return run_torch
    if runtime == "onnxruntime":
        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter takes ~0.05 s a layer; the dynamo one takes seconds. Same graph here.
            torch.onnx.export(model, (x,), buffer, input_names=["input"], dynamo=False)  # type: ignore[arg-type]
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        # Bind input and output buffers once: a plain run() copies the input and allocates the
        # output on every call, which is not what a deployed model pays per layer.
        x_np = np.ascontiguousarray(x.numpy())
        with torch.inference_mode():
            y_np = np.empty(tuple(model(x).shape), dtype=np.float32)
        binding = session.io_binding()
        binding.bind_cpu_input("input", x_np)
        binding.bind_output(session.get_outputs()[0].name, "cpu", 0, np.float32, list(y_np.shape), y_np.ctypes.data)
        buffers = (x_np, y_np)  # onnxruntime holds raw pointers: keep the arrays alive with the runner

        def run_ort() -> Any:
            session.run_with_iobinding(binding)
            return buffers[1]
        return run_ort
    raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")


SAMPLE_S = 1e-2  # seconds of back-to-back calls per sample at the least (see the module docstring)
LAYER_SAMPLE_S = 1e-3  # a layer run alone: called thousands of times a sample, warm all along


def measure(runners: Mapping[str, Callable[[], Any]], *, repeats: int = 15, warmup: int = 2,
            min_sample_s: float = SAMPLE_S) -> dict[str, float]:
    """Median seconds per call of each runner, measured interleaved on one thread."""
    with _one_thread():
        inner = {}
        for name, run in runners.items():
            for _ in range(warmup):
                run()
            t = time.perf_counter()
            run()
            once = max(time.perf_counter() - t, 1e-7)
            inner[name] = max(1, math.ceil(min_sample_s / once))
        samples: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                run, n = runners[name], inner[name]
                t = time.perf_counter()
                for _ in range(n):
                    run()
                samples[name].append((time.perf_counter() - t) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure_latency(model: nn.Module, x: torch.Tensor, runtime: str = "torch", *, repeats: int = 15) -> float:
    """Median latency in seconds of ``model`` on ``x`` (one thread)."""
    return measure({"m": make_runner(model, x, runtime)}, repeats=repeats)["m"]


@dataclass(frozen=True)
class Timing:
    """A pruned model timed against its dense one in rounds of :func:`measure`; the medians over rounds count.

    One round's ratio moves by 5-8 points of dense latency on a loaded 2-core machine, the median of seven
    by about one (benchmarks/README.md, *Latency-constrained search*): one noisy round must not decide."""

    rounds: list[dict[str, float]]  # seconds per call of "dense" and "pruned", one entry per round

    @property
    def ratios(self) -> list[float]:
        return [r["pruned"] / r["dense"] for r in self.rounds]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def ms(self, name: str) -> float:
        """The median milliseconds per call of ``"dense"`` or ``"pruned"``."""
        return statistics.median(r[name] for r in self.rounds) * 1e3


def time_against_dense(dense: Callable[[], Any], pruned: Callable[[], Any], rounds: int, *,
                       repeats: int = 30) -> Timing:
    """The runners ``dense`` and ``pruned`` measured interleaved, ``rounds`` times."""
    runners = {"dense": dense, "pruned": pruned}
    return Timing([measure(runners, repeats=repeats) for _ in range(rounds)])


# ---------------------------------------------------------------------------------------------
@dataclass
class _TableLayer:
    name: str
    out_grid: np.ndarray
    in_grid: np.ndarray  # a single 1 for depthwise convs (input tied to output)
    seconds: np.ndarray  # (len(out_grid), len(in_grid))

    def predict(self, out: int, inp: int) -> float:
        return float(_interp2(self.out_grid, self.in_grid, self.seconds, out, inp))


def _interp2(xg: np.ndarray, yg: np.ndarray, z: np.ndarray, x: float, y: float) -> float:
    def locate(grid: np.ndarray, v: float) -> tuple[int, int, float]:
        if len(grid) == 1:
            return 0, 0, 0.0
        i = int(np.clip(np.searchsorted(grid, v) - 1, 0, len(grid) - 2))
        return i, i + 1, float(np.clip((v - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0))
    i0, i1, fx = locate(xg, x)
    j0, j1, fy = locate(yg, y)
    return ((1 - fx) * (1 - fy) * z[i0, j0] + fx * (1 - fy) * z[i1, j0]
            + (1 - fx) * fy * z[i0, j1] + fx * fy * z[i1, j1])


@dataclass
class LatencyTable:
    """Predicts a policy's latency from per-layer measurements (see the module docstring).

    Build with :meth:`build`; then ``space.attach_latency(table)`` makes ``space.costs(policy)``
    carry a predicted ``latency`` that budgets, the environment's action wall and the projection use.
    """

    runtime: str
    batch: int
    key: str
    layers: list[_TableLayer]
    activation: dict[str, int]  # per Conv/Linear layer: output positions per output channel
    calibration: tuple[float, float, float]  # latency = a + c * sum(layer times) + b * activation ratio
    dense_measured: float
    build_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    _compiled: dict[int, _Compiled] = field(default_factory=dict, repr=False, compare=False)

    def _activation(self, sizes: Mapping[str, tuple[int, int]]) -> float:
        return float(sum(sizes[n][0] * per for n, per in self.activation.items()))

    def _features(self, sizes: Mapping[str, tuple[int, int]], dense_activation: float) -> list[float]:
        return [1.0, sum(t.predict(*sizes[t.name]) for t in self.layers), self._activation(sizes) / dense_activation]

    def predict(self, space: SearchSpace, keep: np.ndarray) -> float:
        """Predicted seconds per inference when group ``i`` keeps ``keep[i]`` units (tens of microseconds)."""
        compiled = self._compiled.get(id(space))
        if compiled is None:
            compiled = self._compiled[id(space)] = _Compiled(self, space)
        return compiled(keep)

    def _dense_activation(self, space: SearchSpace) -> float:
        if "dense_activation" not in self.meta:
            self.meta["dense_activation"] = self._activation(space.cost_model.layer_sizes(space.cost_model.units))
        return float(self.meta["dense_activation"])

    # ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, space: SearchSpace, *, runtime: str = "torch", batch: int = 1,
              levels: int = 8, repeats: int = 9, calibration_policies: int = CALIBRATION_POLICIES, chunk: int = 32,
              cache_dir: str | os.PathLike[str] | None = None,
              show_progress: bool = True) -> LatencyTable:
        """Measure (or load from the cache) the table of ``model`` for ``runtime`` and ``batch``."""
        from autoprune.progress import track_progress

        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        cm = space.cost_model
        in_shape = tuple(cm.shapes[cm.layer_names[0]][0][1:])  # first layer's input (C, H, W)
        candidates = _candidate_keeps(space, levels)
        key = _table_key(model, in_shape, runtime, batch, calibration_policies, [c.tolist() for c in candidates],
                         TABLE_FORMAT)
        cache = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoprune") / "latency"
        path = cache / f"{key}.json"
        if path.exists():
            return cls._load(path)
        start = time.perf_counter()
        modules = dict(model.named_modules())
        plans = []  # (layer name, out grid, in grid, depthwise)
        priced = dict(zip(cm.layer_names, cm.layers, strict=True))
        for name in cm.layer_names:
            module = modules.get(name)
            if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                continue
            layer = priced[name]
            if not layer.out.terms and not layer.inp.terms:
                continue  # never pruned: part of the constant remainder

            def grid(dim: Dim) -> np.ndarray:
                # the sizes the dimension takes when its groups are at the same candidate level
                levels = max((len(candidates[g]) for g, _ in dim.terms), default=1)
                return np.unique([dim.dense - sum(k * (cm.units[g] - candidates[g][min(level, len(candidates[g]) - 1)])
                                                  for g, k in dim.terms) for level in range(levels)])
            depthwise = isinstance(module, (nn.Conv1d, nn.Conv2d)) and layer.inp.dense == 1 and module.groups > 1
            plans.append((name, grid(layer.out), np.array([1]) if depthwise else grid(layer.inp), depthwise))
        signatures: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {}
        cells: list[list[str]] = []
        for name, out_grid, in_grid, depthwise in plans:
            row = []
            for out in out_grid:
                for inp in in_grid:
                    sig, factory = _standalone(modules[name], cm.shapes[name][0], int(out), int(inp), depthwise, batch)
                    row.append(sig)
                    signatures.setdefault(sig, factory)
            cells.append(row)
        seconds: dict[str, float] = {}
        # Layers are timed interleaved, a chunk at a time: load that comes and goes while the table
        # is built then slows every entry of a chunk alike instead of skewing a few of them.
        names = list(signatures)
        with track_progress(f"latency table ({runtime}, batch {batch})", len(names), enabled=show_progress) as bar:
            for start_i in range(0, len(names), chunk):
                runners = {}
                for sig in names[start_i:start_i + chunk]:
                    layer_module, layer_input = signatures[sig]()
                    runners[sig] = make_runner(layer_module, layer_input, runtime)
                seconds.update(measure(runners, repeats=repeats, min_sample_s=LAYER_SAMPLE_S))
                bar.advance(len(runners))
        layers = [_TableLayer(name, out_grid, in_grid, np.array([seconds[s] for s in row]).reshape(len(out_grid), -1))
                  for (name, out_grid, in_grid, _), row in zip(plans, cells, strict=True)]
        activation = {n: math.prod(cm.shapes[n][1][2:]) if isinstance(modules[n], (nn.Conv1d, nn.Conv2d))
                      else math.prod(cm.shapes[n][1][1:-1]) or 1
                      for n in cm.layer_names if isinstance(modules.get(n), (nn.Conv1d, nn.Conv2d, nn.Linear))}
        table = cls(runtime, batch, key, layers, activation, (0.0, 1.0, 0.0), 0.0)
        # Calibrate on whole models: dense, uniform policies across the bounds and random ones
        # (a fixed seed, so a rebuilt table is the same experiment).
        x = torch.randn(batch, *in_shape)
        top = max(g.high for g in space.groups)
        rng = np.random.default_rng(20181106)
        policies = [space.uniform(r) for r in np.linspace(0.0, top, 4)]
        policies += [space.sample(rng) for _ in range(calibration_policies)]
        runners = {str(i): make_runner(space.shaped_copy(model, p), x, runtime) for i, p in enumerate(policies)}
        runners.update(_dense_copies(model, x, runtime, DENSE_COPIES - 1))
        measured = measure(runners, repeats=repeats)
        measured["0"] = statistics.median(t for name, t in measured.items() if name == "0" or name.startswith("dense"))
        dense_act = table._dense_activation(space)
        rows = np.array([table._features(cm.layer_sizes(space.keep_units(p)), dense_act) for p in policies])
        target = np.array([measured[str(i)] for i in range(len(policies))])
        # The fit goes exactly through the dense model (policy 0): fractional budgets divide by its
        # latency, so an error there would skew every predicted ratio alike. The scale and the
        # activation term are fitted on the differences to dense, by relative least squares (every
        # model counts the same, however fast it is).
        weights = 1.0 / target[1:]
        delta = (rows[1:, 1:] - rows[0, 1:]) * weights[:, None]
        c, b = np.linalg.lstsq(delta, (target[1:] - target[0]) * weights, rcond=None)[0]
        a = target[0] - c * rows[0, 1] - b * rows[0, 2]
        table.calibration = (float(a), float(c), float(b))
        table.dense_measured = measured["0"]
        table.build_seconds = time.perf_counter() - start
        table.meta.update({"input_shape": list(in_shape), "levels": levels, "machine": _machine(),
                           "measured_signatures": len(signatures)})
        table._save(path)
        return table

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"runtime": self.runtime, "batch": self.batch, "key": self.key, "calibration": self.calibration,
                "dense_measured": self.dense_measured, "build_seconds": self.build_seconds, "meta": self.meta,
                "activation": self.activation,
                "layers": [{"name": t.name, "out_grid": t.out_grid.tolist(), "in_grid": t.in_grid.tolist(),
                            "seconds": t.seconds.tolist()} for t in self.layers]}
        write_atomically(path, json.dumps(blob))

    @classmethod
    def _load(cls, path: Path) -> LatencyTable:
        blob = json.loads(path.read_text())
        layers = [_TableLayer(t["name"], np.array(t["out_grid"]), np.array(t["in_grid"]), np.array(t["seconds"]))
                  for t in blob["layers"]]
        meta = dict(blob["meta"])
        meta["cache_file"] = str(path)
        return cls(blob["runtime"], blob["batch"], blob["key"], layers, blob["activation"],
                   tuple(blob["calibration"]), blob["dense_measured"], blob["build_seconds"], meta)  # type: ignore[arg-type]

    def check(self, model: nn.Module, space: SearchSpace, policies: Sequence[Mapping[str, float]], *,
              repeats: int = 15) -> list[dict[str, float]]:
        """Predicted vs directly measured latency of physically pruned ``policies``.

        The dense model (the median of ``DENSE_COPIES`` copies) is measured in the same interleaved
        rounds, so besides the absolute error each row has the error of the latency *ratio to dense*,
        which is what a fractional latency budget uses and which machine-wide drift (other
        processes, clock changes) cancels out of.
        """
        x = torch.randn(self.batch, *self.meta["input_shape"])
        runners = _dense_copies(model, x, self.runtime, DENSE_COPIES)
        runners.update({str(i): make_runner(space.shaped_copy(model, p), x, self.runtime)
                        for i, p in enumerate(policies)})
        measured = measure(runners, repeats=repeats)
        dense = statistics.median(t for name, t in measured.items() if name.startswith("dense"))
        dense_predicted = self.predict(space, space.cost_model.units)
        rows = []
        for i, p in enumerate(policies):
            predicted, m = self.predict(space, space.keep_units(p)), measured[str(i)]
            ratio_p, ratio_m = predicted / dense_predicted, m / dense
            rows.append({"predicted_s": predicted, "measured_s": m, "relative_error": abs(predicted - m) / m,
                         "predicted_ratio": ratio_p, "measured_ratio": ratio_m,
                         "ratio_error": abs(ratio_p - ratio_m) / ratio_m})
        return rows


class _Compiled:
    """The table laid out for one search space: plain-Python arithmetic per layer, no allocation.

    The budget's action wall and projection price dozens of policies per decision, so prediction
    must cost microseconds, not the milliseconds a dict of layer sizes and NumPy scalar calls take.
    """

    def __init__(self, table: LatencyTable, space: SearchSpace) -> None:
        cm = space.cost_model
        units = cm.units.tolist()
        layers = dict(zip(cm.layer_names, cm.layers, strict=True))

        def ref(dim: Dim) -> tuple[tuple[tuple[int, int], ...], int]:
            # size = base + sum(k * keep[g]) over the dimension's terms
            return dim.terms, dim.dense - sum(k * units[g] for g, k in dim.terms)

        self.layers = []
        for t in table.layers:
            layer = layers[t.name]
            in_dim = Dim(layer.inp.dense) if len(t.in_grid) == 1 else layer.inp
            self.layers.append((ref(layer.out), ref(in_dim), t.out_grid.tolist(), t.in_grid.tolist(),
                                t.seconds.tolist()))
        self.activation = [(ref(layers[n].out), per) for n, per in table.activation.items()]
        self.dense_activation = float(sum(layers[n].out.dense * per for n, per in table.activation.items()))
        self.a, self.c, self.b = table.calibration

    @staticmethod
    def _locate(grid: list[float], v: float) -> tuple[int, int, float]:
        if len(grid) == 1:
            return 0, 0, 0.0
        i = min(max(bisect.bisect_left(grid, v) - 1, 0), len(grid) - 2)
        f = (v - grid[i]) / (grid[i + 1] - grid[i])
        return i, i + 1, 0.0 if f < 0 else 1.0 if f > 1 else f

    def __call__(self, keep: np.ndarray) -> float:
        kept = keep.tolist() if isinstance(keep, np.ndarray) else list(keep)
        total = 0.0
        for (out_terms, bo), (in_terms, bi), out_grid, in_grid, z in self.layers:
            i0, i1, fx = self._locate(out_grid, bo + sum(k * kept[g] for g, k in out_terms))
            j0, j1, fy = self._locate(in_grid, bi + sum(k * kept[g] for g, k in in_terms))
            total += ((1 - fx) * ((1 - fy) * z[i0][j0] + fy * z[i0][j1])
                      + fx * ((1 - fy) * z[i1][j0] + fy * z[i1][j1]))
        activation = sum((b + sum(k * kept[g] for g, k in terms)) * per for (terms, b), per in self.activation)
        return self.a + self.c * total + self.b * activation / self.dense_activation


def _dense_copies(model: nn.Module, x: torch.Tensor, runtime: str, n: int) -> dict[str, Callable[[], Any]]:
    """Runners of ``n`` separate copies of the dense model (each with its own memory placement)."""
    return {f"dense{i}": make_runner(copy.deepcopy(model), x, runtime) for i in range(n)}


def _candidate_keeps(space: SearchSpace, levels: int) -> list[np.ndarray]:
    """Per group, up to ``levels`` kept-unit counts the space can produce (its bounds and round_to),
    evenly spread from the most pruned to the dense width, so the grid holds only reachable widths."""
    out = []
    for i, g in enumerate(space.groups):
        ratios = np.linspace(g.low, g.high, 256)
        reachable = np.unique([space.keep_units({g.name: r})[i] for r in ratios] + [g.units])
        if len(reachable) > levels:
            reachable = reachable[np.unique(np.round(np.linspace(0, len(reachable) - 1, levels)).astype(int))]
        out.append(reachable)
    return out


def _standalone(module: nn.Module, in_shape: torch.Size, out: int, inp: int, depthwise: bool,
                batch: int) -> tuple[str, Callable[[], tuple[nn.Module, torch.Tensor]]]:
    """Signature and factory of ``module`` alone at the given kept widths."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        cls_ = type(module)
        groups = out if depthwise else module.groups
        in_ch = out if depthwise else inp * module.groups
        spatial = tuple(in_shape[2:])
        sig = (f"{cls_.__name__}|k{module.kernel_size}|s{module.stride}|p{module.padding}|d{module.dilation}"
               f"|g{groups}|b{module.bias is not None}|in{in_ch}|out{out}|x{spatial}|B{batch}")

        def make_conv() -> tuple[nn.Module, torch.Tensor]:
            m = cls_(in_ch, out, module.kernel_size, module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                     groups=groups, bias=module.bias is not None)
            return m.eval(), torch.randn(batch, in_ch, *spatial)
        return sig, make_conv
    assert isinstance(module, nn.Linear)
    mid = tuple(in_shape[1:-1])
    sig = f"Linear|b{module.bias is not None}|in{inp}|out{out}|x{mid}|B{batch}"

    def make_linear() -> tuple[nn.Module, torch.Tensor]:
        return nn.Linear(inp, out, bias=module.bias is not None).eval(), torch.randn(batch, *mid, inp)
    return sig, make_linear


def _machine() -> dict[str, Any]:
    import onnxruntime

    return {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _table_key(model: nn.Module, in_shape: tuple[int, ...], runtime: str, batch: int, *options: Any) -> str:
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    text = json.dumps([repr(model), shapes, in_shape, runtime, batch, options, _machine()], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
