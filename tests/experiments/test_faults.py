"""Fault injection: bad inputs, second writers, resumes and interrupts each get a one-line answer.

Every case runs the CLI in-process (``main``) and checks: a non-zero exit, one line on stderr that
names the field, file or line, and nothing half-written (no run folder left by a refused run, no
temp files, a first run's files untouched).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vstar.experiments.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error",
                                                                                     "interr"))]
    assert len(err) == 1, err
    return err[0]


def _no_temp_files(folder: Path) -> None:
    assert not list(folder.rglob("*.tmp")), list(folder.rglob("*.tmp"))


# ------------------------------------------------------------------ config values, one per field
BAD_OVERRIDES = [
    ("rl.lr=-1", "rl.lr"), ("sft.lr=-1", "sft.lr"), ("sft.lr=0", "sft.lr"),
    ("rl.lr=.nan", "rl.lr"), ("rl.value_lr=-1e-3", "rl.value_lr"),
    ("model.n_head=3", "model.n_head"), ("model.n_embd=0", "model.n_embd"),
    ("model.dropout=2", "model.dropout"), ("model.dropout=1", "model.dropout"),
    ("model.history=bags", "model.history"),
    ("sft.max_epochs=0", "sft.max_epochs"), ("sft.batch_size=0", "sft.batch_size"),
    ("sft.warmup_steps=0", "sft.warmup_steps"), ("sft.val_metric=MRR", "sft.val_metric"),
    ("sft.windows=all", "sft.windows"), ("sft.label_smoothing=1.5", "sft.label_smoothing"),
    ("sft.patience=0", "sft.patience"), ("sft.grad_clip=0", "sft.grad_clip"),
    ("eval.splits=[foo]", "eval.splits"), ("eval.splits=[]", "eval.splits"),
    ("eval.beam_width=0", "eval.beam_width"), ("eval.ks=[1,50]", "eval.ks"),
    ("eval.ks=[0]", "eval.ks"), ("eval.batch_size=0", "eval.batch_size"),
    ("run.num_threads=0", "run.num_threads"), ("run.seeds=[]", "run.seeds"),
    ("run.seeds=[-1]", "run.seeds"), ("run.name=a/b", "run.name"), ("run.name=..", "run.name"),
    ("run.methods=[nope]", "run.methods"), ("run.resume=true", "run.resume"),
    ("rl.users_per_step=0", "rl.users_per_step"), ("rl.n_candidates=1", "rl.n_candidates"),
    ("rl.decoder=greedy", "rl.decoder"), ("rl.reward=nope", "rl.reward"),
    ("rl.schedule=linear", "rl.schedule"), ("sft.schedule=linear", "sft.schedule"),
    ("rl.gamma=1.5", "rl.gamma"),
    ("rl.temperature=0", "rl.temperature"), ("rl.log_every=0", "rl.log_every"),
    ("rl.steps=0", "rl.steps"), ("rl.prefix_emb=x", "rl.prefix_emb"),
    ("rl.level_weights=[-1]", "rl.level_weights"), ("rl.ved.init_beam=0", "rl.ved.init_beam"),
    ("rl.ved.budget=0", "rl.ved.budget"), ("rl.ved.leaf_score=x", "rl.ved.leaf_score"),
    ("rl.value_head.dropout=1", "rl.value_head.dropout"),
    ("sasrec.heads=3", "sasrec.heads"), ("sasrec.device=tpu", "sasrec.device"),
    ("sid.method=pq", "sid.method"), ("sid.codebook_sizes=[4,0]", "sid.codebook_sizes"),
    ("sid.rqvae_dropout=-0.1", "sid.rqvae_dropout"), ("sid.method=index_json", "sid.index_path"),
    ("data.format=xml", "data.format"), ("data.protocol=random", "data.protocol"),
    ("data.k_core=-1", "data.k_core"), ("data.max_history=0", "data.max_history"),
    ("data.split_ratios=[0.5,0.5,0.5]", "data.split_ratios"),
    ("sft.lr=abc", "sft.lr"), ("sft.learning_rate=1", "sft.learning_rate"),
]


@pytest.mark.parametrize("override,field", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_a_bad_config_value_is_one_line_naming_the_field_before_any_work(experiment, capsys,
                                                                        override, field):
    extra = ["run.overwrite=true"] if override == "run.resume=true" else []
    assert main(["run", str(experiment / "cfg.yaml"), override, *extra]) == 2
    line = _error(capsys)
    assert f"'{field}'" in line, line
    assert not (experiment / "runs").exists()           # refused before anything was written


# ------------------------------------------------------------------ config files
@pytest.mark.parametrize("text,words", [
    ("data: [1,\n", "invalid YAML"), ("- 1\n- 2\n", "expected a mapping"),
    ("just text\n", "just text"), ("42\n", "expected a mapping"), ("data: {fromat: table}\n", "fromat"),
    ("nonsense: 1\n", "nonsense"), ("model: {n_head: many}\n", "n_head"),
])
def test_a_bad_config_file_is_named(tmp_path, capsys, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["data", str(path)]) == 2
    line = _error(capsys)
    assert str(path) in line and words in line, line


def test_a_non_utf8_or_missing_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"run: {name: caf\xe9}\n")
    assert main(["data", str(path)]) == 2
    assert "not UTF-8" in _error(capsys)
    assert main(["data", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in _error(capsys)


# ------------------------------------------------------------------ data
def test_bad_data_files_are_named(experiment, capsys):
    cfg = str(experiment / "cfg.yaml")
    (experiment / "latin1.csv").write_bytes(b"user_id,item_id,timestamp\nu\xe9,i1,1\n")
    assert main(["data", cfg, f"data.path={experiment / 'latin1.csv'}"]) == 2
    assert "latin1.csv" in _error(capsys)
    assert main(["data", cfg, "data.k_core=100"]) == 2
    assert "data.k_core" in _error(capsys)
    (experiment / "short.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\n")
    assert main(["data", cfg, f"data.path={experiment / 'short.csv'}"]) == 2
    assert "no rows" in _error(capsys)


def test_an_empty_lcrec_file_is_named(tmp_path, capsys):
    (tmp_path / "x.inter.json").write_text("{}")
    (tmp_path / "cfg.yaml").write_text(f"data: {{format: lcrec, path: {tmp_path / 'x.inter.json'}}}\n")
    assert main(["data", str(tmp_path / "cfg.yaml")]) == 2
    assert "x.inter.json" in _error(capsys)


def test_an_index_code_outside_the_codebook_is_an_error_not_a_widening(experiment, capsys):
    index = {f"i{i}": [f"<a_{i % 4}>", f"<b_{i // 4 % 4}>", f"<c_{i}>"] for i in range(30)}
    index["i7"][2] = "<c_100000>"
    (experiment / "index.json").write_text(json.dumps(index))
    assert main(["sid", str(experiment / "cfg.yaml"), "sid.method=index_json",
                 f"sid.index_path={experiment / 'index.json'}",
                 "sid.codebook_sizes=[4,4,64]"]) == 2
    line = _error(capsys)
    assert "index.json" in line and "'i7'" in line and "100000" in line


# ------------------------------------------------------------------ output folders
def test_a_file_or_read_only_out_dir_is_one_line(experiment, capsys):
    cfg = str(experiment / "cfg.yaml")
    (experiment / "file").write_text("x")
    assert main(["run", cfg, f"run.out_dir={experiment / 'file'}", "run.methods=[popularity]"]) == 1
    assert "file" in _error(capsys)
    if os.geteuid() != 0:                                      # root ignores permissions
        (experiment / "ro").mkdir(mode=0o500)
        assert main(["run", cfg, f"run.out_dir={experiment / 'ro' / 'x'}",
                     "run.methods=[popularity]"]) == 1
        assert "ro" in _error(capsys)


# ------------------------------------------------------------------ run folders and resume
def test_a_second_writer_is_refused_naming_the_holder(experiment, capsys):
    from vstar.core.io import FolderLock
    from vstar.core.layout import ExperimentLayout

    cfg = str(experiment / "cfg.yaml")
    layout = ExperimentLayout(experiment / "runs" / "toy").run("popularity", 0)
    lock = FolderLock(layout.lock).acquire(layout.path)
    try:
        assert main(["run", cfg, "run.methods=[popularity]", "run.overwrite=true"]) == 2
        line = _error(capsys)
        assert f"pid {os.getpid()}" in line and "in use" in line
        assert not layout.path.exists()                      # nothing created under a lock
    finally:
        lock.release()
    assert main(["run", cfg, "run.methods=[popularity]"]) == 0


def test_an_existing_run_is_kept_unless_asked_and_a_failed_one_is_replaced(experiment, capsys):
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[popularity]"]) == 0
    metrics = experiment / "runs" / "toy" / "popularity" / "seed0" / "metrics.json"
    before = metrics.read_bytes()
    assert main(["run", cfg, "run.methods=[popularity]"]) == 2
    assert "run.overwrite=true" in _error(capsys) and metrics.read_bytes() == before
    # a resume of a finished run is a no-op that keeps its files
    assert main(["run", cfg, "run.methods=[popularity]", "run.resume=true"]) == 0
    assert metrics.read_bytes() == before
    status = metrics.parent / "status.json"
    status.write_text(json.dumps({"state": "failed"}))
    assert main(["run", cfg, "run.methods=[popularity]"]) == 0       # failed: replaced
    assert json.loads(status.read_text())["state"] == "finished"


def test_rl_refuses_an_unfinished_or_mismatched_sft_run_and_a_changed_resume(experiment, capsys,
                                                                             monkeypatch):
    from vstar.train.rl import RLTrainer

    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft]"]) == 0
    sft = experiment / "runs" / "toy" / "sft" / "seed0"
    status = json.loads((sft / "status.json").read_text())
    (sft / "status.json").write_text(json.dumps({"state": "failed"}))
    assert main(["rl", cfg, "--method", "grpo_beam"]) == 2
    assert "did not finish" in _error(capsys)
    (sft / "status.json").write_text(json.dumps(status))
    prov = json.loads((sft / "provenance.json").read_text())
    (sft / "provenance.json").write_text(json.dumps(dict(prov, sids="0" * 64)))
    assert main(["rl", cfg, "--method", "grpo_beam", "run.overwrite=true"]) == 2
    assert "other sids" in _error(capsys)
    (sft / "provenance.json").write_text(json.dumps(prov))
    # interrupted RL: resume only when asked, and only with the same config
    step = RLTrainer.step

    def interrupt(self):
        if self.step_idx == 1:
            raise KeyboardInterrupt
        return step(self)
    monkeypatch.setattr(RLTrainer, "step", interrupt)
    assert main(["rl", cfg, "--method", "grpo_beam", "run.overwrite=true"]) == 130
    assert "interrupted" in _error(capsys)
    monkeypatch.setattr(RLTrainer, "step", step)
    run = experiment / "runs" / "toy" / "grpo_beam" / "seed0"
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    assert main(["rl", cfg, "--method", "grpo_beam"]) == 2
    assert "run.resume=true" in _error(capsys)
    assert main(["rl", cfg, "--method", "grpo_beam", "run.resume=true", "rl.lr=3e-3"]) == 2
    line = _error(capsys)
    assert "rl.lr" in line and "differ" in line
    # a run started before a field existed (its config.yaml lacks it) resumes while the field
    # keeps its default, and not once it is set to something else
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["rl"]["value_head"]["prior"], stored["sid"]["sasrec_hidden"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    assert main(["rl", cfg, "--method", "grpo_beam", "run.resume=true",
                 "rl.value_head.prior=policy"]) == 2
    line = _error(capsys)
    assert "rl.value_head.prior" in line and "sid.sasrec_hidden" not in line
    assert main(["rl", cfg, "--method", "grpo_beam", "run.resume=true", "rl.steps=3"]) == 0
    steps = [json.loads(l)["step"] for l in (run / "rl_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]                                      # no duplicated steps
    _no_temp_files(experiment / "runs")


def test_interrupted_and_resumed_rl_ends_with_the_weights_of_an_uninterrupted_run(
        experiment, monkeypatch):
    from safetensors.torch import load_file

    from vstar.train.rl import RLTrainer

    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft,vstar]", "rl.steps=3"]) == 0
    run = experiment / "runs" / "toy" / "vstar" / "seed0"
    reference = load_file(run / "generator.safetensors")
    step = RLTrainer.step
    for stop in (1, 2):
        def interrupt(self, stop=stop):
            if self.step_idx == stop:
                raise KeyboardInterrupt
            return step(self)
        monkeypatch.setattr(RLTrainer, "step", interrupt)
        assert main(["rl", cfg, "--method", "vstar", "rl.steps=3", "run.overwrite=true"]) == 130
        monkeypatch.setattr(RLTrainer, "step", step)
        assert main(["rl", cfg, "--method", "vstar", "rl.steps=3", "run.resume=true"]) == 0
        resumed = load_file(run / "generator.safetensors")
        assert all((resumed[k] == reference[k]).all() for k in reference), stop


def test_interrupted_and_resumed_sft_ends_with_the_weights_and_metrics_of_an_uninterrupted_run(
        experiment, monkeypatch):
    from safetensors.torch import load_file

    from vstar.train import sft

    cfg = str(experiment / "cfg.yaml")
    args = ["sft", cfg, "sft.max_epochs=3", "sft.patience=3", "model.dropout=0.1"]
    assert main(args) == 0
    run = experiment / "runs" / "toy" / "sft" / "seed0"
    reference = load_file(run / "generator.safetensors")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    loss = sft.sft_loss
    for stop in (5, 9):                                  # batches: 4 per epoch here
        calls = []

        def interrupt(*a, stop=stop, calls=calls, **k):
            import torch
            if not torch.is_grad_enabled():              # the held-out NLL of a validation
                return loss(*a, **k)
            calls.append(1)
            if len(calls) == stop:
                raise KeyboardInterrupt
            return loss(*a, **k)
        monkeypatch.setattr(sft, "sft_loss", interrupt)
        assert main(args + ["run.overwrite=true"]) == 130
        monkeypatch.setattr(sft, "sft_loss", loss)
        assert (run / "sft_state.safetensors").is_file()
        assert main(args + ["run.resume=true"]) == 0
        resumed = load_file(run / "generator.safetensors")
        assert all((resumed[k] == reference[k]).all() for k in reference), stop
        assert json.loads((run / "metrics.json").read_text())["metrics"] == metrics


def test_stale_temp_files_are_removed_when_a_run_is_reopened(experiment):
    from vstar.experiments.rundir import RunDir

    RunDir.create(experiment, "r", {}, seed=0, console=False).close()
    (experiment / "r" / ".generator.safetensors.abc.tmp").write_text("half")
    RunDir.open(experiment / "r", console=False).close()
    _no_temp_files(experiment / "r")


def test_a_corrupt_embedding_cache_is_named_and_recomputed(tmp_path, caplog, monkeypatch):
    import numpy as np

    from vstar.core.layout import CacheLayout
    from vstar.sid import embed

    texts = ["a", "b"]
    monkeypatch.setattr(embed, "embed_texts",
                        lambda t, *a, **k: np.ones((len(t), embed.EMBED_DIM), np.float32))
    path = CacheLayout(tmp_path).text_embeddings(embed.texts_cache_key(texts))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 10)
    emb = embed.embed_texts_cached(texts, tmp_path, show_progress=False)
    assert emb.shape == (2, embed.EMBED_DIM)
    assert str(path) in caplog.text and "re-embedding" in caplog.text
    assert embed.load_embeddings(path)[0].shape == (2, embed.EMBED_DIM)   # replaced


# ------------------------------------------------------------------ numbers and metrics names
def test_nan_in_a_loss_stops_rl_naming_step_and_tensor(experiment, capsys, monkeypatch):
    import torch

    from vstar.train import rl

    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft]"]) == 0
    monkeypatch.setattr(rl.RLTrainer, "rewards",
                        lambda self, b: torch.full(b.items.shape, float("nan")))
    assert main(["rl", cfg, "--method", "grpo_beam"]) == 2
    line = _error(capsys)
    assert "reward" in line and "step 1" in line
    status = experiment / "runs" / "toy" / "grpo_beam" / "seed0" / "status.json"
    assert json.loads(status.read_text())["state"] == "failed"


def test_unknown_compare_metrics_and_nan_cells(experiment, capsys):
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[popularity]"]) == 0
    capsys.readouterr()
    exp = experiment / "runs" / "toy"
    assert main(["compare", str(exp), "--metrics", "HR@10", "NDGC@10"]) == 2
    assert "NDGC@10" in _error(capsys)
    metrics = exp / "popularity" / "seed0" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["metrics"]["HR@10"] = None                        # JSON's NaN
    metrics.write_text(json.dumps(record))
    assert main(["compare", str(exp), "--metrics", "HR@10", "HR@5"]) == 0
    assert "nan" not in capsys.readouterr().out.lower()


# ------------------------------------------------------------------ two processes
def test_two_concurrent_runs_with_the_same_name_the_second_is_refused(experiment):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "vstar", "run", str(experiment / "cfg.yaml"),
           "run.methods=[sasrec]", "run.num_threads=1", "sid.vectors=text",
           "sasrec.max_epochs=600", "sasrec.patience=600"]
    first = subprocess.Popen(cmd + ["sasrec.lr=1e-3"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = experiment / "runs" / "toy" / "sasrec" / ".seed0.lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    second = subprocess.run(cmd + ["sasrec.lr=3e-3", "run.overwrite=true"], env=env,
                            capture_output=True, text=True)
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
    out, err = first.communicate(timeout=600)    # 600 toy epochs: ~20 s idle, more under load
    assert first.returncode == 0, err
    run = experiment / "runs" / "toy" / "sasrec" / "seed0"
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


# ------------------------------------------------------------------ kill -9 and resume
def _mtime(path: Path) -> int | None:
    """The file's modification time, or None when it does not exist. One ``stat`` call: the run
    deletes its state file when it finishes, so ``is_file()`` then ``stat()`` would race it."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_and_resume(experiment, args: list[str], run: Path, state_name: str, seed: int):
    """Run ``args`` in a subprocess and SIGKILL it at a random moment after its 1st-4th new
    checkpoint, three times (each time resuming the previous kill's state), then resume to the
    end; returns the final generator weights and metrics."""
    import random
    import signal

    from safetensors.torch import load_file

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "vstar"] + args + ["run.num_threads=1"]
    rnd = random.Random(seed)
    kills = 0
    for attempt in range(3):
        cmd = base + (["run.overwrite=true"] if attempt == 0 else ["run.resume=true"])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        state = run / state_name
        last = _mtime(state)
        wanted, seen = rnd.randint(1, 4), 0              # checkpoints this process must write
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and seen < wanted:
            stamp = _mtime(state)
            if stamp is not None and stamp != last:      # (a deleted old file is no checkpoint)
                seen, last = seen + 1, stamp
            time.sleep(0.002)
        time.sleep(rnd.uniform(0.0, 0.02))                  # then a random moment after it
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=120)
    assert kills == 3, "the run finished before it could be killed three times"
    done = subprocess.run(base + ["run.resume=true"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _no_temp_files(run)
    return load_file(run / "generator.safetensors"), json.loads(
        (run / "metrics.json").read_text())["metrics"]


@pytest.mark.parametrize("seed", [0])
def test_sft_killed_at_three_random_points_resumes_to_the_uninterrupted_weights(experiment,
                                                                               seed):
    from safetensors.torch import load_file

    args = ["sft", str(experiment / "cfg.yaml"), "sft.max_epochs=120", "sft.patience=120",
            "model.dropout=0.1", "sid.vectors=text"]
    run = experiment / "runs" / "toy" / "sft" / "seed0"
    assert main(args + ["run.num_threads=1"]) == 0
    reference = load_file(run / "generator.safetensors")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    weights, resumed_metrics = _kill_and_resume(experiment, args, run, "sft_state.safetensors",
                                                seed)
    assert weights.keys() == reference.keys()
    assert all((weights[k] == reference[k]).all() for k in reference)
    assert resumed_metrics == metrics


@pytest.mark.parametrize("seed", [0])
def test_rl_killed_at_three_random_points_resumes_to_the_uninterrupted_weights(experiment, seed):
    from safetensors.torch import load_file

    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft]", "sid.vectors=text", "run.num_threads=1"]) == 0
    args = ["rl", cfg, "--method", "vstar", "rl.steps=80", "rl.checkpoint_every=1",
            "sid.vectors=text"]
    run = experiment / "runs" / "toy" / "vstar" / "seed0"
    assert main(args + ["run.num_threads=1"]) == 0
    reference = load_file(run / "generator.safetensors")
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    weights, resumed_metrics = _kill_and_resume(experiment, args, run, "rl_state.safetensors",
                                                seed)
    assert all((weights[k] == reference[k]).all() for k in reference)
    assert resumed_metrics == metrics


def test_a_nan_metric_stops_the_run_naming_the_metric(experiment, capsys, monkeypatch):
    from vstar.experiments import pipeline

    real = pipeline.evaluate_ranking

    def nan_ndcg(*a, **k):
        return dict(real(*a, **k), **{"NDCG@10": float("nan")})
    monkeypatch.setattr(pipeline, "evaluate_ranking", nan_ndcg)
    assert main(["run", str(experiment / "cfg.yaml"), "run.methods=[popularity]"]) != 0
    err = capsys.readouterr().err
    assert "NDCG@10" in err and "non-finite" in err
    record = experiment / "runs" / "toy" / "popularity" / "seed0" / "metrics.json"
    assert not record.exists()
