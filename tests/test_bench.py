"""``make bench``: the harness runs every benchmark and writes one JSON record each."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run_all.py"


def test_quick_bench_writes_a_json_record_per_benchmark(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["decode_speed.json", "hf_decode.json", "report.json", "serve_load.json",
                     "sft_throughput.json", "synthetic_rl.json", "trie_scale.json",
                     "ved_cost.json"]
    for name in names:
        record = json.loads((tmp_path / name).read_text())
        for key in ("benchmark", "params", "versions", "torch_threads", "device", "units",
                    "results"):
            assert key in record, (name, key)
        assert record["results"] and record["quick"] is True
