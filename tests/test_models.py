"""The registry: every model maps (B, 1, 28, 28) to (B, 10); the MLPs are the write-up's; timm uses GroupNorm."""
from __future__ import annotations

import pytest
import torch

from digitrec.errors import UserError
from digitrec.models import MODEL_NAMES, build_model, count_parameters


@pytest.mark.parametrize("name", [*MODEL_NAMES, "timm:resnet18"])
def test_models_map_digits_to_ten_logits(name: str) -> None:
    model = build_model(name)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    norms = {type(m).__name__ for m in model.modules()}
    assert not any("BatchNorm" in n for n in norms), norms


def test_mlps_have_the_write_up_parameter_counts() -> None:
    # 784-1024-10: 784*1024 + 1024 + 1024*10 + 10; the write-up reports 814090
    assert count_parameters(build_model("mlp1")) == 814090
    assert count_parameters(build_model("mlp2")) == 814090 + 1024 * 1024 + 1024


def test_unknown_models_are_refused_by_name() -> None:
    with pytest.raises(UserError, match="known: gn_cnn, gn_m3, gn_m5, gn_m7, mlp1, mlp2"):
        build_model("resnet")
    with pytest.raises(UserError, match="unknown timm model 'no_such_net'"):
        build_model("timm:no_such_net")


def _conv_stack_parameters(kernel: int, channels: list[int]) -> int:
    """Bias-free convs (GroupNorm follows), a GroupNorm scale and shift per channel, then the linear layer."""
    total, c_in, side = 0, 1, 28
    for c_out in channels:
        total += c_in * c_out * kernel * kernel + 2 * c_out
        c_in, side = c_out, side - (kernel - 1)
    return total + c_in * side * side * 10 + 10


@pytest.mark.parametrize("name, width, kernel, channels, side", [
    ("gn_m3", 32, 3, [32, 48, 64, 80, 96, 112, 128, 144, 160, 176], 8),  # An et al.'s M3
    ("gn_m5", 32, 5, [32, 64, 96, 128, 160], 8),  # M5
    ("gn_m7", 48, 7, [48, 96, 144, 192], 4),  # M7
    ("gn_m5", 16, 5, [16, 32, 48, 64, 80], 8),  # the narrower nets of configs/cpu-best.yaml
    ("gn_m7", 24, 7, [24, 48, 72, 96], 4),
])
def test_plain_conv_stacks_have_the_paper_layouts(name: str, width: int, kernel: int, channels: list[int],
                                                  side: int) -> None:
    model = build_model(name, width=width, groups=8, dropout=0.25)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == channels
    assert all(c.kernel_size == (kernel, kernel) and c.padding == (0, 0) and c.stride == (1, 1) for c in convs)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == len(convs) and all(n.num_groups == 8 for n in norms)  # 8 divides every width here
    features = torch.nn.Sequential(*list(model)[:-3])(torch.zeros(2, 1, 28, 28))  # up to the flatten
    assert features.shape == (2, channels[-1], side, side)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_parameters(model) == _conv_stack_parameters(kernel, channels)


def test_groupnorm_groups_divide_odd_widths() -> None:
    model = build_model("gn_m3", width=12, groups=8)  # channels 12, 18, 24, ...: 8 does not divide 12 or 18
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)):
        assert norm.num_channels % norm.num_groups == 0 and norm.num_groups <= 8
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
