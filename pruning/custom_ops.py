"""Layers Torch-Pruning cannot see through, written so that it can prune them.

`ChannelSelect` routes input channels to output positions by a fixed index (or a zero channel). It
expresses the zero-padding shortcut of CIFAR ResNets (and, later, channel shuffles) as a layer whose
input and output channels are pruned independently, like a 1x1 convolution with a 0/1 matrix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn


class ChannelSelect(nn.Module):
    """out[:, i] = x[:, src[i]], or zeros where src[i] == -1."""

    def __init__(self, in_channels: int, src: list[int], stride: int = 1, derived: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stride = stride
        # Derived from a shuffle or slice of the original graph: an output whose source channel was pruned
        # is all zeros and is removed with it (see pipeline._drop_zero_routes). A model's own zero padding
        # (CIFAR ResNet shortcuts) is not derived and stays.
        self.derived = derived
        self.register_buffer("src", torch.tensor(src, dtype=torch.long), persistent=False)

    @property
    def out_channels(self) -> int:
        return int(self.src.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        x = F.pad(x, (0, 0, 0, 0, 0, 1))  # channel in_channels is all zeros
        index = torch.where(self.src < 0, torch.full_like(self.src, self.in_channels), self.src)
        return x.index_select(1, index)


class ChannelSelectPruner(tp.pruner.function.BasePruningFunc):
    def prune_out_channels(self, layer: ChannelSelect, idxs: list[int]) -> ChannelSelect:
        keep = [i for i in range(layer.out_channels) if i not in set(idxs)]
        layer.src = layer.src[keep]
        return layer

    def prune_in_channels(self, layer: ChannelSelect, idxs: list[int]) -> ChannelSelect:
        gone = torch.zeros(layer.in_channels, dtype=torch.bool)
        gone[list(idxs)] = True
        shift = torch.cumsum(gone.long(), 0)  # how many removed inputs precede each input
        src = layer.src.clone()
        valid = src >= 0
        dropped = valid & gone[src.clamp(min=0)]
        src[valid] = src[valid] - shift[src[valid]]
        src[dropped] = -1
        layer.src = src
        layer.in_channels -= int(gone.sum())
        return layer

    def get_out_channels(self, layer: ChannelSelect) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelSelect) -> int:
        return layer.in_channels


class SizedResize(nn.Module):
    """ONNX `Resize` to sizes computed in the graph (an FPN or segmentation head upsampling to another tensor's
    size). onnx2torch's own module reads the sizes with `.tolist()`, so a re-export traces them as constants and
    the pruned model would run at the traced size only; here they stay traced values while exporting."""

    def __init__(self, mode: str, align_corners: bool | None) -> None:
        super().__init__()
        self.onnx_mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, roi: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                sizes: torch.Tensor | None = None) -> torch.Tensor:
        from onnx2torch.node_converters.resize import _onnx_mode_to_torch_mode

        assert sizes is not None
        size: list[Any] = [sizes[i] for i in range(2, int(sizes.numel()))]
        if not torch.jit.is_tracing():
            size = [int(v) for v in size]
        mode = _onnx_mode_to_torch_mode(self.onnx_mode, x.dim() - 2)
        return F.interpolate(x, size=size, mode=mode, align_corners=self.align_corners)



class ShapedReshape(nn.Module):
    """ONNX `Reshape` to a shape computed in the graph (a window partition's `(B, H / 7, 7, W / 7, 7, C)` read off
    another tensor). onnx2torch's module exports through a custom function whose output a re-export types at the
    traced sizes, and ONNX shape inference then folds every `Shape` read downstream of it into a constant: Swin
    came back running at the traced batch only. Here the reshape is traced as torch's own, with the sizes kept
    traced values, so they stay computed in the file."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        n = int(shape.numel())
        if torch.jit.is_tracing():
            if x.dim() >= n:  # ONNX's 0: this axis as the input has it
                shape = torch.where(shape == 0, torch._shape_as_tensor(x)[:n].to(shape.dtype), shape)
            return torch.reshape(x, [shape[i] for i in range(n)])
        sizes = [int(v) for v in shape.tolist()]
        return torch.reshape(x, [x.shape[i] if v == 0 else v for i, v in enumerate(sizes)])


CUSTOM_PRUNERS: dict[type, tp.pruner.function.BasePruningFunc] = {ChannelSelect: ChannelSelectPruner()}
