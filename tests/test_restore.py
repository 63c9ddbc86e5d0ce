"""Loading a trained model from a run's workdir (config.json + orbax checkpoints)."""

import jax
import ml_collections
import numpy as np
import pytest

from munet_jax.inference.restore import load_model, save_model
from munet_jax.models.config import tiny_munet_config
from munet_jax.models.munet import build_model, init_variables


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = ml_collections.ConfigDict({"model": tiny_munet_config().to_dict()})
    variables = init_variables(build_model(config.model), 3, (32, 32), 1)
    workdir = tmp_path_factory.mktemp("run")
    save_model(workdir, config, variables, 5)
    save_model(workdir, config, jax.tree_util.tree_map(lambda x: x + 1, variables), 9)
    return workdir, variables


def test_latest_and_named_steps_round_trip(run_dir):
    workdir, variables = run_dir
    latest = load_model(workdir)
    assert latest.step == 9
    first = load_model(workdir / "checkpoints" / "5")
    assert first.step == 5
    for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (variables, first.variables, latest.variables))):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.asarray(a) + 1, c)
    assert latest.model.config.backbone.width == tiny_munet_config().backbone.width
    assert load_model(workdir, dtype="bfloat16").model.config.dtype == "bfloat16"


def test_clear_errors(run_dir, tmp_path):
    workdir, _ = run_dir
    with pytest.raises(FileNotFoundError, match="step 4; available: \\[5, 9\\]"):
        load_model(workdir, step=4)
    with pytest.raises(FileNotFoundError, match="expected a training workdir"):
        load_model(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
