"""Same-machine baseline: STM's per-frame inference in PyTorch (issue 6's comparison).

    python benchmarks/stm_pytorch.py [--sizes 480x864,240x432] [--objects 1] [--memory 5]
                                     [--repeats 5] [--threads N] [--json OUT.json]

Needs torch (any CPU build; it is never a munet_jax dependency): run it from a
throwaway environment, e.g.

    PYENV_VERSION=3.11.7 python3.11 -m venv /tmp/torch311
    /tmp/torch311/bin/pip install torch==2.13.0 numpy
    /tmp/torch311/bin/python benchmarks/stm_pytorch.py

What is timed is one frame of STM's evaluation loop (Oh et al. 2019, the
official code's `segment` then `memorize` of the same frame), with random
weights and frozen (eval-mode) BatchNorm, float32, `torch.no_grad()`,
flush-to-zero on, after warm-up:

    Encoder_Q(frame)                      ResNet-50 stem + layer1..3 -> r4, r3, r2
    KeyValue(r4) -> query key 128, value 512       (3x3 convs, 1024 in)
    memory read per object over T x h x w positions, concat with the query value
    Decoder per object: convFM 3x3 1024->256, ResMM, Refine(r3), Refine(r2),
                        pred2 3x3 256->2, 4x bilinear upsampling
    soft aggregation of the K objects
    Encoder_M(frame, mask, other objects' mask) -> KeyValue -> the next frame's
                        temporary memory slot (conv1 on RGB + conv1_m + conv1_o)

This is the network MUNet extends (the same encoders, memory read and decoder,
without the MU-Layer and MSAM), written here from the STM paper's description
in the layout of its public code; no code of STM is copied. The ResNet-50 body
is the torchvision-layout `NarrowResNet` of scripts/make_resnet_fixture.py. `python -m
munet_jax.benchmark inference` times the munet_jax frame at the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The torchvision-layout ResNet (Bottleneck, stem, layer1..3) of the encoder test fixture.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_resnet_fixture import NarrowResNet  # noqa: E402


class EncoderQ(NarrowResNet):
    """Enc-Q: ResNet-50 stem + layer1..3 -> (r4, r3, r2)."""

    def __init__(self):
        super().__init__(width=64, stage_sizes=(3, 4, 6))

    def forward(self, x):
        out = super().forward(x)
        return out["res4"], out["res3"], out["res2"]


class EncoderM(NarrowResNet):
    """Enc-M: the RGB stem conv plus one conv for the object's mask and one for the other objects'."""

    def __init__(self):
        super().__init__(width=64, stage_sizes=(3, 4, 6))
        self.conv1_m = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.conv1_o = nn.Conv2d(1, 64, 7, 2, 3, bias=False)

    def forward(self, x, mask, other):
        x = self.conv1(x) + self.conv1_m(mask) + self.conv1_o(other)
        x = self.maxpool(self.relu(self.bn1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class KeyValue(nn.Module):
    def __init__(self, indim=1024, keydim=128, valdim=512):
        super().__init__()
        self.key = nn.Conv2d(indim, keydim, 3, padding=1)
        self.value = nn.Conv2d(indim, valdim, 3, padding=1)

    def forward(self, x):
        return self.key(x), self.value(x)


class ResBlock(nn.Module):
    def __init__(self, indim, outdim):
        super().__init__()
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)
        self.downsample = None if indim == outdim else nn.Conv2d(indim, outdim, 3, padding=1)

    def forward(self, x):
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class Refine(nn.Module):
    def __init__(self, inplanes, planes):
        super().__init__()
        self.convFS = nn.Conv2d(inplanes, planes, 3, padding=1)
        self.ResFS = ResBlock(planes, planes)
        self.ResMM = ResBlock(planes, planes)

    def forward(self, f, pm):
        s = self.ResFS(self.convFS(f))
        m = s + F.interpolate(pm, scale_factor=2, mode="bilinear", align_corners=False)
        return self.ResMM(m)


class Decoder(nn.Module):
    def __init__(self, mdim=256):
        super().__init__()
        self.convFM = nn.Conv2d(1024, mdim, 3, padding=1)
        self.ResMM = ResBlock(mdim, mdim)
        self.RF3 = Refine(512, mdim)
        self.RF2 = Refine(256, mdim)
        self.pred2 = nn.Conv2d(mdim, 2, 3, padding=1)

    def forward(self, r4, r3, r2):
        m4 = self.ResMM(self.convFM(r4))
        m3 = self.RF3(r3, m4)
        m2 = self.RF2(r2, m3)
        p2 = self.pred2(F.relu(m2))
        return F.interpolate(p2, scale_factor=4, mode="bilinear", align_corners=False)


def memory_read(m_in, m_out, q_in, q_out):
    """m_in [B, Ck, T, H, W], m_out [B, Cv, T, H, W], q_in [B, Ck, H, W], q_out [B, Cv, H, W]."""
    b, ck, t, h, w = m_in.shape
    mi = m_in.reshape(b, ck, t * h * w).transpose(1, 2)  # [B, THW, Ck]
    qi = q_in.reshape(b, ck, h * w)  # [B, Ck, HW]
    p = torch.softmax(torch.bmm(mi, qi) / math.sqrt(ck), dim=1)  # [B, THW, HW]
    mem = torch.bmm(m_out.reshape(b, m_out.shape[1], t * h * w), p).reshape(b, -1, h, w)
    return torch.cat([mem, q_out], dim=1)


def soft_aggregate(ps):
    """ps [K, H, W] foreground probabilities -> logits [1, K+1, H, W] (background first)."""
    bg = torch.prod(1 - ps, dim=0, keepdim=True)
    em = torch.cat([bg, ps], dim=0).clamp(1e-7, 1 - 1e-7)
    return torch.log(em / (1 - em))[None]


class STM(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc_m, self.enc_q = EncoderM(), EncoderQ()
        self.kv_m, self.kv_q = KeyValue(), KeyValue()
        self.decoder = Decoder()

    def memorize(self, frame, masks):
        """frame [1, 3, H, W], masks [K, H, W] -> keys [K, 128, 1, h, w], values [K, 512, 1, h, w]."""
        k = masks.shape[0]
        others = masks.sum(0, keepdim=True) - masks  # every other object's mask
        r4 = self.enc_m(frame.expand(k, -1, -1, -1), masks[:, None], others[:, None])
        key, value = self.kv_m(r4)
        return key[:, :, None], value[:, :, None]

    def segment(self, frame, keys, values):
        """frame [1, 3, H, W]; keys [K, 128, T, h, w], values [K, 512, T, h, w] -> probs [1, K+1, H, W]."""
        k = keys.shape[0]
        r4, r3, r2 = self.enc_q(frame)
        qk, qv = self.kv_q(r4)
        read = memory_read(keys, values, qk.expand(k, -1, -1, -1), qv.expand(k, -1, -1, -1))
        logits = self.decoder(read, r3.expand(k, -1, -1, -1), r2.expand(k, -1, -1, -1))
        ps = torch.softmax(logits, dim=1)[:, 1]  # [K, H, W]
        return torch.softmax(soft_aggregate(ps), dim=1)


def randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Eval-mode BN with non-trivial running statistics (as loaded ImageNet weights have)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def time_frame(model, size, objects, memory, repeats):
    h, w = size
    gen = torch.Generator().manual_seed(0)
    frame = torch.randn((1, 3, h, w), generator=gen)
    keys = torch.randn((objects, 128, memory, h // 16, w // 16), generator=gen)
    values = torch.randn((objects, 512, memory, h // 16, w // 16), generator=gen)

    def one_frame():
        probs = model.segment(frame, keys, values)
        model.memorize(frame, probs[0, 1:])  # the frame's prediction becomes the temporary slot

    times = []
    with torch.no_grad():
        for _ in range(2):  # warm-up (oneDNN primitive creation)
            one_frame()
        for _ in range(repeats):
            start = time.perf_counter()
            one_frame()
            times.append(time.perf_counter() - start)
    return {"size": [h, w], "objects": objects, "memory_frames": memory, "dtype": "float32",
            "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "repeats": repeats}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="480x864,240x432", help="padded frame sizes HxW (multiples of 16)")
    p.add_argument("--objects", default="1")
    p.add_argument("--memory", default="5")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    p.add_argument("--json", default="", help="write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = STM().eval()
    randomise_bn(model, torch.Generator().manual_seed(1))
    rows = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        if h % 16 or w % 16:
            raise SystemExit(f"--sizes {size}: STM pads frames to multiples of 16; give the padded size")
        for k in (int(v) for v in args.objects.split(",")):
            for t in (int(v) for v in args.memory.split(",")):
                row = time_frame(model, (h, w), k, t, args.repeats)
                rows.append(row)
                print(f"STM (PyTorch {torch.__version__}, {torch.get_num_threads()} threads) {h}x{w} K={k} T={t} "
                      f"float32: {row['median_ms']:.1f} ms (min {row['min_ms']:.1f})", flush=True)
    if args.json:
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                "processor": cpu_model(), "mkldnn": torch.backends.mkldnn.is_available(),
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
