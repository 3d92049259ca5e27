"""PyTorch backend: the checkpoint's :class:`~lcr_sdk.train.model.DeployModel` on CPU or CUDA, the reference.

The same network export traces, with the same in-graph preprocessing, so its outputs are what every exported
model is checked against. On CUDA it offers fp16 (``fp16=True``), CUDA graphs (``cuda_graph=True``: one graph
with static input/output buffers per batch size, captured on first use) and ``torch.compile`` (``compile=True``).
torch is imported only when the backend loads.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from lcr_sdk.backends.base import Backend
from lcr_sdk.errors import InputError, ModelError, require
from lcr_sdk.fileio import sha256_file
from lcr_sdk.manifest import DEFAULT_BATCH, Manifest, manifest_for_checkpoint


class TorchBackend(Backend):
    """Runs a ``.pt`` checkpoint.

    Options:
        fp16: run the network in float16 (CUDA only); outputs are float32.
        cuda_graph: replay a captured CUDA graph per batch size (CUDA only).
        compile: wrap the model in ``torch.compile``.
        batch: (min, opt, max) batch range to declare (default the export default, so a ``.pt`` and its
            exported model batch alike); :meth:`Embedder.embed` splits larger lists into chunks of max.
    """

    name = "torch"
    OPTIONS = ("fp16", "batch", "cuda_graph", "compile")
    takes_tensors = True

    @classmethod
    def read_manifest(cls, path: str | os.PathLike[str], **options: Any) -> Manifest:
        require("torch", "train", "Running a .pt checkpoint")
        from lcr_sdk.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        precision = "fp16" if options.get("fp16") else "fp32"
        batch = tuple(options.get("batch") or DEFAULT_BATCH)
        manifest = manifest_for_checkpoint(ckpt["config"], sha256_file(path), batch=batch, precision=precision)  # type: ignore[arg-type]
        return replace(manifest, model_file=Path(path).name, extra={"source": "checkpoint"})

    def load(self) -> None:
        torch = require("torch", "train", "Running a .pt checkpoint")
        from lcr_sdk.train.checkpoint import load_net
        from lcr_sdk.train.model import DeployModel

        self.torch = torch
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.fp16, self.cuda_graph = bool(self.options.get("fp16")), bool(self.options.get("cuda_graph"))
        if dev.type != "cuda" and (self.fp16 or self.cuda_graph):
            raise InputError(
                f"fp16 and cuda_graph need a CUDA device; got device={dev} "
                f"(torch.cuda.is_available() = {torch.cuda.is_available()})"
            )
        net, _ = load_net(self.path)
        m = self.manifest
        if (net.arch, net.method, net.num_parts) != (m.arch, m.method, m.num_parts):
            raise ModelError(
                f"checkpoint {self.path} is {net.arch} {net.method} with K={net.num_parts}, but the model it is "
                f"compared with is {m.arch} {m.method} with K={m.num_parts}; pass the checkpoint it was exported from"
            )
        model = DeployModel(net).eval().to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)  # the NHWC input is already channels-last
        if self.fp16:
            model.net.half()
            model.preprocess = torch.nn.Sequential(model.preprocess, _to_half(torch))
        self.model = torch.compile(model) if self.options.get("compile") else model
        self.dev = dev
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()  # graph replays share static buffers
        self.provider = (
            f"torch {dev.type}"
            + (f" {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "")
            + (" fp16" if self.fp16 else " fp32")
            + (" cudagraph" if self.cuda_graph else "")
            + (" compile" if self.options.get("compile") else "")
        )
        self.loaded = True

    def _infer(self, feed: Any) -> dict[str, Any]:
        """Numpy in -> numpy out; a torch uint8 tensor in (any device) -> float32 torch tensors out, on ``self.dev``."""
        torch = self.torch
        as_torch = isinstance(feed, torch.Tensor)
        x = (feed if as_torch else torch.from_numpy(feed)).to(self.dev, non_blocking=True)
        with torch.inference_mode():
            if self.cuda_graph:
                with self._lock:
                    graph, static_in, static_out = self._graph(len(x))
                    static_in.copy_(x)
                    graph.replay()
                    outs = [o.float().clone() for o in static_out]
            else:
                outs = [o.float() for o in self.model(x)]
        if not as_torch:
            outs = [o.cpu().numpy() for o in outs]
        return dict(zip(self.manifest.output_names, outs, strict=True))

    def _graph(self, n: int) -> tuple[Any, Any, Any]:
        """Capture (once per batch size) a CUDA graph of the model with static input and output buffers."""
        if n not in self._graphs:
            torch, spec = self.torch, self.manifest.input
            static_in = torch.zeros((n, spec.height, spec.width, 3), dtype=torch.uint8, device=self.dev)
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm up (cuDNN autotuning, allocator) outside the capture
                    self.model(static_in)
            torch.cuda.current_stream(self.dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        return self._graphs[n]

    def close(self) -> None:
        self.model, self._graphs = None, {}
        super().close()


def _to_half(torch: Any) -> Any:
    """A module casting its input to float16 (defined lazily: this file imports without torch)."""

    class ToHalf(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, x: Any) -> Any:
            return x.half()

    return ToHalf()
