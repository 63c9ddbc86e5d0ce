"""Protocol (3-1) of Fig. 4: fine-tuning the protocol (3) pretraining on DAVIS 2017 train.

    python -m munet_jax.train --config=configs/protocol3_1.py --workdir=runs/protocol3_1 \
        --config.init.from_checkpoint=runs/protocol3_pretrain \
        --config.data.roots.davis2017=/data/DAVIS

All parameters (both encoders, MU-Layer, memory, decoder) come from the latest checkpoint
of the pretraining workdir (or `init.from_checkpoint_step`); AdamW starts afresh.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: configs.common
from configs import common  # noqa: E402


def get_config(arg=None):
    del arg
    c = common.base_config("3-1")
    c.init.from_checkpoint = "runs/protocol3_pretrain"  # override with the pretraining run's workdir
    return common.finalize(c)
