"""`pipeline build`: the composition of the stages for one target.

    model -> data -> reference -> trace -> [quantize] -> lower (ExecuTorch, TFLite) -> validate -> bundle

Lowered files and runtime outputs are cached by content hash (pipeline/cache.py), so a rebuild with
nothing changed, or with only thresholds changed, re-runs no lowering. The target folder is replaced
only when every artifact passed validation.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.artifact import Artifact, TensorSpec
from pipeline.cache import StageCache, content_key, pid_alive, remove_stale
from pipeline.config import PipelineConfig
from pipeline.data import LabeledTexts, load_labeled_file, load_small_fine_foods
from pipeline.errors import DriftError, PipelineError
from pipeline.model.checkpoint import LoadedModel, load_checkpoint
from pipeline.model.default import default_model_dir
from pipeline.report import drift_table, write_reports
from pipeline.shapes import ShapeContract, check_shapes
from pipeline.stages import bundle as bundle_stage
from pipeline.stages.trace import reference_logits, trace
from pipeline.numerics import ArtifactResult, compare, check_thresholds, run_artifact
from pipeline.tokenization import Encoded, encode

Log = Callable[[str], None]
CHECK_ROWS = 8  # rows used to prove the export model matches the reference before lowering


class StageTimer:
    def __init__(self, log: Log):
        self.log = log
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.log(f"[{stage}] ...")
        began = time.perf_counter()
        yield
        self.timings[stage] = round(time.perf_counter() - began, 2)
        self.log(f"[{stage}] done in {self.timings[stage]:.1f} s (total {time.perf_counter() - self.started:.1f} s)")


@contextlib.contextmanager
def build_lock(out_root: Path, target: str) -> Iterator[None]:
    """One build per output folder and target at a time: a second one refuses instead of interleaving."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        handle = open(out_root / f".{target}.lock", "w")
    except OSError as err:
        raise PipelineError(f"output folder is not writable ({err.strerror})", out_root) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise PipelineError(f"another build is writing {target} artifacts here; wait for it to finish", out_root) from None
    try:
        recover_leftovers(out_root, target)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def recover_leftovers(out_root: Path, target: str) -> None:
    """Under the lock: clear what killed builds of this target left (their pid is in the name), never a live one's.

    Work folders are deleted (they are never read). A previous target folder that a build killed mid-swap
    (bundle.replace_folder) had moved aside is put back when the target folder is missing.
    """
    remove_stale(out_root, f".{target}-work-")
    final = out_root / target
    for old in sorted(out_root.glob(f".{target}.old-*")):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            if not final.exists():
                os.replace(old, final)
            else:
                shutil.rmtree(old, ignore_errors=True)


def keep_rejected(workdir: Path, failed: Path) -> Path | None:
    """A stage that refused a file left it in a scratch folder of the work dir (deleted next): move it out."""
    scratches = sorted(workdir.glob(".*-work")) if workdir.is_dir() else []
    if not scratches:
        return None
    failed.mkdir(parents=True, exist_ok=True)
    for scratch in scratches:
        target = failed / scratch.name.lstrip(".")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    return failed


def load_build_data(config: PipelineConfig, model: LoadedModel, is_default: bool) -> tuple[LabeledTexts, LabeledTexts]:
    """(calibration, eval) texts: the user's files, else small_fine_foods (train for calibration, test for eval)."""
    b = config.build
    names = model.label_names
    if b.eval_data:
        evaluation = load_labeled_file(b.eval_data, names, b.text_column, b.label_column, require_labels=True)
    else:
        evaluation = load_small_fine_foods("test")
        if names != evaluation.label_names:  # another model's labels: the reviews serve as unlabeled text
            evaluation = LabeledTexts(evaluation.texts, None, names, evaluation.source + " (texts only)")
    if b.calibration_data:
        calibration = load_labeled_file(b.calibration_data, names, b.text_column, with_labels=False)
    else:
        calibration = load_small_fine_foods("train")
        calibration = LabeledTexts(calibration.texts, None, names, calibration.source)
    evaluation = evaluation.head(b.eval_limit)
    if len(evaluation) == 0:
        raise PipelineError("the eval set is empty", b.eval_data or evaluation.source)
    if len(calibration) == 0:
        raise PipelineError("the calibration set is empty", b.calibration_data)
    return calibration, evaluation


def _artifact_from(entry: Path, meta: dict, workdir: Path) -> Artifact:
    target = workdir / meta["file"]
    shutil.copy2(entry / meta["file"], target)
    return Artifact(target, meta["runtime"], meta["precision"], [TensorSpec(**t) for t in meta["inputs"]],
                    [TensorSpec(**t) for t in meta["outputs"]], meta["details"])


def _artifact_meta(artifact: Artifact) -> dict:
    return {"file": artifact.file_name, "runtime": artifact.runtime, "precision": artifact.precision,
            "inputs": [t.to_dict() for t in artifact.inputs], "outputs": [t.to_dict() for t in artifact.outputs],
            "details": artifact.details}


def lower_all(config: PipelineConfig, model: LoadedModel, calibration: Encoded, check: Encoded, workdir: Path,
              cache: StageCache, timer: StageTimer, log: Log) -> list[Artifact]:
    """Every (runtime, precision) artifact the config asks for, from the cache where possible."""
    from pipeline.stages.bundle import tool_versions

    b = config.build
    versions = tool_versions()
    base_key = [model.source_sha256, b.max_length, versions, b.name]
    if b.shapes != "static":  # [varlen] static keys stay as they were (cached static files stay valid)
        base_key.append(check_shapes(b.shapes))
    calibration_key = content_key(calibration.input_ids.tolist()[: config.quantize.calibration_samples])
    artifacts: list[Artifact] = []
    traced = None

    def traced_model():
        nonlocal traced
        if traced is None:
            with timer("trace"):
                traced = trace(model, check, shapes=b.shapes)  # [varlen]
                log(f"  export model vs reference: max abs {traced.reference_match:.2e} on {len(check)} rows")
        return traced

    tflite = None
    if "litert" in b.runtimes:
        tflite_key = content_key(base_key, "litert", asdict(config.tflite), b.precisions, calibration_key)
        hit = cache.get("litert", tflite_key)
        if hit:
            entry, meta = hit
            tflite = [_artifact_from(entry, item, workdir) for item in meta["artifacts"]]
            log(f"[lower] {', '.join(a.file_name for a in tflite)}: cached")
        else:
            tflite = TFLiteInBackground(model, config, calibration, check, workdir, timer, log)

    try:
        if "executorch" in b.runtimes:
            artifacts.extend(lower_executorch_all(config, model, calibration, calibration_key, base_key, traced_model,
                                                  workdir, cache, timer, log))
        if isinstance(tflite, TFLiteInBackground):
            made = tflite.result()
            made = [a for a in made if a.precision.split("-")[0] in b.precisions]
            for artifact in made:
                check_size(artifact, model)
            cache.put("litert", tflite_key, {a.file_name: a.path for a in made},
                      {"artifacts": [_artifact_meta(a) for a in made]})
            tflite = made
    finally:
        if isinstance(tflite, TFLiteInBackground):
            tflite.stop()
    artifacts.extend(tflite or [])
    if not artifacts:
        raise PipelineError(f"no artifacts to build: runtimes {b.runtimes}, precisions {b.precisions}")
    return artifacts


def lower_executorch_all(config: PipelineConfig, model: LoadedModel, calibration: Encoded, calibration_key: str,
                         base_key: list, traced_model: Callable, workdir: Path, cache: StageCache, timer: StageTimer,
                         log: Log) -> list[Artifact]:
    from pipeline.stages.executorch import lower_executorch
    from pipeline.stages.quantize import quantize

    b = config.build
    artifacts = []
    for precision in b.precisions:
        key = content_key(base_key, "executorch", precision, asdict(config.quantize), calibration_key)
        hit = cache.get("executorch", key)
        name = f"{b.name}.{precision}.pte"
        if hit:
            artifacts.append(_artifact_from(*hit, workdir))
            log(f"[lower] {name}: cached")
            continue
        t = traced_model()
        if precision == "fp32":
            with timer(f"lower {name}"):
                artifact = lower_executorch(t.exported, workdir / name, "fp32", t.input_names, model.spec.num_labels,
                                            dynamic=t.dynamic)
        elif precision == "int8":
            with timer(f"quantize {name}"):
                quantized = quantize(model, t, calibration, config.quantize)
            with timer(f"lower {name}"):
                artifact = lower_executorch(quantized.exported, workdir / name, "int8", t.input_names,
                                            model.spec.num_labels, dynamic=t.dynamic)
            artifact.details["quantization"] = quantized.settings
        else:
            raise PipelineError(f"unknown precision {precision!r} for ExecuTorch (fp32 or int8)")
        check_size(artifact, model)
        cache.put("executorch", key, {name: artifact.path}, _artifact_meta(artifact))
        artifacts.append(artifact)
    return artifacts


class TFLiteInBackground:
    """The TFLite stage on a worker thread, beside the ExecuTorch lowering.

    Both lowerings are single-threaded Python; the onnx2tf converter runs in its own process, so on two cores
    they overlap (default model, quiet machine: 185 s in sequence, 115 s side by side). The stage's in-process
    torch work (ONNX export) finishes before this returns, so it never runs beside torch.export in the caller's
    thread.
    """

    def __init__(self, model: LoadedModel, config: PipelineConfig, calibration: Encoded, check: Encoded,
                 workdir: Path, timer: StageTimer, log: Log):
        import threading

        from pipeline.stages.tflite import lower_tflite

        self._stop = threading.Event()
        torch_done = threading.Event()
        self._outcome: list = []
        b = config.build

        def run() -> None:
            try:
                with timer("lower tflite"):
                    self._outcome.append(lower_tflite(model, config.tflite, b.max_length, workdir, calibration, check,
                                                      name=b.name, log=log, stop=self._stop,
                                                      on_torch_done=torch_done.set, shapes=b.shapes))
            except BaseException as err:  # handed to the caller's thread by result()
                self._outcome.append(err)
            finally:
                torch_done.set()

        self._thread = threading.Thread(target=run, name="tflite", daemon=True)
        self._thread.start()
        torch_done.wait()

    def result(self) -> list[Artifact]:
        self._thread.join()
        outcome = self._outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stop(self) -> None:
        """Ends the converter subprocess if the build is leaving early (error, Ctrl-C)."""
        self._stop.set()
        self._thread.join(timeout=30)


BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}
SIZE_SLACK = 1.25  # file bytes may exceed parameters x bytes-per-weight by this factor (scales, fp32 norms)
FILE_OVERHEAD = 256 * 1024  # program / flatbuffer metadata, independent of the model's size


def check_size(artifact: Artifact, model: LoadedModel) -> None:
    """Shared layers must stay shared: a file larger than its parameter count allows fails the build."""
    per_weight = BYTES_PER_WEIGHT.get(artifact.precision.split("-")[0], 4)
    limit = SIZE_SLACK * model.num_parameters * per_weight + FILE_OVERHEAD
    size = artifact.path.stat().st_size
    artifact.details["size_limit_bytes"] = int(limit)
    if size > limit:
        raise PipelineError(
            f"{size:,} bytes exceeds {SIZE_SLACK} x {model.num_parameters:,} parameters x {per_weight} B + "
            f"{FILE_OVERHEAD // 1024} KiB ({int(limit):,}): weights were duplicated (shared layers stored more than once?)", artifact.path)


def validate_cached(artifacts: list[Artifact], evaluation: Encoded, reference: np.ndarray, labels, config: PipelineConfig,
                    cache: StageCache, timer: StageTimer, log: Log, model: LoadedModel | None = None) -> list[ArtifactResult]:
    """Run every artifact on the eval rows (runtime outputs cached by artifact hash + eval data) and gate it.

    [varlen] Dynamic artifacts run each eval text at its own length (unpadded); with `model`, every artifact also
    runs the length sweep (1, 2, 37, max_length) against the float reference, and its drift per length band is
    recorded in its details (`length_drift`) and gated with the same max_abs_error limit."""
    from pipeline.data import sha256_file
    from pipeline.shapes import eval_rows, length_drift, run_sweep, sweep_reference, sweep_rows

    lengths = evaluation.attention_mask.astype(bool)
    lengths = np.where(lengths.any(1), lengths.shape[1] - np.argmax(lengths[:, ::-1], axis=1), 1)
    sweep = sweep_rows(model.tokenizer, config.build.max_length) if model is not None else []
    sweep_expected = sweep_reference(model, sweep) if sweep else None

    eval_key = content_key(evaluation.input_ids.tolist())
    results = []
    with timer("validate"):
        for artifact in artifacts:
            key = content_key(sha256_file(artifact.path), artifact.runtime, eval_key, bundle_stage.tool_versions())
            hit = cache.get("outputs", key)
            if hit:
                logits = np.load(hit[0] / "logits.npy")
                latencies = hit[1]["latencies"]
            else:
                logits, latencies = run_artifact(artifact, eval_rows(evaluation, artifact.details.get("shapes") == "dynamic"))
                with tempfile.TemporaryDirectory() as tmp:
                    np.save(Path(tmp) / "logits.npy", logits)
                    cache.put("outputs", key, {"logits.npy": Path(tmp) / "logits.npy"}, {"latencies": latencies})
            metrics = compare(logits, reference, labels, latencies)
            limits = config.thresholds.for_artifact(artifact.file_name, artifact.precision)
            failures = check_thresholds(artifact.file_name, metrics, limits)
            if sweep:  # [varlen] the length sweep, gated like the eval rows
                from pipeline.runtimes import open_runner

                runner = open_runner(artifact.path, artifact.runtime, [t.name for t in artifact.inputs])
                found = run_sweep(runner, sweep, sweep_expected)
                artifact.details["length_drift"] = length_drift(lengths, logits, reference, found)
                failures += [f"{artifact.file_name}: max_abs_error {e:.4g} at length {n} > limit {limits.max_abs_error:.4g}"
                             for n, e in found.items() if not e <= limits.max_abs_error]
            result = ArtifactResult(artifact, metrics, limits, failures, logits)
            results.append(result)
            log(f"  {artifact.file_name}: {'PASS' if result.passed else 'FAIL'}"
                + ("" if result.passed else " — " + "; ".join(result.failures)))
    return results


def build(config: PipelineConfig, log: Log = print, use_cache: bool = True) -> Path:
    b = config.build
    timer = StageTimer(log)
    out_root = Path(b.out_dir)
    is_default = b.model_dir is None
    model_dir = Path(b.model_dir) if b.model_dir else default_model_dir()
    log(f"build: target {b.target}, model {model_dir}, max_length {b.max_length}, out {out_root / b.target}")
    with timer("model"):
        model = load_checkpoint(model_dir, b.max_length)
        log(f"  {model.num_parameters:,} parameters; reference {model.reference_kind}")
    with timer("data"):
        calibration_texts, eval_texts = load_build_data(config, model, is_default)
        evaluation = encode(model.tokenizer, eval_texts.texts, b.max_length)
        calibration = encode(model.tokenizer, calibration_texts.texts[: config.quantize.calibration_samples], b.max_length)
        log(f"  eval: {len(evaluation)} texts from {eval_texts.source} ({evaluation.truncated} truncated to "
            f"{b.max_length} tokens); calibration: {len(calibration)} texts from {calibration_texts.source}")
    cache = StageCache(b.cache_dir, enabled=use_cache, log=log)
    with build_lock(out_root, b.target):
        with timer("reference"):
            key = content_key(model.source_sha256, evaluation.input_ids.tolist(), "reference", bundle_stage.tool_versions())
            hit = cache.get("reference", key)
            if hit:
                reference = np.load(hit[0] / "reference.npy")
            else:
                reference = reference_logits(model, evaluation)
                with tempfile.TemporaryDirectory() as tmp:
                    np.save(Path(tmp) / "reference.npy", reference)
                    cache.put("reference", key, {"reference.npy": Path(tmp) / "reference.npy"}, {})
            if eval_texts.labels is not None:
                log(f"  float reference accuracy {float((reference.argmax(1) == np.array(eval_texts.labels)).mean()):.4f}")
        check = Encoded(evaluation.input_ids[:CHECK_ROWS], evaluation.attention_mask[:CHECK_ROWS],
                        evaluation.token_type_ids[:CHECK_ROWS], 0)
        workdir = Path(tempfile.mkdtemp(dir=out_root.resolve(), prefix=f".{b.target}-work-{os.getpid()}-"))
        try:
            artifacts = lower_all(config, model, calibration, check, workdir, cache, timer, log)
            results = validate_cached(artifacts, evaluation, reference, eval_texts.labels, config, cache, timer, log, model)
            for line in drift_table(results):
                log(line)
            failures = [f for r in results for f in r.failures]
            if failures:
                failed = out_root / f"{b.target}.failed"
                write_reports(failed, results, reference, f"{model_dir.name} for {b.target} (FAILED)",
                              {"target": b.target, "eval data": eval_texts.source})
                log(f"validation failed: nothing was written to {out_root / b.target}; report in {failed}")
                raise DriftError(failures)
            with timer("bundle"):
                extra = {"shape_contract": ShapeContract(b.shapes, b.max_length).to_manifest(),  # [varlen]
                         "stage_seconds": timer.timings, "thresholds": {k: vars(v) for k, v in config.thresholds.per_precision.items()},
                         "eval": {"source": eval_texts.source, "rows": len(evaluation), "truncated": evaluation.truncated},
                         "calibration": {"source": calibration_texts.source, "rows": len(calibration)}}
                final = bundle_stage.bundle(model, b.target, b.max_length, results, evaluation, eval_texts.texts,
                                            reference, out_root, b.golden_texts, eval_texts.source, extra, b.copy_to_apps)
        except PipelineError as err:
            kept = keep_rejected(workdir, out_root / f"{b.target}.failed")
            if kept:
                log(f"rejected converter files kept for inspection in {kept}")
            raise err
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"artifacts: {final.resolve()}")
    return final
