"""Model hyper-parameters as ml_collections ConfigDicts.

`munet_config()` holds the paper's numbers (ResNet-50 encoders to res4, 25x25
cost-volume window, Table 1 motion network, STM key/value sizes). The protocol
configs in `configs/` put it under `config.model` and override fields from the
command line. `tiny_munet_config()` is the same architecture, narrow and
shallow, for tests and the CPU demo.
"""

from __future__ import annotations

import ml_collections


def munet_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # ResNet encoders (Enc-Q on RGB, Enc-R on RGB + mask), torchvision layout up to res4.
    c.backbone = ml_collections.ConfigDict()
    c.backbone.stage_sizes = (3, 4, 6)  # bottleneck blocks in res2, res3, res4 (ResNet-50)
    c.backbone.width = 64  # stem width; stage widths 64/128/256, x4 expansion -> 256/512/1024 channels
    # 'frozen_bn' (STM; what ImageNet / Mask R-CNN weights need) or 'group_norm' (32 groups,
    # for training from random weights: frozen BN at its initial statistics normalises nothing).
    c.backbone.norm = "frozen_bn"

    # MU-Layer (Sec. 3.2).
    c.mu_layer = ml_collections.ConfigDict()
    c.mu_layer.enabled = True  # False: the paper's baseline, Table 4 (a)
    c.mu_layer.window = 25  # U = V = 25 candidate displacements per axis
    c.mu_layer.reduction = 4  # 1x1 conv D -> D / reduction before matching
    c.mu_layer.tau = 1.0  # softmax temperature of the soft-argmin (DESIGN.md)
    c.mu_layer.use_displacement = True  # ablation rows (c)/(d) vs (e) of Table 4
    c.mu_layer.use_uncertainty = True
    # Table 1, layers 1..7: (out_channels, kernel); layer 8 is 1x1 to D (res4 channels).
    c.mu_layer.motion_net = ((3, 7), (16, 1), (16, 3), (32, 1), (32, 3), (32, 1), (64, 3))

    # Fusion of motion and semantic features (Sec. 3.3): 'attention' (MSAM, Eq. 3) or 'add' (Table 4 f).
    c.fusion = "attention"

    # Space-time memory (STM).
    c.key_dim = 128
    c.value_dim = 512
    c.decoder_dim = 256
    # How the 3x3 convs run (encoder bottlenecks, key/value, decoder; same parameters and
    # function up to float rounding whichever): 'auto' = Winograd F(4x4, 3x3) on XLA:CPU where
    # it is faster (float32 and bfloat16, computed in float32; >= 128 channels in and out on
    # maps >= 64x64, or >= 64 channels on maps >= 16x16 with the kernels prepared once for
    # inference: `InferenceEngine.prepare`), lax.conv elsewhere and on GPU/TPU; 'direct' always
    # lax.conv; 'winograd' every stride-1 3x3 conv (munet_jax.models.winograd). Run configs from
    # before this field have `decoder_conv`.
    c.conv3x3 = "auto"
    # How the memory read runs (same values up to float rounding whichever): 'auto' = on
    # XLA:CPU, a loop over blocks of query pixels for bfloat16 ('query_blocked'), and for
    # float32 an online softmax over blocks of memory frames when the memory spans more than
    # one block and keys + values have <= 256 channels ('blocked': the tiny and demo models),
    # else the whole affinity at once ('dense', also on GPU/TPU); 'dense', 'blocked' or
    # 'query_blocked' always (munet_jax.models.memory).
    c.memory_read = "auto"

    # Compute dtype: 'float32' or 'bfloat16' (parameters stay float32).
    c.dtype = "float32"
    return c


def tiny_munet_config() -> ml_collections.ConfigDict:
    """The same network at a size that initialises and runs in well under a second on CPU."""
    c = munet_config()
    c.backbone.stage_sizes = (1, 1, 1)
    c.backbone.width = 8  # res2/res3/res4 channels 32/64/128
    c.mu_layer.window = 5
    c.mu_layer.motion_net = ((3, 3), (8, 1), (8, 3), (8, 1), (8, 3), (8, 1), (16, 3))
    c.key_dim = 16
    c.value_dim = 32
    c.decoder_dim = 16
    return c
