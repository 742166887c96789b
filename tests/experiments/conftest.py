"""A tiny synthetic experiment (CSV interactions, item table, item vectors, config) for the
command-line tests."""

import numpy as np
import pytest


def write_experiment(tmp_path):
    """Write the tiny experiment into ``tmp_path``; returns it."""
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 50
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        start = rng.integers(0, n_items)
        for t in range(8):  # each user walks the catalogue: item (start + 2t) mod n
            lines.append(f"u{u},i{(start + 2 * t) % n_items},{t}")
    (tmp_path / "inter.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "items.csv").write_text("item_id,price\n" + "".join(
        f"i{i},{1 + i % 3}\n" for i in range(n_items)))
    vectors = rng.normal(size=(n_items, 8)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    (tmp_path / "cfg.yaml").write_text(f"""
data: {{format: table, path: {tmp_path / 'inter.csv'}, item_path: {tmp_path / 'items.csv'},
        name: toy, max_history: 5, value_cols: [price]}}
sid: {{method: rkmeans, codebook_sizes: [4, 4], collisions: reassign,
       vectors_path: {tmp_path / 'vectors.npy'}}}
model: {{n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}}
sft: {{max_epochs: 2, val_beam: 5, batch_size: 16}}
sasrec: {{max_epochs: 2, hidden: 16, batch_size: 16}}
rl: {{steps: 2, users_per_step: 8, n_candidates: 4, checkpoint_every: 1, ved: {{init_beam: 2}},
     value_warmup_steps: 3}}
eval: {{beam_width: 10, ks: [1, 5, 10], batch_size: 16}}
run: {{name: toy, out_dir: {tmp_path / 'runs'}, cache_dir: {tmp_path / 'cache'}, seeds: [0],
      methods: [popularity, sasrec, sft, grpo_beam, vstar], progress: false}}
""")
    return tmp_path


@pytest.fixture()
def experiment(tmp_path):
    return write_experiment(tmp_path)


@pytest.fixture(scope="module")
def experiment_after_sft(tmp_path_factory):
    """The tiny experiment with its SFT generator trained, once per test module (RL methods
    then start from it)."""
    from vstar.experiments.cli import main

    path = write_experiment(tmp_path_factory.mktemp("experiment"))
    assert main(["run", str(path / "cfg.yaml"), "run.methods=[sft]", "run.num_threads=1"]) == 0
    return path
