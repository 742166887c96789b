"""A tiny synthetic experiment (CSV interactions, item table, item vectors, config) for the
command-line tests (``vstar.testing.write_toy_experiment``), and one trained run of it for the
tests that only read run folders (the report, TensorBoard files)."""

import pytest

from vstar.testing import write_toy_experiment


@pytest.fixture()
def experiment(tmp_path):
    return write_toy_experiment(tmp_path)


@pytest.fixture(scope="module")
def experiment_after_sft(tmp_path_factory):
    """The tiny experiment with its SFT generator trained, once per test module (RL methods
    then start from it)."""
    from vstar.experiments.cli import main

    path = write_toy_experiment(tmp_path_factory.mktemp("experiment"))
    assert main(["run", str(path / "cfg.yaml"), "run.methods=[sft]", "run.num_threads=1"]) == 0
    return path


@pytest.fixture(scope="session")
def trained_toy(tmp_path_factory):
    """``vstar run`` of the toy experiment, seeds 0 and 1, methods popularity, sft, grpo_beam and
    vstar (about 20 s); returns the folder holding cfg.yaml and runs/toy. Read it, never write."""
    import torch

    from vstar.experiments.cli import main

    path = write_toy_experiment(tmp_path_factory.mktemp("trained_toy"), seeds=(0, 1),
                                methods=("popularity", "sft", "grpo_beam", "vstar"))
    assert main(["run", str(path / "cfg.yaml")]) == 0
    torch.set_num_threads(1)
    return path
