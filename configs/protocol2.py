"""Protocol (2) of Fig. 4: DAVIS 2017 + YouTube-VOS 2018 train, mixed 5:1 per video (ImageNet-initialised ResNet-50).

    python -m munet_jax.train --config=configs/protocol2.py --workdir=runs/protocol2 \
        --config.init.backbone_weights=weights/resnet50.safetensors \
        --config.data.roots.davis2017=/data/DAVIS --config.data.roots.youtube_vos2018=/data/YouTubeVOS
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: configs.common
from configs import common  # noqa: E402


def get_config(arg=None):
    del arg
    return common.finalize(common.base_config("2"))
