"""prunelab.metrics.count_macs: FlopCounterMode's FLOPs / 2 on every model, attributed to the
innermost module that ran each operation, and the non-zero MACs of pruned weights."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize, prune
from torch.utils.flop_counter import FlopCounterMode

from prunelab.metrics import count_macs
from prunelab.models import build_model, list_models

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
TV = (3, 64, 64)


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 forwards gain nothing from intra-op threads, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flop_counter_macs(model: nn.Module, shape, reference_kernels: bool = False) -> int:
    """FlopCounterMode's FLOPs / 2 of one forward (batch 1, eval, no grad). With
    ``reference_kernels``: the MultiheadAttention fast path off and SDPA on its math backend,
    the fused CPU kernels FlopCounterMode has no formula for (it counts them as 0)."""
    model.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        if reference_kernels:
            torch.backends.mha.set_fastpath_enabled(False)
        kernels = sdpa_kernel(SDPBackend.MATH) if reference_kernels else nullcontext()
        with torch.no_grad(), kernels, FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *shape))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def hook_macs(model: nn.Module, shape) -> dict[str, int]:
    """The former count_macs: forward hooks on nn.Conv*/nn.Linear only."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, int] = {}

    def hook(m, args, output):
        per = m.weight.shape[1:].numel() if not isinstance(m, nn.Linear) else m.in_features
        out[names[m]] = out.get(names[m], 0) + output.numel() * per

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return out


def runs_attention(model: nn.Module) -> bool:
    return any("attention" in type(m).__name__.lower() for m in model.modules())


def check(model: nn.Module, shape) -> dict:
    """count_macs equals FlopCounterMode on torch's reference kernels (the plain FlopCounterMode
    too where no attention runs: elsewhere it counts no less), its table sums to the total, its
    Conv/Linear rows are the former hooks' rows (names and values)."""
    macs = count_macs(model, shape)
    assert macs["dense"] == flop_counter_macs(model, shape, reference_kernels=True)
    plain = flop_counter_macs(model, shape)
    assert (plain <= macs["dense"]) if runs_attention(model) else (plain == macs["dense"])
    table = macs["per_layer"]
    assert sum(v["dense"] for v in table.values()) == macs["dense"]
    assert sum(v["effective"] for v in table.values()) == macs["effective"] <= macs["dense"]
    layers = {n: v["dense"] for n, v in table.items()
              if isinstance(model.get_submodule(n), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    assert layers == hook_macs(model, shape)
    return macs


# -- the examples: attention --------------------------------------------------------------
class MHANet(nn.Module):
    """nn.MultiheadAttention(64, 4) on 32 tokens (sequence first): FlopCounterMode 655,360."""

    def __init__(self, batch_first: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=batch_first)

    def forward(self, x):  # (B, T, E)
        if not self.attn.batch_first:
            x = x.transpose(0, 1)
        return self.attn(x, x, x)[0]


MHA_IN, MHA_SCORES, MHA_OUT = 32 * 64 * 192, 2 * 32 * 32 * 64, 32 * 64 * 64


class AttentionBlock(nn.Module):
    """Attention written with F.linear and scaled_dot_product_attention: no nn.Linear in it."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Parameter(torch.randn(3 * dim, dim) / dim**0.5)
        self.proj = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):  # (B, T, D)
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for y in F.linear(x, self.qkv).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return F.linear(y, self.proj, self.bias)


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = AttentionBlock()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.block(x).mean(1))


SDPA_QKV, SDPA_SCORES, SDPA_PROJ, SDPA_HEAD = 16 * 32 * 96, 2 * 16 * 16 * 32, 16 * 32 * 32, 320


def test_multihead_attention_is_counted_like_the_flop_counter():
    net = MHANet()
    macs = check(net, (32, 64))  # sequence first: the slow path, which FlopCounterMode sees
    assert macs["dense"] == MHA_IN + MHA_SCORES + MHA_OUT == 655_360
    assert macs["per_layer"] == {"attn": {"dense": 655_360, "effective": 655_360}}


def test_multihead_attention_fast_path_is_counted_as_its_products():
    """batch_first in eval: torch's fused kernel, which FlopCounterMode counts as 0 on CPU."""
    net = MHANet(batch_first=True)
    macs = check(net, (32, 64))
    assert macs["dense"] == 655_360 >= flop_counter_macs(net, (32, 64))
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_functional_attention_block_is_counted_in_its_module():
    net = AttentionNet()
    macs = check(net, (16, 32))
    assert macs["per_layer"] == {
        "block": {"dense": SDPA_QKV + SDPA_SCORES + SDPA_PROJ,
                  "effective": SDPA_QKV + SDPA_SCORES + SDPA_PROJ},
        "head": {"dense": SDPA_HEAD, "effective": SDPA_HEAD},
    }


def test_transformer_encoder_fast_path_is_counted_as_its_products():
    """nn.TransformerEncoder in eval: one fused kernel per layer, 0 for FlopCounterMode on CPU."""
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 2, 64, batch_first=True), 2)
    macs = check(encoder, (10, 32))
    layer = 10 * 32 * 96 + 2 * 10 * 10 * 32 + 10 * 32 * 32 + 2 * 10 * 32 * 64
    assert macs["dense"] == 2 * layer >= flop_counter_macs(encoder, (10, 32))
    assert {n: v["dense"] for n, v in macs["per_layer"].items() if n.startswith("layers.0")} == {
        "layers.0.self_attn": layer - 2 * 10 * 32 * 64, "layers.0.linear1": 10 * 32 * 64,
        "layers.0.linear2": 10 * 32 * 64}


def test_vision_transformer():
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2,
                            hidden_dim=32, mlp_dim=64, num_classes=10)
    macs = check(vit, CIFAR)
    tokens = 8 * 8 + 1
    attention = tokens * 32 * 96 + 2 * tokens * tokens * 32 + tokens * 32 * 32
    assert macs["per_layer"]["encoder.layers.encoder_layer_1.self_attention"]["dense"] == attention


# -- effective (non-zero) MACs ---------------------------------------------------------------------
def test_half_zeroed_linear_has_half_its_macs():
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with torch.no_grad():
        net[0].weight.view(-1)[::2] = 0.0
    macs = count_macs(net, (8,))
    assert macs["per_layer"] == {"0": {"dense": 48, "effective": 24},
                                 "2": {"dense": 24, "effective": 24}}
    assert (macs["dense"], macs["effective"]) == (72, 48)


def test_multihead_attention_projections_scale_by_their_own_weights():
    net = MHANet()
    with torch.no_grad():
        net.attn.in_proj_weight[:96] = 0.0  # half the packed q, k, v projection
    prune.l1_unstructured(net.attn.out_proj, "weight", amount=0.75)  # a torch-prune mask
    macs = count_macs(net, (32, 64))
    assert macs["per_layer"]["attn"] == {
        "dense": 655_360, "effective": MHA_IN // 2 + MHA_SCORES + MHA_OUT // 4}
    # explicit densities, by the parameters' names
    macs = count_macs(net, (32, 64), densities={"attn.in_proj_weight": 0.25})
    assert macs["effective"] == MHA_IN // 4 + MHA_SCORES + MHA_OUT // 4


def test_functional_weights_scale_and_activation_products_stay_dense():
    net = AttentionNet()
    with torch.no_grad():
        net.block.qkv.view(-1)[::4] = 0.0  # density 3/4
    mask = (torch.arange(32 * 32).view(32, 32) % 2).float()  # parametrized: density 1/2

    class Mask(nn.Module):
        def forward(self, w):
            return w * mask

    parametrize.register_parametrization(net.block, "proj", Mask())
    macs = count_macs(net, (16, 32))
    assert macs["per_layer"]["block"] == {
        "dense": SDPA_QKV + SDPA_SCORES + SDPA_PROJ,
        "effective": SDPA_QKV * 3 // 4 + SDPA_SCORES + SDPA_PROJ // 2}


def test_matmul_in_a_custom_forward():
    class Mixer(nn.Module):
        """x @ W (a parameter) and x @ x^T (two activations) in the root's own forward."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(8, 8))

        def forward(self, x):  # (B, T=5, 8)
            y = x @ self.w
            return torch.bmm(y, y.transpose(1, 2))

    net = Mixer()
    with torch.no_grad():
        net.w[:, :4] = 0.0
    macs = check(net, (5, 8))
    assert macs["per_layer"] == {"": {"dense": 5 * 8 * 8 + 5 * 5 * 8,
                                      "effective": 5 * 8 * 8 // 2 + 5 * 5 * 8}}


# -- hand-computed values, repeated calls, modes -------------------------------------------------
def test_hand_computed_conv_and_linear():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),  # 1x5x5 -> 2x3x3: 18 outputs * 9 = 162
        nn.Conv2d(2, 4, 3, padding=1, groups=2),  # 4x3x3: 36 outputs * (2/2)*9 = 324
        nn.Flatten(),
        nn.Linear(36, 4),  # 144
    )
    macs = check(net, (1, 5, 5))
    assert macs["per_layer"] == {"0": {"dense": 162, "effective": 162},
                                 "1": {"dense": 324, "effective": 324},
                                 "3": {"dense": 144, "effective": 144}}
    one_d = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(24, 2))  # 2x10 -> 3x8
    assert count_macs(one_d, (2, 10))["dense"] == 24 * 2 * 3 + 24 * 2
    three_d = nn.Conv3d(1, 2, 2)  # 1x3x3x3 -> 2x2x2x2: 16 outputs * 8
    assert count_macs(three_d, (1, 3, 3, 3))["per_layer"] == {"": {"dense": 128, "effective": 128}}


def test_a_layer_called_twice_accumulates_and_modes_are_restored():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.norm = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.fc(self.norm(self.fc(x)))

    net = Twice().train()
    net.norm.eval()
    assert count_macs(net, (4,))["per_layer"] == {"fc": {"dense": 32, "effective": 32}}
    assert net.training and net.fc.training and not net.norm.training
    check(net, (4,))


def test_a_failing_forward_leaves_the_model_as_it_was():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise RuntimeError("broken")

    net = Broken().train()
    with pytest.raises(RuntimeError, match="broken"):
        count_macs(net, (4,))
    assert net.training and torch.backends.mha.get_fastpath_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


# -- equality with FlopCounterMode on the zoo and torchvision ------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_zoo_models_equal_the_flop_counter(name):
    shape = MNIST if name in ("mlp", "lenet5", "seed_cnn") else CIFAR
    check(build_model(name, shape, num_classes=10), shape)


TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
               "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121", "regnet_x_400mf",
               "vgg11_bn", "convnext_tiny"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_equal_the_flop_counter(name):
    import torchvision.models

    check(getattr(torchvision.models, name)(num_classes=10), TV)
