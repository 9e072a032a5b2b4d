"""2:4 semi-structured conversion: eligibility on CPU, conversion where a CUDA GPU exists."""

import pytest
import torch
from torch import nn

from prunelab.compress import is_two_four, semi_structured_eligibility, to_semi_structured
from prunelab.pruning.granularity import nm_mask


def two_four(w):
    return w * nm_mask(w.abs(), torch.ones_like(w, dtype=torch.bool), 2, 4, 2)


def test_is_two_four():
    assert is_two_four(torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]]))
    assert not is_two_four(torch.tensor([[1.0, 1.0, 2.0, 0.0]]))
    assert not is_two_four(torch.ones(2, 6))  # not groups of 4


def test_eligibility_reasons():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(64, 32), nn.Linear(32, 16))
    with torch.no_grad():
        net[2].weight.copy_(two_four(net[2].weight))
    el = semi_structured_eligibility(net)
    assert "multiples of 16" in el["0"]  # 300 x 784: cuSPARSELt refuses it
    assert el["2"] is None
    assert "not 2:4 sparse" in el["3"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_conversion_needs_cuda():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        to_semi_structured(nn.Linear(16, 16), torch.zeros(1, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conversion_matches_masked_dense_on_gpu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.copy_(two_four(m.weight))
    sparse, report = to_semi_structured(net, torch.randn(64, 256))
    assert report.converted == ["0", "2"] and not report.skipped  # both shapes are multiples of 16
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-2


def test_gpu_2to4_warns_when_no_linear_layer_can_be_converted():
    from prunelab.hardware import two_four_warnings
    from prunelab.models import build_model

    lenet = build_model("mlp", (1, 28, 28), 10)  # 300x784, 100x300, 10x100
    (w,) = two_four_warnings(lenet, "gpu_2to4")
    assert "features.0 300x784, features.2 100x300, classifier 10x100" in w
    assert "multiples of 16" in w
    assert two_four_warnings(build_model("mlp", (1, 28, 28), 10, hidden=[512, 256]), "gpu_2to4") == []
    assert two_four_warnings(lenet, "gpu") == []
