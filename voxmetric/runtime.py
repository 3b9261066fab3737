"""Inference runtimes behind one call, ``network(x) -> logits``, so a method's predictor runs the
same on a torch module or on an ONNX Runtime session (issue 14).

- :class:`Network`: the protocol: float32 numpy input (B, C_in, *S) → float32 numpy output
  (B, K, *S) (the method's :meth:`~voxmetric.methods.Method.forward`: logits for slab methods).
- :class:`TorchNetwork`: a torch module through ``method.forward`` (``inference_mode``,
  ``channels_last`` on the CPU, the device's autocast).
- :class:`OnnxNetwork`: an ONNX Runtime session (CPU) of a graph that :func:`export_onnx` made
  from the same module and :func:`verify_onnx` checked against it. Importing this module, or
  running an :class:`OnnxNetwork`, never imports torch: ``voxmetric segment`` with packages that
  carry a verified graph (:mod:`voxmetric.models`) starts in a fraction of a second.

Which one runs: the pipeline uses a package's ONNX graph on the CPU when the package has one and
the method can be exported (:meth:`~voxmetric.methods.Method.onnx_example` is not None); CUDA,
methods whose predictor needs torch operations and packages without a graph use torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

#: ONNX operator set of exported graphs (ONNX Runtime ≥ 1.14 runs it)
OPSET = 17
#: largest |ONNX − torch| logit difference accepted by :func:`verify_onnx`, relative to max |logit|
VERIFY_RTOL = 1e-3


class Network(Protocol):
    """One forward pass: float32 (B, C_in, *S) → float32 (B, K, *S); ``kind`` "torch" or "onnx"."""

    kind: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ...


class CpuDevice:
    """Stands for ``torch.device("cpu")`` where torch is not loaded (``type`` "cpu")."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    __repr__ = __str__


def cpu_threads() -> int:
    """Threads for CPU inference: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cuda_possible() -> bool:
    """Whether ``--device auto`` could pick a GPU, decided without importing torch when the
    answer is no: True when the installed torch is a CUDA/ROCm build and (on Linux) an NVIDIA or
    AMD GPU device node exists; False for a CPU-only torch or no torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    version = Path(spec.origin).with_name("version.py")
    try:
        text = version.read_text(encoding="utf-8")
    except OSError:  # pragma: no cover - unusual install: let torch decide
        return True
    gpu_build = any(re.search(rf"^{key}\s*(:[^=]*)?=\s*['\"]", text, re.M) for key in ("cuda", "hip"))
    if not gpu_build:
        return False
    if os.name == "posix" and Path("/dev").is_dir():
        return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/kfd").exists()
    return True  # pragma: no cover - other systems: let torch decide


# ---- torch -----------------------------------------------------------------------------------
class TorchNetwork:
    """``forward(tensor) -> tensor`` of a torch module run on ``device`` (numpy in and out):
    ``inference_mode``, channels-last input on the CPU, autocast as ``autocast`` gives."""

    kind = "torch"

    def __init__(self, forward: Callable[["Tensor"], "Tensor"], device: Any,
                 autocast: Callable[[], Any] | None = None) -> None:
        self.forward, self.device, self.autocast = forward, device, autocast

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import contextlib

        import torch

        a = np.ascontiguousarray(x, dtype=np.float32)
        t = torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
        if self.device.type == "cpu" and t.ndim in (4, 5):
            t = t.contiguous(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)
        with torch.inference_mode(), (self.autocast() if self.autocast else contextlib.nullcontext()):
            return self.forward(t).float().cpu().numpy()


class _Forward:
    """``module`` seen through ``forward(module, x)`` as a module (for export)."""

    def __new__(cls, module: "nn.Module", forward: Callable[["nn.Module", "Tensor"], "Tensor"]) -> Any:
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = module

            def forward(self, x: "Tensor") -> "Tensor":
                return forward(self.net, x)

        return Wrapped().eval()


# ---- ONNX ----------------------------------------------------------------------------------------
def export_onnx(module: "nn.Module", forward: Callable[["nn.Module", "Tensor"], "Tensor"],
                example_shape: Sequence[int], dynamic_axes: Sequence[int]) -> bytes:
    """The ONNX graph (bytes, opset :data:`OPSET`) of ``forward(module, x)`` in eval mode for an
    input shaped like ``example_shape`` whose ``dynamic_axes`` may vary (batch, slice size…).
    Needs torch and the ``onnx`` package (training machines); BatchNorm is folded into the convs."""
    import io
    import warnings

    import torch

    was_training = module.training
    module.eval()
    try:
        wrapped = _Forward(module, forward)
        x = torch.rand(*example_shape) * 255.0
        axes = {int(a): f"d{a}" for a in dynamic_axes}
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on the networks' input checks
            torch.onnx.export(wrapped, (x,), buf,  # pyright: ignore[reportArgumentType]
                              input_names=["x"], output_names=["y"], opset_version=OPSET,
                              dynamic_axes={"x": axes, "y": axes}, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.EVAL, dynamo=False)
        return buf.getvalue()
    finally:
        module.train(was_training)


def verify_onnx(data: bytes, module: "nn.Module", forward: Callable[["nn.Module", "Tensor"], "Tensor"],
                shapes: Sequence[Sequence[int]], seed: int = 0) -> float:
    """Run the graph ``data`` and ``forward(module, ·)`` (fp32, CPU) on random inputs of each of
    ``shapes`` (values 0–255, as normalised images); return the largest |difference| relative to
    the largest |output|. ModelError when it exceeds :data:`VERIFY_RTOL` or the shapes differ."""
    import torch

    net = OnnxNetwork(data)
    rng = np.random.default_rng(seed)
    worst = 0.0
    was_training = module.training
    module.eval()
    try:
        for shape in shapes:
            x = (rng.random(tuple(shape)) * 255.0).astype(np.float32)
            with torch.inference_mode():
                ref = forward(module, torch.from_numpy(x)).float().numpy()
            got = net(x)
            if got.shape != ref.shape:
                raise ModelError(f"the exported ONNX graph gives shape {got.shape} for input {tuple(shape)}, torch "
                                 f"{ref.shape}; the network cannot be exported faithfully (keep the torch runtime).")
            worst = max(worst, float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-6)))
    finally:
        module.train(was_training)
    if not worst <= VERIFY_RTOL:
        raise ModelError(f"the exported ONNX graph differs from the torch network by {worst:.2e} (relative; at most "
                         f"{VERIFY_RTOL:g} allowed); it was not stored. Keep the torch runtime for this model.")
    return worst


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def onnxruntime_available() -> bool:
    """Whether the ``onnxruntime`` package is installed (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxNetwork:
    """An ONNX Runtime CPU session of a verified graph (bytes): numpy in, numpy out. ``threads``:
    intra-op threads (default: the usable cores)."""

    kind = "onnx"

    def __init__(self, data: bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or cpu_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        so.enable_cpu_mem_arena = os.environ.get("VOXMETRIC_ORT_ARENA", "0") == "1"
        try:
            self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"ONNX Runtime cannot load the model graph ({str(e)[:200]}). Re-export the package's "
                             "graph (voxmetric models export-onnx NAME) or use the torch runtime.") from e
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """float32 softmax of ``logits`` along ``axis`` (numerically stable)."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e.astype(np.float32, copy=False)


__all__ = ["CpuDevice", "Network", "OPSET", "OnnxNetwork", "TorchNetwork", "VERIFY_RTOL", "cpu_threads",
           "cuda_possible", "export_onnx", "onnxruntime_available", "sha256", "softmax", "verify_onnx"]
