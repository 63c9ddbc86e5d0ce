"""Trains MUNet: `python -m munet_jax.train --config=configs/protocol2.py --workdir=DIR`.

    --config=FILE[:ARG]      an ml_collections config file (`get_config(ARG)`), see configs/
    --config.a.b=VALUE       override any field; a field that does not exist is an error
    --workdir=DIR            checkpoints, TensorBoard events, metrics.jsonl, config.json;
                             a DIR holding a run resumes it from its latest checkpoint

The same command runs on one CPU, all local GPUs, SLURM nodes or a TPU pod
(see launch/). Exit status: 0 done or stopped by SIGTERM after saving, 1 on a
non-finite loss (the last good checkpoint is kept), 2 on a bad command line.
"""

from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags


def parse_flags(argv: list[str]):
    """argv (without the program name) -> (config, workdir). Fresh flag registry per call,
    so tests and notebooks can parse several command lines in one process."""
    fv = flags.FlagValues()
    argv = ["munet_jax.train", *argv]
    # sys_argv: the override flags (--config.a.b) are defined from this list, not sys.argv.
    config_flags.DEFINE_config_file(
        "config", None, "config file (configs/*.py)", flag_values=fv, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "run directory (resumed if it holds checkpoints)", flag_values=fv)
    flags.DEFINE_string("log_level", "INFO", "Python logging level", flag_values=fv)
    try:
        fv(argv)  # flags.Error on unknown flags and bad values
    except (AttributeError, KeyError) as err:  # what ml_collections raises for --config.<missing field>
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        raise flags.Error(f"unknown config field among {overrides}: {err}") from None
    if fv.config is None:
        raise flags.IllegalFlagValueError("--config=FILE is required (e.g. configs/protocol2.py)")
    if not fv.workdir:
        raise flags.IllegalFlagValueError("--workdir=DIR is required")
    return fv.config, fv.workdir, fv.log_level


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, workdir, log_level = parse_flags(argv)
    except (flags.Error, ValueError) as err:
        print(f"munet_jax.train: {err}\n\n{__doc__}", file=sys.stderr)
        return 2
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    for name in ("absl", "jax._src.xla_bridge"):  # backend probing chatter
        logging.getLogger(name).setLevel(logging.WARNING)

    from munet_jax import compilation_cache
    from munet_jax.training.loop import NonFiniteLossError, train  # after parsing: imports jax

    compilation_cache.enable()

    try:
        train(config, workdir)
    except NonFiniteLossError as err:
        logging.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
