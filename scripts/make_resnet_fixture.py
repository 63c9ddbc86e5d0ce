"""Writes the PyTorch reference fixture for the ResNet encoder tests (needs torch; run once).

A narrow torchvision-layout bottleneck ResNet (stem width 8, layer1..3 with 1, 2, 1
blocks) with random weights AND random non-trivial BatchNorm running statistics
and affine parameters is run in eval mode on a fixed random input of odd size,
2 x 3 x 38 x 59: neither side divisible by 16, and along the two axes
(38 -> 19 -> 10 -> 5 -> 3, 59 -> 30 -> 15 -> 8 -> 4) each stride-2 op (stem conv,
max-pool, layer2, layer3) sees one even and one odd size; on even sizes
PyTorch's symmetric padding and 'SAME' differ. The
reference outputs are computed in float64 from the float32 weights, so the test
measures only the JAX side's rounding. A second run replaces the stem conv by a
4-input-channel one (RGB weights + a random mask-channel slice) on RGB + mask
input, to check Enc-R's layout.

torchvision itself is not imported (it cannot be installed next to this torch
here); `Bottleneck` / `NarrowResNet` below reproduce torchvision.models.resnet's
module names and forward pass (v1.5: stride on conv2; projection shortcut
`downsample = Sequential(conv1x1(stride), BatchNorm2d)` on each stage's first
block), so the state-dict keys are torchvision's.

Outputs in tests/fixtures/ (about 0.6 MB):
  resnet_narrow.safetensors     state dict, torchvision keys (incl. num_batches_tracked)
  resnet_narrow.pth             the same state dict via torch.save (for the .pth test)
  resnet_narrow_io.safetensors  input [2,3,38,59], res2/res3/res4 (NCHW), and the
                                4-channel variant: mask_conv1_weight [8,1,7,7],
                                input_rgbm [2,4,38,59], res{2,3,4}_rgbm

Regenerate (torch only in a throwaway venv; never a munet_jax dependency):
  PYENV_VERSION=3.11.7 python3.11 -m venv /tmp/torch311
  /tmp/torch311/bin/pip install torch==2.13.0 numpy safetensors
  /tmp/torch311/bin/python scripts/make_resnet_fixture.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

WIDTH = 8
STAGE_SIZES = (1, 2, 1)
INPUT_SHAPE = (2, 3, 38, 59)
SEED = 20240607
OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class NarrowResNet(nn.Module):
    """torchvision ResNet's stem + layer1..layer3 (no layer4, no fc), any width."""

    def __init__(self, width: int, stage_sizes, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for s, blocks in enumerate(stage_sizes):
            planes, stride = width * 2**s, (1 if s == 0 else 2)
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            layers = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            layers += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.num_stages = len(stage_sizes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
            out[f"res{s + 2}"] = x
        return out


def randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Kaiming-scaled convs; BN with statistics and affine far from the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.num_batches_tracked.fill_(1000)


@torch.no_grad()
def reference(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 forward pass of the float32 weights, returned as float32."""
    model64 = copy.deepcopy(model).double().eval()
    return {k: v.float() for k, v in model64(x.double()).items()}


def main() -> None:
    from safetensors.torch import save_file  # only here: benchmarks/stm_pytorch.py imports the model classes

    gen = torch.Generator().manual_seed(SEED)
    model = NarrowResNet(WIDTH, STAGE_SIZES).eval()
    randomise(model, gen)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    x = torch.randn(INPUT_SHAPE, generator=gen)
    io = {"input": x, **reference(model, x)}

    # Enc-R layout: RGB weights unchanged, a random slice for the 4th (mask) input channel.
    mask_w = torch.randn((WIDTH, 1, 7, 7), generator=gen) * (2.0 / (4 * 49)) ** 0.5
    model4 = NarrowResNet(WIDTH, STAGE_SIZES, in_channels=4).eval()
    state4 = dict(state)
    state4["conv1.weight"] = torch.cat([state["conv1.weight"], mask_w], dim=1)
    model4.load_state_dict(state4)
    mask = torch.rand((INPUT_SHAPE[0], 1) + INPUT_SHAPE[2:], generator=gen)
    x4 = torch.cat([x, mask], dim=1)
    io.update({"mask_conv1_weight": mask_w, "input_rgbm": x4})
    io.update({f"{k}_rgbm": v for k, v in reference(model4, x4).items()})

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    save_file(state, str(OUT_DIR / "resnet_narrow.safetensors"))
    torch.save(state, OUT_DIR / "resnet_narrow.pth")
    save_file({k: v.contiguous() for k, v in io.items()}, str(OUT_DIR / "resnet_narrow_io.safetensors"))
    for name in ("resnet_narrow.safetensors", "resnet_narrow.pth", "resnet_narrow_io.safetensors"):
        print(f"{OUT_DIR / name}: {(OUT_DIR / name).stat().st_size} bytes")
    print({k: tuple(v.shape) for k, v in io.items()})


if __name__ == "__main__":
    main()
