"""The model registry: the default GroupNorm CNN, three plain conv stacks (3x3 / 5x5 / 7x7), the two MLPs of the batch-size write-up, timm models.

Every model takes (B, 1, 28, 28) float images in [0, 1] and returns (B, 10) logits. The conv nets
normalise with GroupNorm; `norm="group_ws"` standardises each conv's weights first (Qiao et al. 2019,
"Micro-Batch Training with Batch-Channel Normalization and Weight Standardization": the documented way
for GroupNorm to match BatchNorm); `norm="batch"` swaps in BatchNorm, for the study that shows why the
accumulation write-up dropped it (`make sweep STUDY=norm`) and as the reference for what GroupNorm costs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import UserError


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn by torch.rand: on the CPU, bernoulli_ made dropout 9% of a bf16
    training step, and this forward + backward takes half the time (same inverted-dropout maths)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


NORMS = ("group", "group_ws", "batch")


def conv_block(c_in: int, c_out: int, kernel: int, stride: int, padding: int, norm: str, groups: int) -> nn.Module:
    """conv -> norm -> ReLU. GroupNorm gets the largest divisor of c_out up to `groups` as its group
    count (the plain stacks' channel counts are not all multiples of 8); BatchNorm has none. group_ws
    swaps the conv for timm's StdConv2d (the same weight tensor, standardised to zero mean and unit
    variance per output channel on every forward pass), so checkpoints keep their keys."""
    from timm.layers import ConvNormAct, StdConv2d

    if norm == "batch":
        return ConvNormAct(c_in, c_out, kernel, stride, padding=padding, norm_layer="batchnorm")
    n_groups = max(g for g in range(1, groups + 1) if c_out % g == 0)
    block = ConvNormAct(c_in, c_out, kernel, stride, padding=padding, norm_layer="groupnorm",
                        norm_kwargs={"num_groups": n_groups})
    if norm == "group_ws":
        block.conv = StdConv2d(c_in, c_out, kernel, stride, padding=padding, eps=1e-5)
    return block


class GroupNormCNN(nn.Sequential):
    """Chris Deotte's digit CNN (the layout behind the 99.75% ensembles) with GroupNorm after every
    convolution instead of BatchNorm, so the result does not depend on the micro-batch: accumulating
    8 x 128 is then the same as one batch of 1024.

    28 -> conv3 -> conv3 -> conv5/2 -> 12 -> conv3 -> conv3 -> conv5/2 -> 4 -> conv4 -> 1, with channels
    width, 2 x width and 4 x width; the 3x3 convolutions are unpadded, which halves the FLOPs of a
    padded layout at the same accuracy.
    """

    def __init__(self, width: int = 32, groups: int = 8, dropout: float = 0.1, num_classes: int = 10,
                 norm: str = "group"):
        def block(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
            return conv_block(c_in, c_out, kernel, stride, padding, norm, groups)

        w1, w2, w3 = width, 2 * width, 4 * width
        super().__init__(
            block(1, w1, 3), block(w1, w1, 3), block(w1, w1, 5, stride=2, padding=2), Dropout(dropout),
            block(w1, w2, 3), block(w2, w2, 3), block(w2, w2, 5, stride=2, padding=2), Dropout(dropout),
            block(w2, w3, 4), nn.Flatten(), Dropout(dropout), nn.Linear(w3, num_classes),
        )


class PlainConvStack(nn.Sequential):
    """The no-padding, no-pooling conv stacks of An et al. (2020), "An Ensemble of Simple Convolutional
    Neural Network Models for MNIST Digit Recognition", with GroupNorm after every convolution:

    gn_m3: ten 3x3 convs, 28 -> 8, channels width x (1, 1.5, 2, ..., 5.5)  (paper: width 32 -> 176)
    gn_m5: five 5x5 convs, 28 -> 8, channels width x (1, 2, 3, 4, 5)       (paper: width 32 -> 160)
    gn_m7: four 7x7 convs, 28 -> 4, channels width x (1, 2, 3, 4)          (paper: width 48 -> 192)

    then flatten, dropout and one linear layer. Every conv shrinks the image by kernel - 1, so the
    receptive field grows without pooling; the three kernel sizes make errors that differ, which is what
    an ensemble needs.
    """

    LAYOUTS = {3: (10, 0.5), 5: (5, 1.0), 7: (4, 1.0)}  # kernel -> (convs, channel step as a fraction of width)

    def __init__(self, kernel: int, width: int = 32, groups: int = 8, dropout: float = 0.0, num_classes: int = 10,
                 norm: str = "group"):
        convs, step = self.LAYOUTS[kernel]
        channels = [round(width * (1 + step * i)) for i in range(convs)]
        layers: list[nn.Module] = []
        c_in, side = 1, 28
        for c_out in channels:
            layers.append(conv_block(c_in, c_out, kernel, 1, 0, norm, groups))
            c_in, side = c_out, side - (kernel - 1)
        super().__init__(*layers, nn.Flatten(), Dropout(dropout), nn.Linear(c_in * side * side, num_classes))


class MLP(nn.Sequential):
    """The batch-size write-up's MLPs: 784-1024-10 (hidden=(1024,)) and 784-1024-1024-10."""

    def __init__(self, hidden: tuple[int, ...], num_classes: int = 10):
        layers: list[nn.Module] = [nn.Flatten()]
        width = 784
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        super().__init__(*layers, nn.Linear(width, num_classes))


def _timm_model(name: str, groups: int, dropout: float) -> nn.Module:
    import timm
    from timm.layers import GroupNorm

    def group_norm(channels: int, **_: object) -> nn.Module:
        # timm models call norm_layer(channels); GroupNorm needs groups that divide the channels
        return GroupNorm(channels, num_groups=groups if channels % groups == 0 else 1)

    try:
        return timm.create_model(name, pretrained=False, in_chans=1, num_classes=10, drop_rate=dropout,
                                 norm_layer=group_norm)
    except RuntimeError as e:  # timm's "Unknown model"
        raise UserError(f"unknown timm model '{name}' ({e})") from None
    except TypeError:
        raise UserError(f"timm model '{name}' does not accept a norm_layer; pick a CNN such as resnet18") from None


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "gn_cnn": lambda width, groups, dropout, norm: GroupNormCNN(width, groups, dropout, norm=norm),
    "gn_m3": lambda width, groups, dropout, norm: PlainConvStack(3, width, groups, dropout, norm=norm),
    "gn_m5": lambda width, groups, dropout, norm: PlainConvStack(5, width, groups, dropout, norm=norm),
    "gn_m7": lambda width, groups, dropout, norm: PlainConvStack(7, width, groups, dropout, norm=norm),
    "mlp1": lambda width, groups, dropout, norm: MLP((1024,)),
    "mlp2": lambda width, groups, dropout, norm: MLP((1024, 1024)),
}
MODEL_NAMES = list(REGISTRY)
NORMALISED = ("gn_cnn", "gn_m3", "gn_m5", "gn_m7")  # the models whose norm layer `norm` picks


def is_known_model(name: str) -> bool:
    return name in REGISTRY or (name.startswith("timm:") and len(name) > 5)


def build_model(name: str, width: int = 32, groups: int = 8, dropout: float = 0.1, norm: str = "group") -> nn.Module:
    if name.startswith("timm:"):
        return _timm_model(name[5:], groups, dropout)
    if name not in REGISTRY:
        raise UserError(f"unknown model '{name}'; known: {', '.join(MODEL_NAMES)}, or timm:<name>")
    return REGISTRY[name](width, groups, dropout, norm)


def model_from_config(cfg) -> nn.Module:
    return build_model(cfg.model, cfg.width, cfg.groups, cfg.dropout, cfg.norm)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())



def load_weights(model: nn.Module, path) -> nn.Module:
    from .fileio import read_torch

    model.load_state_dict(read_torch(path))
    return model
