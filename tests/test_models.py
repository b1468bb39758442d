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
    with pytest.raises(UserError, match="known: gn_cnn, mlp1, mlp2"):
        build_model("resnet")
    with pytest.raises(UserError, match="unknown timm model 'no_such_net'"):
        build_model("timm:no_such_net")
