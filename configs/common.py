"""Defaults shared by every training config; the protocol files change only what differs.

Every number of the paper (Sec. 3.4, 3.5) is a field here with the paper's value:
AdamW (lr 2e-5, betas 0.9 / 0.999, weight decay 0.5), 400x400 crops, 6-frame clips,
BsCE over the hardest 40% of pixels + mask-IoU with lambda = 1. Values the paper
does not give (steps, batch size beyond one clip, intervals) are marked as ours.

Override any field from the command line, e.g.
    python -m munet_jax.train --config=configs/protocol2.py --workdir=runs/p2 \
        --config.optim.lr=1e-5 --config.data.roots.davis2017=/data/DAVIS
A field that does not exist is an error (the config is locked).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from munet_jax.data.config import data_config
from munet_jax.models.config import munet_config


def base_config(protocol: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.protocol = protocol
    c.model = munet_config()

    # Input: clip shape, sampling, augmentation and the protocol's dataset mix (munet_jax.data.config),
    # plus where the data lives.
    c.data = data_config(protocol)  # crop_size (400, 400), clip_length 6
    c.data.source = "datasets"  # 'datasets' | 'synthetic' | 'synthetic_memory' (munet_jax.training.input)
    c.data.roots = ml_collections.ConfigDict({"davis2017": "", "youtube_vos2018": "", "static_images": ""})
    c.data.davis_resolution = "480p"
    # The built-in synthetic set (data.source = 'synthetic' / 'synthetic_memory'); root '' means
    # <workdir>/../data/synthetic_davis, written on first use.
    c.data.synthetic = ml_collections.ConfigDict(
        dict(root="", num_train=60, num_val=10, num_frames=24, height=240, width=432, seed=0))

    # Eq. 4: L = L_bsce (hardest 40% of pixels) + lambda * L_miou, lambda = 1.
    c.loss = ml_collections.ConfigDict(dict(kind="bsce_iou", top_fraction=0.4, iou_weight=1.0))

    # Sec. 3.5: AdamW, betas (0.9, 0.999), lr 2e-5, weight decay 0.5 (decoupled, PyTorch's AdamW).
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.lr = 2e-5
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8  # PyTorch's default, which "default parameters" implies
    c.optim.weight_decay = 0.5
    c.optim.grad_clip_norm = config_dict.placeholder(float)  # None: no clipping (the paper mentions none)
    c.optim.schedule = "constant"  # the paper's; or 'cosine' / 'warmup_cosine'
    c.optim.warmup_steps = 0
    c.optim.end_lr_fraction = 0.0  # cosine schedules end at lr * this

    # Initialisation: Enc-Q / Enc-R from torchvision ResNet-50 ImageNet weights (the paper) or the
    # ResNet-50 body of Mask R-CNN (.safetensors or .pth, munet_jax.pretrained); or all params of
    # an earlier run (a workdir) - protocol 3-1 / 3-2 start from the 3-pretrain run.
    c.init = ml_collections.ConfigDict()
    c.init.backbone_weights = ""
    c.init.from_checkpoint = ""
    c.init.from_checkpoint_step = config_dict.placeholder(int)  # None: the latest

    c.train = ml_collections.ConfigDict()
    # The paper trains on one 2080Ti with one 6-frame clip per step. Ours: set the global
    # batch to a multiple of the device count (each device needs at least one clip).
    c.train.global_batch_size = 1
    c.train.num_steps = 200_000  # ours: the paper gives no schedule length
    c.train.seed = 0  # init and data order: the batch of step s is a function of (seed, s)
    c.train.mixed_precision = False  # True: bfloat16 compute, float32 parameters / optimizer / loss
    c.train.checkpoint_every = 2_000
    c.train.max_to_keep = 3
    c.train.async_checkpointing = True
    c.train.log_every = 50  # progress line (and the non-finite check)
    c.train.summary_every = 50  # TensorBoard scalars
    c.train.image_every = 2_000  # TensorBoard clip panels (0: never)
    c.train.eval_every = 0  # DAVIS val J&F every this many steps (0: never; needs eval.davis_root)

    # Periodic validation (the hook in munet_jax.training.loop).
    c.eval = ml_collections.ConfigDict()
    c.eval.davis_root = ""
    c.eval.split = "val"
    c.eval.resolution = "480p"
    c.eval.max_sequences = config_dict.placeholder(int)  # None: the whole split

    # Multi-host: 'auto' initialises jax.distributed under SLURM (> 1 task), on multi-worker
    # Cloud TPU, under Open MPI or when coordinator_address is set.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "auto"
    c.distributed.coordinator_address = config_dict.placeholder(str)
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.cpu_collectives = config_dict.placeholder(str)  # 'gloo' for CPU-only multi-process
    return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the tree: assigning a field that does not exist raises, overrides included."""
    c.lock()
    return c
