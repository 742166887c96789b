"""End to end through the command line on a tiny synthetic dataset: every stage and method."""

import json
import math

import numpy as np
import pytest

from vstar.experiments.cli import main


def _assert_rl_logs(exp):
    """vstar logs 3 value warm-up steps then the 2 RL steps; its run summary averages the RL
    steps only, so the policy-loss curves are in it."""
    assert (exp / "vstar" / "seed0" / "rl_log.jsonl").read_text().count("\n") == 5
    assert (exp / "grpo_beam" / "seed0" / "rl_log.jsonl").read_text().count("\n") == 2
    summary = json.loads((exp / "vstar" / "seed0" / "metrics.json").read_text())
    summary = summary["extra"]["rl_summary"]
    assert "loss_grpo" in summary and "value_warmup" not in summary
    assert "sib_adv_share_on_target_path" in summary and "grad_norm_value" in summary


def test_run_writes_a_folder_per_method_and_a_results_table(experiment, capsys):
    assert main(["run", str(experiment / "cfg.yaml")]) == 0
    exp = experiment / "runs" / "toy"
    for method in ("popularity", "sasrec", "sft", "grpo_beam", "vstar"):
        run = exp / method / "seed0"
        record = json.loads((run / "metrics.json").read_text())
        assert record["method"] == method and record["split"] == "test"
        assert record["invalid_rate"] == 0.0
        assert 0.0 <= record["metrics"]["HR@10"] <= 1.0
        for name in ("config.yaml", "versions.json", "log.txt", "ranks_test.npy"):
            assert (run / name).is_file(), (method, name)
    _assert_rl_logs(exp)
    assert (exp / "artifacts" / "sid.index.json").is_file()
    assert "| toy |" in (exp / "results.md").read_text()
    assert "vstar" in capsys.readouterr().out


HF_QWEN2 = ["model.backbone=hf", "model.history=codes", "model.hf_config.model_type=qwen2"]


@pytest.mark.parametrize("backbone", [[], HF_QWEN2], ids=["vstar", "hf"])
def test_rl_resumes_from_its_saved_state(experiment, monkeypatch, backbone):
    from vstar.train.rl import RLTrainer

    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft]", *backbone]) == 0
    step = RLTrainer.step

    def ctrl_c_at_step_2(self):
        if self.step_idx == 1:
            raise KeyboardInterrupt
        return step(self)
    monkeypatch.setattr(RLTrainer, "step", ctrl_c_at_step_2)
    assert main(["rl", cfg, "--method", "vstar", "rl.steps=2", *backbone]) == 130  # Ctrl-C
    monkeypatch.setattr(RLTrainer, "step", step)                                  # after step 1
    assert main(["rl", cfg, "--method", "vstar", "rl.steps=2", "run.resume=true", *backbone]) == 0
    log = experiment / "runs" / "toy" / "vstar" / "seed0" / "rl_log.jsonl"
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    # the first call: 3 value warm-up steps + 1 RL step; the resumed call: the 2nd RL step
    assert steps == [1, 2, 3, 4, 5]


def test_bad_config_key_and_missing_sft_checkpoint_are_clear_errors(experiment, capsys):
    assert main(["run", str(experiment / "cfg.yaml"), "sft.learning_rate=1"]) == 2
    assert "sft.learning_rate" in capsys.readouterr().err
    assert main(["rl", str(experiment / "cfg.yaml"), "--method", "vstar"]) == 2
    assert "run method 'sft' first" in capsys.readouterr().err


def test_a_method_registered_in_one_place_runs_through_run_rl_and_compare(experiment, capsys):
    from vstar.experiments.methods import run_rl
    from vstar.experiments.registry import Method, register, unregister

    register(Method("toy_sampled_grpo", run_rl, kind="rl",
                    preset={"decoder": "sample", "sibling": False, "value_loss": False},
                    help="GRPO on sampled groups (a test recipe)"))
    cfg, exp = str(experiment / "cfg.yaml"), experiment / "runs" / "toy"
    try:
        assert main(["run", cfg, "run.methods=[sft,toy_sampled_grpo]"]) == 0
        run = exp / "toy_sampled_grpo" / "seed0"
        record = json.loads((run / "metrics.json").read_text())
        assert record["method"] == "toy_sampled_grpo" and record["extra"]["rl"]["decoder"] == "sample"
        assert json.loads((run / "rl_config.json").read_text())["sibling"] is False
        assert "| toy_sampled_grpo |" in (exp / "results.md").read_text()
        assert main(["rl", cfg, "--method", "toy_sampled_grpo", "rl.steps=1",
                     "run.overwrite=true"]) == 0                        # its sub-command too
        capsys.readouterr()
        assert main(["compare", str(exp)]) == 0
        assert "toy_sampled_grpo" in capsys.readouterr().out
    finally:
        unregister("toy_sampled_grpo")
    assert main(["run", cfg, "run.methods=[toy_sampled_grpo]"]) == 2          # gone again
    assert "unknown method 'toy_sampled_grpo'" in capsys.readouterr().err


def test_method_sub_commands_only_offer_their_kind(experiment, capsys):
    assert main(["baseline", str(experiment / "cfg.yaml"), "--method", "vstar"]) == 2
    assert "'vstar' is a rl method, not a baseline one" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo_ml100k.yaml", "scientific.yaml",
                                  "paper_qwen2.5_1.5b.yaml"])
def test_shipped_configs_load_and_name_registered_methods(name):
    from pathlib import Path

    from vstar.experiments.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.run.methods and cfg.run.num_threads >= 1


def test_item_level_history_runs_every_stage_and_method(experiment):
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "model.history=items", "model.item_id_embedding=true",
                 "run.methods=[sft,grpo_beam,vstar]"]) == 0
    exp = experiment / "runs" / "toy"
    for method in ("sft", "grpo_beam", "vstar"):
        record = json.loads((exp / method / "seed0" / "metrics.json").read_text())
        assert record["invalid_rate"] == 0.0 and 0.0 <= record["metrics"]["HR@10"] <= 1.0
    _assert_rl_logs(exp)
    assert main(["budget", str(exp / "vstar" / "seed0"), "--widths", "2", "--max-users", "4",
                 "--out-dir", str(experiment / "curve")]) == 0


def test_hf_backbone_runs_every_stage_and_method(experiment):
    """model.backbone=hf with a tiny random Qwen2: SFT, GRPO (beam) and V-STAR write the usual
    files, the generator in the Hugging Face layout; RL, the budget curve and serving load it."""
    from transformers import AutoModelForCausalLM

    from vstar.experiments.budget import load_run
    from vstar.model.hf import HFSidLM

    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, *HF_QWEN2, "run.methods=[sft,grpo_beam,vstar]"]) == 0
    exp = experiment / "runs" / "toy"
    for method in ("sft", "grpo_beam", "vstar"):
        run = exp / method / "seed0"
        record = json.loads((run / "metrics.json").read_text())
        assert record["invalid_rate"] == 0.0 and 0.0 <= record["metrics"]["HR@10"] <= 1.0
        assert (run / "generator_hf" / "config.json").is_file()
        assert (run / "generator_hf" / "sid_vocab.json").is_file()
        assert not (run / "generator.safetensors").exists()
    _assert_rl_logs(exp)
    hf = AutoModelForCausalLM.from_pretrained(exp / "vstar" / "seed0" / "generator_hf",
                                              local_files_only=True)
    assert hf.config.model_type == "qwen2"
    loaded = load_run(exp / "vstar" / "seed0")
    assert isinstance(loaded.model, HFSidLM) and loaded.value_head is not None
    assert main(["budget", str(exp / "vstar" / "seed0"), "--widths", "2", "--max-users", "4",
                 "--out-dir", str(experiment / "curve")]) == 0


def test_torchrun_with_two_processes_runs_the_pipeline_like_one_process(experiment):
    """``torchrun --nproc_per_node=2 -m vstar run``: rank 0 writes the usual run folders; SFT
    and beam-group GRPO reach the single-process metrics (same global batches)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    cfg = str(experiment / "cfg.yaml")
    args = [cfg, "run.methods=[sft,grpo_beam,vstar]", "run.num_threads=1"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", "-m", "vstar", "run", *args, "run.name=ddp"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)    # its own group: killed whole on timeout
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 180 s")
    assert proc.returncode == 0, stderr[-3000:]
    assert main(["run", *args]) == 0
    exp, ddp = experiment / "runs" / "toy", experiment / "runs" / "ddp"
    _assert_rl_logs(ddp)
    assert (ddp / "results.md").is_file() and stdout.count("results table") == 1
    for method in ("sft", "grpo_beam", "vstar"):
        for name in ("config.yaml", "versions.json", "log.txt", "ranks_test.npy",
                     "generator.safetensors", "status.json"):
            assert (ddp / method / "seed0" / name).is_file(), (method, name)
        assert json.loads((ddp / method / "seed0" / "status.json").read_text())["state"] == \
            "finished"
    for method in ("sft", "grpo_beam"):
        one = json.loads((exp / method / "seed0" / "metrics.json").read_text())["metrics"]
        two = json.loads((ddp / method / "seed0" / "metrics.json").read_text())["metrics"]
        assert two["NDCG@10"] == pytest.approx(one["NDCG@10"], abs=1e-6), method


def test_collaborative_sids_quantise_sasrec_item_embeddings(experiment):
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[sft]"]) == 0
    report = json.loads((experiment / "runs" / "toy" / "artifacts" / "sid_report.json").read_text())
    assert report["vectors"] == "sasrec item embeddings" and report["vector_dim"] == 16
    assert report["collision_rate_after"] == 0.0
    key = json.loads((experiment / "runs" / "toy" / "artifacts" / "sid_key.json").read_text())
    assert key["sid"]["vectors"] == "sasrec" and "sasrec" in key     # a new SASRec: new SIDs
    # where SASRec trains is not part of the key: another sasrec.device reuses the SIDs
    assert "device" not in key["sasrec"]
    index = experiment / "runs" / "toy" / "artifacts" / "sid.index.json"
    before = index.stat().st_mtime_ns
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[popularity]",
                 "sasrec.device=cpu"]) == 0
    assert index.stat().st_mtime_ns == before
    old = dict(key, sasrec={**key["sasrec"], "device": "cpu"})   # written before the change
    (index.parent / "sid_key.json").write_text(json.dumps(old))
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[popularity]",
                 "run.overwrite=true"]) == 0
    assert index.stat().st_mtime_ns == before


def test_the_experiment_sasrec_takes_its_own_width_and_the_baseline_keeps_the_sections(experiment):
    # sid.sasrec_hidden: the SID vectors' (and the teacher's) SASRec is that wide; the sasrec
    # baseline row keeps sasrec.hidden; spelling out the width the SIDs already had keeps them
    from vstar.core.checkpoint import load_sasrec as read_sasrec
    cfg = str(experiment / "cfg.yaml")
    runs = experiment / "runs" / "toy"
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[sasrec]", "sasrec.hidden=16",
                 "sid.sasrec_hidden=8"]) == 0
    report = json.loads((runs / "artifacts" / "sid_report.json").read_text())
    assert report["vector_dim"] == 8
    teacher, _, _ = read_sasrec(runs / "artifacts" / "teacher_sasrec.safetensors")
    baseline, _, _ = read_sasrec(runs / "sasrec" / "seed0" / "sasrec.safetensors")
    assert teacher["item_emb.weight"].shape[1] == 8 and baseline["item_emb.weight"].shape[1] == 16
    index = runs / "artifacts" / "sid.index.json"
    before = index.stat().st_mtime_ns
    # the same experiment SASRec spelled as sasrec.hidden=8 without sid.sasrec_hidden: same SIDs
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[popularity]", "sasrec.hidden=8",
                 "run.overwrite=true"]) == 0
    assert index.stat().st_mtime_ns == before
    # another experiment width: new SIDs
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[popularity]", "sasrec.hidden=8",
                 "sid.sasrec_hidden=16", "run.overwrite=true"]) == 0
    assert index.stat().st_mtime_ns != before


def test_sids_that_trained_generators_are_not_rebuilt_behind_their_back(experiment, capsys):
    # a changed SID setting in an experiment whose generators were trained on its SIDs is an
    # error naming the field (rebuilding would overwrite the index and teacher they need)
    cfg = str(experiment / "cfg.yaml")
    runs = experiment / "runs" / "toy"
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[sft]"]) == 0
    index = runs / "artifacts" / "sid.index.json"
    before = index.read_bytes()
    capsys.readouterr()
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[popularity]",
                 "sasrec.hidden=8"]) == 2
    err = capsys.readouterr().err
    assert "sasrec.hidden: 16 -> 8" in err and "sid_key.json" in err and "run.overwrite" in err
    assert index.read_bytes() == before
    # run.overwrite=true rebuilds them on purpose
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[popularity]",
                 "sasrec.hidden=8", "run.overwrite=true"]) == 0


def test_distillation_reuses_the_sid_sasrec_as_teacher_and_trains_one_when_missing(experiment):
    from vstar.core.checkpoint import load_sasrec as read_sasrec
    cfg = str(experiment / "cfg.yaml")
    runs = experiment / "runs"
    assert main(["run", cfg, "sid.vectors=sasrec", "run.methods=[sft]", "sft.distill=0.5"]) == 0
    log = (runs / "toy" / "sft" / "seed0" / "log.txt").read_text()
    assert "SASRec teacher loaded from" in log and "distilling" in log   # the SIDs' SASRec
    history = json.loads((runs / "toy" / "sft" / "seed0" / "sft_history.json").read_text())
    assert all(math.isfinite(h["train_loss"]) for h in history)
    # text SIDs: no SASRec was trained for them, so the SFT stage fits (and keeps) the teacher
    assert main(["run", cfg, "sid.vectors=text", "run.methods=[sft]", "sft.distill=0.5",
                 "run.name=toy_text"]) == 0
    log = (runs / "toy_text" / "sft" / "seed0" / "log.txt").read_text()
    assert "training the experiment's SASRec" in log and "distilling" in log
    first, n_items, _ = read_sasrec(runs / "toy" / "artifacts" / "teacher_sasrec.safetensors")
    again, _, _ = read_sasrec(runs / "toy_text" / "artifacts" / "teacher_sasrec.safetensors")
    assert first.keys() == again.keys() and n_items > 0


def test_fused_sids_quantise_text_and_sasrec_vectors_side_by_side(experiment):
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "sid.vectors=fused", "run.methods=[sft]"]) == 0
    report = json.loads((experiment / "runs" / "toy" / "artifacts" / "sid_report.json").read_text())
    assert "sasrec" in report["vectors"] and "vectors_path" in report["vectors"]
    assert report["vector_dim"] == 8 + 16               # the item vectors + SASRec's hidden size


def test_fuse_vectors_weighs_both_parts_equally():
    import numpy as np
    from vstar.experiments.collab import fuse_vectors
    text = np.array([[3.0, 4.0], [0.0, 2.0]])
    collab = np.array([[100.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    fused = fuse_vectors(text, collab)
    assert fused.shape == (2, 5) and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused[:, :2], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(fused[:, 2:], axis=1), 1.0, rtol=1e-6)


def test_item_distillation_trains_a_wider_teacher_once_per_experiment(experiment, caplog):
    """sft.item_teacher_hidden W: a W-wide SASRec is trained into the experiment's artifacts
    once, distilled into the item head, and reused by the next seed; W = 0 distils the
    experiment's own teacher and trains nothing more."""
    import logging

    from safetensors import safe_open
    cfg = str(experiment / "cfg.yaml")
    art = experiment / "runs" / "toy" / "artifacts"
    common = ["run.methods=[sft]", "sft.item_loss=1.0", "sft.item_distill=0.5"]
    with caplog.at_level(logging.INFO):
        assert main(["run", cfg, *common, "sft.item_teacher_hidden=24"]) == 0
    wide = art / "teacher_sasrec_w24.safetensors"
    with safe_open(str(wide), "pt") as f:
        widths = {f.get_tensor(k).shape[-1] for k in f.keys() if "item_emb" in k}
    assert widths == {24}
    assert "item distributions of a 24-wide SASRec" in caplog.text
    stamp = wide.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["run", cfg, *common, "sft.item_teacher_hidden=24", "run.seeds=[1]"]) == 0
    assert wide.stat().st_mtime_ns == stamp                 # trained once, then loaded
    assert "training the experiment's SASRec" not in caplog.text
    before = sorted(p.name for p in art.iterdir())
    assert main(["run", cfg, *common, "run.name=own"]) == 0
    assert not any("teacher_sasrec_w" in p.name
                   for p in (experiment / "runs" / "own" / "artifacts").iterdir())
    assert sorted(p.name for p in art.iterdir()) == before


def test_the_sasrec_baseline_of_sid_seed_is_reused_as_the_item_teacher(experiment, caplog):
    """With sft.item_teacher_hidden = sasrec.hidden the item teacher is the model the baseline's
    seed-0 run already trained: its checkpoint is copied, not trained again. A baseline run
    that did not finish is not reused."""
    import logging

    import torch
    from safetensors.torch import load_file
    cfg = str(experiment / "cfg.yaml")
    exp = experiment / "runs" / "toy"
    common = ["sft.item_loss=1.0", "sft.item_distill=0.5", "sft.item_teacher_hidden=16"]
    with caplog.at_level(logging.INFO):
        assert main(["run", cfg, "run.methods=[sasrec,sft]", *common]) == 0
    teacher = exp / "artifacts" / "teacher_sasrec_w16.safetensors"
    baseline = load_file(exp / "sasrec" / "seed0" / "sasrec.safetensors")
    copied = load_file(teacher)
    assert copied.keys() == baseline.keys()
    assert all(torch.equal(copied[k], baseline[k]) for k in baseline)
    assert "is this model" in caplog.text
    assert f"-> {teacher}" not in caplog.text               # never trained
    teacher.unlink()
    status = exp / "sasrec" / "seed0" / "status.json"
    status.write_text(json.dumps(dict(json.loads(status.read_text()), state="failed")))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["run", cfg, "run.methods=[sft]", "run.seeds=[1]", *common]) == 0
    assert f"-> {teacher}" in caplog.text and "is this model" not in caplog.text


def test_item_head_fusion_ranks_sft_validation_and_every_evaluation(experiment, monkeypatch,
                                                                     capsys):
    """eval.item_head reaches the decoders that rank: SFT's early-stopping validation (width
    sft.val_beam) and the test evaluation of SFT and of RL methods (eval.beam_width)."""
    from vstar.decode import beam

    calls = []

    def spy(*args, **kw):
        calls.append((args[5], kw.get("item_weight")))
        return real(*args, **kw)

    real = beam.beam_search
    monkeypatch.setattr(beam, "beam_search", spy)
    cfg = str(experiment / "cfg.yaml")
    assert main(["run", cfg, "run.methods=[sft,grpo_beam]", "sft.item_loss=1.0",
                 "eval.item_head=0.5", "sft.val_beam=3", "eval.beam_width=20"]) == 0
    assert {w for _, w in calls} == {0.5} and {width for width, _ in calls} == {3, 20}
    exp = experiment / "runs" / "toy"
    for method in ("sft", "grpo_beam"):
        record = json.loads((exp / method / "seed0" / "metrics.json").read_text())
        assert record["invalid_rate"] == 0.0
    calls.clear()
    assert main(["run", cfg, "run.methods=[sft]", "run.name=plain"]) == 0
    assert calls == []                                   # eval.item_head = 0: plain beam search
    # RL from a generator trained without the item loss, ranked with the head: refused
    capsys.readouterr()
    assert main(["rl", cfg, "--method", "grpo_beam", "run.name=plain", "sft.item_loss=1.0",
                 "eval.item_head=0.5"]) == 2
    err = capsys.readouterr().err
    assert "trained without it" in err and "sft.item_loss" in err and "config.yaml" in err
