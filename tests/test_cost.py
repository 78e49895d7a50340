"""Cost gated like accuracy: aarch64 instructions per inference counted under QEMU (pipeline/verify/arm64/cost.py).

The counting tests run the real emulator with the project's TCG plugin (environment from `python -m pipeline
arm64-setup`; missing, they FAIL naming that command, never skip). The repeatability test uses dynamic .tflite
files of a small ALBERT sized so that one inference is millions to tens of millions of instructions (0.01% is then
a thousand or more: the Python binding around the runtime's call varies by hundreds with the heap's layout); the
second counts the tiny build of tests/conftest.py (shared with test_arm64.py). The rest is pure and fast."""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.verify.arm64.cost import compare_costs, cost_rows, resolve_lengths

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
MAX = 64
TEXTS = ["the tea was great and the coffee was good", "i hate this product very much, bad", "good coffee",
         "worst cookies ever, stale box", "i love the sweet fresh chips, best price", "bitter taste, will not buy again"]


# ------------------------------------------------------------------------------------------------ compare_costs

def _counts(*entries) -> dict:
    """{profile: {file: {length: {"steady": n, "first": 2n}}}} from (profile, file, length, n) tuples."""
    out: dict = {}
    for profile, name, length, steady in entries:
        out.setdefault(profile, {}).setdefault(name, {})[length] = {"steady": steady, "first": 2 * steady}
    return out


def test_compare_costs_fails_a_rise_beyond_the_limit_with_one_line():
    current = {"counts": _counts(("i8mm", "albert.int8.pte", 128, 212_900_000), ("i8mm", "albert.int8.pte", 16, 15_760_000))}
    baseline = {"counts": _counts(("i8mm", "albert.int8.pte", 128, 202_600_000), ("i8mm", "albert.int8.pte", 16, 15_760_000))}
    failures, notes = compare_costs(current, baseline, 0.05)
    assert failures == ["cost drift: albert.int8.pte [i8mm, 128 tokens]: 212.9 M instructions > 1.05 x baseline "
                        "202.6 M (+5.1%)"]
    assert notes == []


def test_compare_costs_passes_within_the_limit_and_notes_what_the_baseline_lacks():
    current = _counts(("i8mm", "albert.int8.pte", 128, 212_000_000), ("i8mm", "albert.fp32.tflite", 128, 533_000_000),
                      ("cortex-a76", "albert.int8.pte", 128, 202_000_000))
    baseline = _counts(("i8mm", "albert.int8.pte", 128, 202_600_000), ("i8mm", "albert.int8.pte", 64, 80_000_000))
    failures, notes = compare_costs(current, baseline, 0.05)  # 212.0 / 202.6 = 1.046: within 1.05
    assert failures == []
    assert any(n.startswith("cost: albert.fp32.tflite [i8mm, 128 tokens]: 533 M instructions, not in the baseline")
               for n in notes), notes
    assert any("albert.int8.pte [cortex-a76, 128 tokens]" in n and "not in the baseline" in n for n in notes)
    assert any("albert.int8.pte [i8mm, 64 tokens]: in the baseline, not counted now" in n for n in notes)
    assert len(notes) == 3


def test_compare_costs_reads_json_round_trips_and_notes_other_versions_and_big_savings():
    current = {"counts": _counts(("i8mm", "m.pte", 16, 1_000_000)), "qemu": "qemu 7.2", "plugin": "cost_plugin 1 aaa"}
    baseline = json.loads(json.dumps({"counts": _counts(("i8mm", "m.pte", 16, 2_000_000)), "qemu": "qemu 7.2",
                                      "plugin": "cost_plugin 1 bbb"}))  # length keys become strings
    failures, notes = compare_costs(current, baseline, 0.0)
    assert failures == []
    assert any("plugin" in n and "aaa" in n and "bbb" in n for n in notes)
    assert any("m.pte [i8mm, 16 tokens]" in n and "-50.0%" in n and "cheaper" in n for n in notes)
    failures, _ = compare_costs(baseline, current, 0.0)  # the other way round: doubled
    assert failures == ["cost drift: m.pte [i8mm, 16 tokens]: 2 M instructions > 1 x baseline 1 M (+100.0%)"]


@pytest.mark.parametrize("bad", [-0.01, None, float("nan")])
def test_compare_costs_refuses_a_bad_limit(bad):
    with pytest.raises(PipelineError, match="max_increase"):
        compare_costs({}, {}, bad)


# ------------------------------------------------------------------------------------------------------- inputs

def test_cost_rows_from_encoded_texts_and_from_a_tokenizer():
    from pipeline.core.tokenization import Encoded

    ids = np.array([[2, 10, 11, 3, 0, 0], [2, 12, 13, 14, 3, 0]], dtype=np.int64)
    encoded = Encoded(ids, (ids > 0).astype(np.int64), np.zeros_like(ids), 0)
    rows = cost_rows([1, 2, 4, 9], encoded=encoded)
    assert rows[1]["input_ids"].tolist() == [[2]] and rows[2]["input_ids"].tolist() == [[2, 3]]
    assert rows[4]["input_ids"].tolist() == [[2, 10, 11, 3]]
    assert rows[9]["input_ids"].tolist() == [[2, 10, 11, 12, 13, 14, 10, 11, 3]]  # the texts' tokens, cycled
    assert rows[9]["attention_mask"].sum() == 9 and rows[9]["token_type_ids"].sum() == 0

    class Tokenizer:
        all_special_ids, cls_token_id, sep_token_id = [0, 1, 2, 3], 2, 3

        def __len__(self):
            return 50

    rows = cost_rows([16], tokenizer=Tokenizer())
    x = rows[16]["input_ids"][0]
    assert x[0] == 2 and x[-1] == 3 and set(x[1:-1].tolist()) <= set(range(4, 50))
    assert (cost_rows([16], tokenizer=Tokenizer())[16]["input_ids"] == rows[16]["input_ids"]).all()  # seeded
    with pytest.raises(PipelineError, match="token ids"):
        cost_rows([16])
    assert resolve_lengths([16, 64, "max"], 32) == [16, 32]
    assert resolve_lengths([16, 64, "max"], 128) == [16, 64, 128]


def test_fixed_sys_holds_what_the_runtimes_read():
    from pipeline.verify.arm64.cost_env import sys_files

    files = sys_files()
    base = "sys/devices/system/cpu"
    for path in ("possible", "present", "online", "kernel_max", "cpu0/cache/index0/size", "cpu1/cache/index3/shared_cpu_list",
                 "cpu0/regs/identification/midr_el1", "cpu1/topology/physical_package_id", "cpu0/cpufreq/cpuinfo_max_freq",
                 "cpu1/topology/cluster_cpus_list"):
        assert f"{base}/{path}" in files, path
    assert files[f"{base}/online"] == "0-1\n" and files[f"{base}/cpu0/cache/index2/size"] == "512K\n"


def test_missing_counting_environment_is_one_line_naming_the_setup_command(tmp_path, monkeypatch):
    from pipeline.verify.arm64.cost_env import find_counting_env

    monkeypatch.setenv("PIPELINE_ARM64_HOME", str(tmp_path / "no-env"))
    with pytest.raises(PipelineError) as err:
        find_counting_env()
    message = str(err.value)
    assert "\n" not in message and "python -m pipeline arm64-setup" in message and "instruction-counting" in message


def test_stale_plugin_is_reported_naming_the_setup_command(tmp_path, monkeypatch):
    """An environment whose plugin was built from another cost_plugin.c is not used (counts would not match)."""
    from pipeline.verify.arm64.env import find_env
    from pipeline.verify.arm64.cost_env import find_counting_env

    real = find_env().root
    fake = tmp_path / "env"
    fake.mkdir()
    for name in ("env.json", "sysroot", "site", "cuda-stubs"):
        (fake / name).symlink_to(real / name)
    (fake / "cost").mkdir()
    info = json.loads((real / "cost" / "cost.json").read_text())
    (fake / "cost" / "cost.json").write_text(json.dumps({**info, "source_sha256": "0" * 64}))
    (fake / "cost" / "cost_plugin.so").symlink_to(real / "cost" / "cost_plugin.so")
    monkeypatch.setenv("PIPELINE_ARM64_HOME", str(fake))
    with pytest.raises(PipelineError, match="another cost_plugin.c.*python -m pipeline arm64-setup"):
        find_counting_env()


# --------------------------------------------------------------------------------------------- counting (QEMU)

@pytest.fixture(scope="module")
def cost_tflite(tmp_path_factory):
    """Dynamic fp32 and int8 .tflite files (max_length 64) of an ALBERT with hidden 256, FFN 2048, 2 layers: 10-60 M
    instructions per inference at 32-64 tokens; and its texts encoded. LiteRT alone: the emulated process needs
    no `import torch` (~20 G instructions, half a minute), so two counts take seconds of emulation."""
    from tiny import write_tiny_albert

    from pipeline.core.config import TFLiteConfig
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.lower import tflite as stage
    from pipeline.core.tokenization import encode

    root = tmp_path_factory.mktemp("cost")
    model = load_checkpoint(write_tiny_albert(root / "m", embedding_size=128, hidden_size=256, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=2048), MAX)
    encoded = encode(model.tokenizer, TEXTS, MAX)
    artifacts = stage.lower_tflite(stage.TFLiteJob(model, TFLiteConfig(), MAX, encoded, encoded, shapes="dynamic"),
                                   root / "out", stage.Hooks(log=lambda _: None))
    return artifacts, encoded


def _other_host(env, extra_bytes: int, cpus: str | None):
    """The same counting environment as seen from another host: a larger environment, another CPU affinity."""
    from pipeline.verify.arm64.env import Arm64Env
    from pipeline.verify.arm64.cost_env import CountingEnv

    @dataclass
    class BigEnv(Arm64Env):
        def environ(self, extra_path=()):
            return {**super().environ(extra_path), "PIPELINE_TEST_PADDING": "x" * extra_bytes}

    @dataclass
    class Pinned(CountingEnv):
        def command(self, cpu, marks, argv):
            command = super().command(cpu, marks, argv)
            return ["taskset", "-c", cpus, *command] if cpus and shutil.which("taskset") else command

    a = env.arm64
    return Pinned(BigEnv(a.root, a.qemu, a.info), env.qemu, env.plugin, env.info)


def test_counts_are_exact_across_hosts_and_grow_with_length(cost_tflite, tmp_path):
    """Two counts at once, as two hosts would make them: another environment size (3 KB), working directory
    (a deeper one), PYTHONHASHSEED, CPU affinity; ASLR on in both. The steady counts agree within 0.01% (the
    first inference's within 0.1%), and more tokens cost more instructions."""
    from pipeline.verify.arm64.cost import CostRun, count_costs
    from pipeline.verify.arm64.cost_env import find_counting_env

    artifacts, encoded = cost_tflite
    env = find_counting_env()
    deep = tmp_path / "a" / "much" / "deeper" / "working" / "directory"
    deep.mkdir(parents=True)
    setups = {"here": dict(env=env, hash_seed=1, workdir=tmp_path),
              "there": dict(env=_other_host(env, 3000, "0"), hash_seed=987654, workdir=deep)}
    results, errors, lines = {}, [], []

    def count(name):
        try:
            results[name] = count_costs(artifacts, CostRun(["cortex-a76"], [32, "max"], max_length=MAX, **setups[name]),
                                        encoded=encoded, log=lines.append)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=count, args=(name,)) for name in setups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for artifact in artifacts:
        here, there = (results[n]["counts"]["cortex-a76"][artifact.file_name] for n in setups)
        assert set(here) == set(there) == {32, 64}, (here, there)
        for length in (32, 64):
            a, b = here[length]["steady"], there[length]["steady"]
            assert abs(a - b) <= 1e-4 * a, (artifact.file_name, length, a, b, abs(a - b) / a)  # gated: within 0.01%
            a, b = here[length]["first"], there[length]["first"]  # allocations of the first call: a few 1e-4 at most
            assert abs(a - b) <= 1e-3 * a, (artifact.file_name, length, a, b, abs(a - b) / a)
        assert here[64]["steady"] > 1.5 * here[32]["steady"] > 5_000_000, here
        assert here[32]["first"] > here[32]["steady"]  # LiteRT plans tensors and packs weights at the first call
    fp32, int8 = (results["here"]["counts"]["cortex-a76"][a.file_name][64]["steady"] for a in artifacts)
    assert int8 < 0.6 * fp32, (int8, fp32)
    result = results["here"]
    assert result["qemu"].startswith("qemu-aarch64 version") and result["plugin"].startswith("cost_plugin ")
    assert result["threads"] == 1 and result["profiles"]["cortex-a76"]["errors"] == {}
    assert "asimddp" in result["profiles"]["cortex-a76"]["hwcaps"]
    assert any("steady runs agree within" in line for line in lines)


def test_every_file_of_a_build_is_counted_or_said_not_to_be(tiny_builds):
    """The tiny build's folder as it is (ExecuTorch and LiteRT, fp32 and int8, MediaPipe twins): one emulator for
    the i8mm profile counts the four plain files at 16 and max_length (32) tokens; the MediaPipe files are listed
    as not counted, never silently dropped."""
    from pipeline.core.artifact import Artifact, read_manifest
    from pipeline.verify.arm64.cost import CostRun, count_costs
    from pipeline.core.tokenization import encode, load_tokenizer

    folder = tiny_builds["android"]
    manifest = read_manifest(folder)
    artifacts = [Artifact.from_dict(folder, entry) for entry in manifest["files"]]
    encoded = encode(load_tokenizer(folder), TEXTS, 32)
    result = count_costs(artifacts, CostRun(["i8mm"], [16, 64, "max"], max_length=32, steady_runs=1), encoded=encoded,
                         log=print)
    counts = result["counts"]["i8mm"]
    assert sorted(counts) == ["albert.fp32.pte", "albert.fp32.tflite", "albert.int8.pte", "albert.int8.tflite"]
    assert set(result["not_counted"]) == {"albert.fp32.mediapipe.tflite", "albert.int8.mediapipe.tflite"}
    assert result["profiles"]["i8mm"]["errors"] == {} and "i8mm" in result["profiles"]["i8mm"]["hwcaps"]
    for name, per_length in counts.items():
        assert set(per_length) == {16, 32}, (name, per_length)  # 64 > max_length: not a length these files take
        assert per_length[32]["steady"] > per_length[16]["steady"] > 100_000, (name, per_length)
        assert per_length[16]["first"] >= 0.99 * per_length[16]["steady"], (name, per_length)
