"""The quantized task path `quantize_brevitas` returns, its fixed-point PReLU, and what runtimes read off it
(the input grid, the output LSB)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # brevitas warns about optional packages on import
    warnings.simplefilter("ignore")
    from brevitas.fx import GraphModule
    from brevitas.quant_tensor import QuantTensor

PRELU_SLOPE_BITS = 8  # fractional bits of a PReLU slope (FixedPointPReLU): 1/256 steps
INPUT_QUANT = "input_quant"
OUTPUT_QUANT = "output_quant"


class QuantTaskPath(nn.Module):
    """One task's quantized path: normalised image in, that task's tensor out (a plain tensor).

    With `host_resize` / `host_softmax`, the quantized graph ends before the path's final resize / softmax,
    which are applied here in float exactly as the original model does them; `fabric` is the graph alone: what
    is exported, compiled to hardware and checked LSB for LSB."""

    def __init__(self, graph: GraphModule, task: str, host_resize: dict[str, Any] | None = None,
                 host_softmax: dict[str, int] | None = None) -> None:
        super().__init__()
        self.graph_module = graph
        self.task = task
        self.host_resize = host_resize
        self.host_softmax = host_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.graph_module(x)
        out = out.value if isinstance(out, QuantTensor) else out
        out = F.interpolate(out, **self.host_resize) if self.host_resize else out
        return torch.softmax(out, **self.host_softmax) if self.host_softmax else out

    @property
    def fabric(self) -> QuantTaskPath:
        return QuantTaskPath(self.graph_module, self.task) if self.host_resize or self.host_softmax else self

    @property
    def input_quant(self) -> nn.Module:
        return self.graph_module.get_submodule(INPUT_QUANT)

    @property
    def output_quant(self) -> nn.Module:
        return self.graph_module.get_submodule(OUTPUT_QUANT)



class FixedPointPReLU(nn.PReLU):
    """PReLU whose slopes lie on a 2^-PRELU_SLOPE_BITS grid (rounded, straight-through gradient in QAT).

    brevitas leaves a PReLU in float between quantizers; hls4ml's PReLU multiplies in fixed point, so the
    quantized model and the C simulation agree bit for bit only when the slopes are exact fixed-point values.
    Exported, the slopes are one constant (ONNX PRelu)."""

    def snapped_weight(self) -> torch.Tensor:
        scale = 2.0 ** PRELU_SLOPE_BITS
        snapped = torch.round(self.weight * scale) / scale
        return self.weight + (snapped - self.weight).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.value if isinstance(x, QuantTensor) else x
        weight = self.snapped_weight()
        return F.prelu(x, weight.detach() if torch.onnx.is_in_onnx_export() else weight)



def grid_align(qmodel: QuantTaskPath, images: torch.Tensor) -> torch.Tensor:
    """Normalised images snapped onto the input quantizer's grid (what every runtime then sees exactly)."""
    quantizer = qmodel.input_quant
    was_training = quantizer.training
    quantizer.eval()
    with torch.no_grad():
        out = quantizer(images)
    quantizer.train(was_training)
    return (out.value if isinstance(out, QuantTensor) else out).detach().clone()


def output_lsb(qmodel: QuantTaskPath) -> float:
    """One LSB of the path's output: the output quantizer's (power-of-two) scale."""
    with torch.no_grad():
        return float(qmodel.output_quant.act_quant.scale().detach())
