"""Protocol (3), stage 1 of Fig. 4: pretraining on static image datasets, clips synthesised
from one image and its mask by random affine warps (as STM).

    python -m munet_jax.train --config=configs/protocol3_pretrain.py --workdir=runs/protocol3_pretrain \
        --config.init.backbone_weights=weights/resnet50.safetensors \
        --config.data.roots.static_images=/data/static

`data.roots.static_images` is a folder holding any of ECSSD, MSRA10K_Imgs_GT, PASCAL-S,
DUTS, HRSOD_release, VOCdevkit/VOC2012 (munet_jax.data.static_images); every image found
is equally likely. Fine-tune with protocol3_1.py or protocol3_2.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: configs.common
from configs import common  # noqa: E402


def get_config(arg=None):
    del arg
    c = common.base_config("3-pretrain")
    c.train.num_steps = 300_000  # ours: the paper gives no schedule length
    return common.finalize(c)
