"""A demo that trains on a 2-core CPU in a few minutes: the tiny MUNet on the built-in
synthetic videos (written on first use into <workdir>/../data/synthetic_davis).

    python -m munet_jax.train --config=configs/demo.py --workdir=runs/demo

`--config=configs/demo.py:memory` renders the clips in memory instead (no TensorFlow
needed, no augmentation). The paper's optimizer with a demo-sized learning rate:
the tiny network starts from random weights, not ImageNet.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: configs.common
from configs import common  # noqa: E402

from munet_jax.models.config import tiny_munet_config  # noqa: E402


def get_config(arg=None):
    c = common.base_config("1")
    c.model = tiny_munet_config()
    c.data.source = "synthetic_memory" if arg == "memory" else "synthetic"
    c.data.weights = {"davis2017": 1.0}
    c.data.synthetic.update(dict(num_train=24, num_val=4, num_frames=12, height=96, width=128))
    c.data.crop_size = (64, 64)
    c.data.clip_length = 4  # 1 reference + 3 predicted frames
    c.data.max_objects = 2
    c.optim.lr = 1e-3
    c.optim.weight_decay = 1e-4
    c.train.global_batch_size = 4
    c.train.num_steps = 600
    c.train.checkpoint_every = 200
    c.train.log_every = 20
    c.train.summary_every = 10
    c.train.image_every = 100
    c.train.eval_every = 300  # J&F on the synthetic val videos (data.source 'synthetic' only)
    return common.finalize(c)
