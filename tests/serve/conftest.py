"""A tiny trained experiment (toy pipeline: SFT and V-STAR run folders) shared by the serve tests."""

import numpy as np
import pytest

from vstar.experiments.cli import main


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory):
    """{"sft": <sft run folder>, "vstar": <RL run folder>} of a toy experiment (item ids i0..i29)."""
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 50
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        start = rng.integers(0, n_items)
        for t in range(8):
            lines.append(f"u{u},i{(start + 2 * t) % n_items},{t}")
    (root / "inter.csv").write_text("\n".join(lines) + "\n")
    np.save(root / "vectors.npy", rng.normal(size=(n_items, 8)).astype(np.float32))
    (root / "cfg.yaml").write_text(f"""
data: {{format: table, path: {root / 'inter.csv'}, name: toy, max_history: 5}}
sid: {{method: rkmeans, codebook_sizes: [4, 4], collisions: reassign,
       vectors_path: {root / 'vectors.npy'}}}
model: {{n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}}
sft: {{max_epochs: 2, val_beam: 5, batch_size: 16}}
rl: {{steps: 2, users_per_step: 8, n_candidates: 4, checkpoint_every: 1, ved: {{init_beam: 2}},
     value_warmup_steps: 3}}
eval: {{beam_width: 10, ks: [1, 5, 10], batch_size: 16}}
run: {{name: toy, out_dir: {root / 'runs'}, cache_dir: {root / 'cache'}, seeds: [0],
      methods: [sft, vstar], progress: false, num_threads: 1}}
""")
    assert main(["run", str(root / "cfg.yaml")]) == 0
    exp = root / "runs" / "toy"
    return {"sft": exp / "sft" / "seed0", "vstar": exp / "vstar" / "seed0"}
