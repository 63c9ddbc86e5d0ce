"""DAVIS 2017 semi-supervised evaluation (J, F, J&F) giving the official tool's numbers.

`region_boundary`: J and F of one mask pair. `davis_eval`: sequences, statistics, CSVs.
CLI: `python -m munet_jax.metrics --davis_root ROOT --results DIR`. Imports neither
TensorFlow nor JAX, so evaluation runs on any machine.
"""

from munet_jax.metrics.davis_eval import (
    GLOBAL_COLUMNS,
    PER_SEQUENCE_COLUMNS,
    EvaluationResult,
    ObjectScores,
    SequenceResult,
    decay_bin_edges,
    evaluate_davis,
    evaluate_sequence,
    load_sequence,
    read_sequence_names,
    sequence_statistics,
)
from munet_jax.metrics.region_boundary import (
    boundary_f,
    boundary_precision_recall,
    boundary_tolerance,
    disk,
    jaccard,
    seg2bmap,
)

__all__ = [
    "GLOBAL_COLUMNS",
    "PER_SEQUENCE_COLUMNS",
    "EvaluationResult",
    "ObjectScores",
    "SequenceResult",
    "boundary_f",
    "boundary_precision_recall",
    "boundary_tolerance",
    "decay_bin_edges",
    "disk",
    "evaluate_davis",
    "evaluate_sequence",
    "jaccard",
    "load_sequence",
    "read_sequence_names",
    "seg2bmap",
    "sequence_statistics",
]
