"""`pipeline build`: the list of stages for one target, each run through the stage cache (pipeline/stage.py).

    model, data -> reference -> [trace] -> ExecuTorch fp32, int8 | TFLite (beside it, its converter in its own
    process) -> validate (every artifact in its runtime) -> gate -> bundle

A rebuild with nothing changed, or with only thresholds changed, re-runs no lowering and no runtime: every
stage's output is cached by a key of its inputs and the tool versions. The target folder is replaced only
when every artifact passed validation.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from pipeline.artifact import Artifact
from pipeline.cache import StageCache, pid_alive, remove_stale
from pipeline.config import PipelineConfig
from pipeline.data import LabeledTexts, load_labeled_file, load_small_fine_foods
from pipeline.errors import DriftError, PipelineError
from pipeline.model.checkpoint import LoadedModel, load_checkpoint
from pipeline.model.default import default_model_dir
from pipeline.report import drift_table, write_reports
from pipeline.shapes import ShapeContract, check_shapes
from pipeline.stage import Context, StageTimer, run_cached
from pipeline.tokenization import Encoded, clean_text, encode

Log = Callable[[str], None]
CHECK_ROWS = 8  # rows used to prove the export model matches the reference before lowering


def build(config: PipelineConfig, log: Log = print, use_cache: bool = True) -> Path:
    from pipeline.stages import bundle, mediapipe
    from pipeline.stages.executorch import executorch_stage
    from pipeline.stages.reference import reference_stage
    from pipeline.stages.tflite import tflite_stage
    from pipeline.stages.trace import trace
    from pipeline.stages.validate import validate

    b = config.build
    timer = StageTimer(log)
    out_root = Path(b.out_dir)
    model_dir = Path(b.model_dir) if b.model_dir else default_model_dir()
    log(f"build: target {b.target}, model {model_dir.name}, max_length {b.max_length}, out {out_root / b.target}")
    with timer("model"):
        model = load_checkpoint(model_dir, b.max_length)
        log(f"  {model.num_parameters:,} parameters; reference {model.reference_kind}")
    with timer("data"):
        calibration_texts, eval_texts = load_build_data(config, model)
        evaluation = encode(model.tokenizer, eval_texts.texts, b.max_length)
        calibration = encode(model.tokenizer, calibration_texts.texts[: config.quantize.calibration_samples], b.max_length)
        log(f"  eval: {len(evaluation)} texts from {eval_texts.source} ({evaluation.truncated} truncated to "
            f"{b.max_length} tokens); calibration: {len(calibration)} texts from {calibration_texts.source}")
    check = Encoded(evaluation.input_ids[:CHECK_ROWS], evaluation.attention_mask[:CHECK_ROWS],
                    evaluation.token_type_ids[:CHECK_ROWS], 0)
    with build_lock(out_root, b.target):
        workdir = Path(tempfile.mkdtemp(dir=out_root.resolve(), prefix=f".{b.target}-work-{os.getpid()}-"))
        ctx = Context(StageCache(b.cache_dir, enabled=use_cache, log=log), workdir, log, timer)
        try:
            reference = run_cached(reference_stage(model, evaluation), ctx)
            if eval_texts.labels is not None:
                log(f"  float reference accuracy {float((reference.argmax(1) == eval_texts.labels).mean()):.4f}")
            shapes = check_shapes(b.shapes)
            if shapes == "dynamic" and model.spec.recurrent:
                log(f"  shapes: static [1, {b.max_length}]: the {model.spec.recurrent} front end is exported as a loop "
                    "unrolled over max_length steps, which a dynamic length cannot trace")
                shapes = "static"
            traced = functools.cache(lambda: traced_logged(trace(model, check, shapes=shapes), ctx))
            artifacts: list[Artifact] = []
            with in_background(lambda stop, torch_done: run_cached(tflite_stage(
                    model, config.tflite, b.max_length, workdir, calibration, check, b.name, log, stop, torch_done,
                    shapes), ctx),
                    enabled="litert" in b.runtimes) as tflite:
                if "executorch" in b.runtimes:
                    for precision in b.precisions:
                        artifacts += run_cached(executorch_stage(model, precision, config.quantize, calibration, traced,
                                                                 workdir, b.name, b.max_length, shapes), ctx)
                artifacts += [a for a in tflite.result() if a.precision.split("-")[0] in b.precisions]
            if not artifacts:
                raise PipelineError(f"no artifacts to build: runtimes {b.runtimes}, precisions {b.precisions}")
            with timer("validate"):
                results = validate(artifacts, evaluation, reference, eval_texts.labels, config.thresholds, ctx, model)
            drift = None
            if b.mediapipe and any(a.runtime == "litert" for a in artifacts):
                with timer("mediapipe"):
                    texts = [clean_text(t) for t in eval_texts.texts]  # as the reference saw them
                    twins = run_cached(mediapipe.mediapipe_stage(artifacts, model, workdir, log), ctx)
                    results += mediapipe.validate(twins, texts, reference, eval_texts.labels, config.thresholds, log,
                                                  outputs=lambda a: run_cached(mediapipe.outputs_stage(a, texts), ctx))
                    drift = run_cached(mediapipe.drift_stage(model, b.max_length, texts, log), ctx)
            for line in drift_table(results):
                log(line)
            failures = [f for r in results for f in r.failures]
            if failures:
                failed = out_root / f"{b.target}.failed"
                write_reports(failed, results, reference, f"{model_dir.name} for {b.target} (FAILED)",
                              {"target": b.target, "eval data": eval_texts.source}, drift=drift)
                log(f"validation failed: nothing was written to {out_root / b.target}; report in {failed}")
                raise DriftError(failures)
            with timer("bundle"):
                extra = {"shape_contract": ShapeContract(shapes, b.max_length).to_manifest(),
                         "stage_seconds": timer.timings,
                         "thresholds": {k: vars(v) for k, v in config.thresholds.per_precision.items()},
                         "eval": {"source": eval_texts.source, "rows": len(evaluation), "truncated": evaluation.truncated},
                         "calibration": {"source": calibration_texts.source, "rows": len(calibration)}}
                if drift is not None:
                    extra["tokenizer_drift"] = drift
                final = bundle.bundle(model, b.target, b.max_length, results, evaluation, eval_texts.texts, reference,
                                      out_root, b.golden_texts, eval_texts.source, extra, b.copy_to_apps)
        except PipelineError:
            kept = keep_rejected(workdir, out_root / f"{b.target}.failed")
            if kept:
                log(f"rejected converter files kept for inspection in {kept}")
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"artifacts: {final.resolve()}")
    return final


def traced_logged(traced, ctx: Context):
    ctx.log(f"  export model vs reference: max abs {traced.reference_match:.2e} on {CHECK_ROWS} rows")
    return traced


class Background:
    """A stage on a worker thread, beside the caller's (the TFLite conversion beside the ExecuTorch lowering).

    Both lowerings are single-threaded Python; the onnx2tf converter runs in its own process, so on two cores
    they overlap (default model, quiet machine: 185 s in sequence, 115 s side by side). The worker's in-process
    torch work (ONNX export) finishes before the caller goes on (`torch_done`), so it never runs beside
    torch.export in the caller's thread. `stop` ends the converter process when the build leaves early.
    """

    def __init__(self, work: Callable[[threading.Event, Callable[[], None]], list[Artifact]] | None):
        self._outcome: list = []
        self._stop = threading.Event()
        self._thread = None
        if work is None:
            return
        torch_done = threading.Event()

        def run() -> None:
            try:
                self._outcome.append(work(self._stop, torch_done.set))
            except BaseException as err:  # handed to the caller's thread by result()
                self._outcome.append(err)
            finally:
                torch_done.set()

        self._thread = threading.Thread(target=run, name="background-stage", daemon=True)
        self._thread.start()
        torch_done.wait()

    def result(self) -> list[Artifact]:
        if self._thread is None:
            return []
        self._thread.join()
        outcome = self._outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)


@contextlib.contextmanager
def in_background(work, enabled: bool = True) -> Iterator[Background]:
    background = Background(work if enabled else None)
    try:
        yield background
    finally:
        background.stop()


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


def load_build_data(config: PipelineConfig, model: LoadedModel) -> tuple[LabeledTexts, LabeledTexts]:
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
