"""Protocol (1) of Fig. 4: DAVIS 2017 train only (ImageNet-initialised ResNet-50).

    python -m munet_jax.train --config=configs/protocol1.py --workdir=runs/protocol1 \
        --config.init.backbone_weights=weights/resnet50.safetensors \
        --config.data.roots.davis2017=/data/DAVIS
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: configs.common
from configs import common  # noqa: E402


def get_config(arg=None):
    del arg
    return common.finalize(common.base_config("1"))
