"""`pipeline build`: the list of stages for one target, each run through the stage cache (pipeline/core/stage.py).

    model, data -> reference -> [trace] -> ExecuTorch fp32, int8 | TFLite (beside it, its converter in its own
    process) -> MediaPipe files -> validate (every artifact in its runtime) -> tokenizer drift -> gate -> bundle

Every stage is a lowering or verification function (pipeline/lower, pipeline/verify) with a cache key from its
inputs; a rebuild with nothing changed, or with only thresholds changed, re-runs no lowering and no runtime. The
target folder is replaced only when every artifact passed validation.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.bundle import Bundle, bundle
from pipeline.core.artifact import Artifact
from pipeline.core.cache import StageCache, pid_alive, remove_stale
from pipeline.core.config import PipelineConfig
from pipeline.core.data import LabeledTexts, load_labeled_file, load_small_fine_foods, sha256_file
from pipeline.core.errors import DriftError, PipelineError
from pipeline.core.shapes import ShapeContract, check_shapes, eval_rows, is_dynamic, sweep_rows
from pipeline.core.stage import ARRAY, ARTIFACTS, JSON, OUTPUTS, Context, Stage, StageTimer, run_cached
from pipeline.core.tokenization import Encoded, clean_text, encode
from pipeline.formats.mediapipe import device_tokenizer
from pipeline.lower.executorch import executorch_file
from pipeline.lower.int4_executorch import lower_int4_checked
from pipeline.lower.mediapipe import SUFFIX as MEDIAPIPE_SUFFIX, make_files
from pipeline.lower.tflite import Hooks, TFLiteJob, lower_tflite
from pipeline.lower.tflite.int4 import lower_int4_tflite
from pipeline.lower.trace import Traced, trace
from pipeline.model.checkpoint import LoadedModel, load_checkpoint
from pipeline.model.default import default_model_dir
from pipeline.model.reference import reference_logits, sweep_reference
from pipeline.runtimes.contained import FileJob, FileOutputs, run_contained
from pipeline.verify.report import drift_table, write_reports
from pipeline.verify.tokenizer_drift import drift_report
from pipeline.verify.validation import Evidence, Where, run_errors, validate

Log = Callable[[str], None]
CHECK_ROWS = 8  # rows used to prove the export model matches the reference before lowering


@dataclass
class BuildContext:
    """What every stage of one target's build reads: the config, the model, the data and the stage context."""

    config: PipelineConfig
    model: LoadedModel
    evaluation: Encoded
    eval_texts: LabeledTexts
    calibration: Encoded
    calibration_source: str
    run: Context  # cache, work folder, log, timer
    shapes: str = "dynamic"

    @property
    def check(self) -> Encoded:
        e = self.evaluation
        return Encoded(e.input_ids[:CHECK_ROWS], e.attention_mask[:CHECK_ROWS], e.token_type_ids[:CHECK_ROWS], 0)

    @functools.cached_property
    def traced(self) -> Traced:
        traced = trace(self.model, self.check, shapes=self.shapes)
        self.run.log(f"  export model vs reference: max abs {traced.reference_match:.2e} on {CHECK_ROWS} rows")
        return traced


# --- the stages: each a lower/ or verify/ call with its cache key ---------------------------------------------

def reference_stage(bc: BuildContext) -> Stage[np.ndarray]:
    e = bc.evaluation
    return Stage("reference", [bc.model.source_sha256, e.input_ids.tolist(), e.attention_mask.tolist(),
                               e.token_type_ids.tolist()], lambda: reference_logits(bc.model, e), ARRAY)


def executorch_stage(bc: BuildContext, precision: str) -> Stage[list[Artifact]]:
    """`<name>.<precision>.pte`: fp32; int8 by the quantization recipe calibrated on the calibration rows; int4 by
    the [int4.executorch] recipe (4-bit weights, int8 dynamic activations: nothing to calibrate)."""
    b, recipe = bc.config.build, bc.config.quantize
    out = bc.run.workdir / f"{b.name}.{precision}.pte"
    if precision == "int4":
        int4 = bc.config.int4.executorch
        return Stage("executorch-int4", [bc.model.source_sha256, b.max_length, b.name, asdict(int4), bc.shapes],
                     lambda: [lower_int4_checked(bc.model, bc.traced, out, int4)], ARTIFACTS, label=f"lower {out.name}")
    key = [asdict(recipe), bc.calibration.input_ids.tolist()[: recipe.calibration_samples]] if precision == "int8" else None
    return Stage(f"executorch-{precision}", [bc.model.source_sha256, b.max_length, b.name, key, bc.shapes],
                 lambda: [executorch_file(bc.model, bc.traced, precision, recipe, bc.calibration, out)], ARTIFACTS,
                 label=f"lower {out.name}")


def tflite_stage(bc: BuildContext, hooks: Hooks) -> Stage[list[Artifact]]:
    """Both .tflite files as one cached stage (the converter always makes both)."""
    b, config = bc.config.build, bc.config.tflite
    job = TFLiteJob(bc.model, config, b.max_length, bc.calibration, bc.check, b.name, bc.shapes)
    calibration_key = bc.calibration.input_ids.tolist() if config.quant == "static" else None
    return Stage("litert", [bc.model.source_sha256, b.max_length, b.name, asdict(config), calibration_key,
                            bc.check.input_ids.tolist(), bc.shapes],
                 lambda: lower_tflite(job, bc.run.workdir, hooks), ARTIFACTS, label="lower tflite")


def int4_tflite_stage(bc: BuildContext, float_file: Artifact, reference: np.ndarray) -> Stage[list[Artifact]]:
    """`<name>.int4.tflite` from the verified fp32 .tflite by the [int4.litert] recipe, checked with and without
    XNNPACK on the check rows before it is kept (cached by the float file's hash and the recipe)."""
    recipe, rows = bc.config.int4.litert, eval_rows(bc.check, is_dynamic(float_file))
    out = bc.run.workdir / float_file.file_name.replace(".fp32.", ".int4.")
    return Stage("litert-int4", [sha256_file(float_file.path), bc.model.source_sha256, asdict(recipe),
                                 bc.check.input_ids.tolist()],
                 lambda: [lower_int4_tflite(float_file, bc.model, recipe, rows, reference[:CHECK_ROWS], out)],
                 ARTIFACTS, label=f"lower {out.name}")


def mediapipe_stage(bc: BuildContext, plain: list[Artifact]) -> Stage[list[Artifact]]:
    """The MediaPipe-ready twins of the plain LiteRT files (cached by the plain files' hashes)."""
    plain = [a for a in plain if a.runtime == "litert" and not a.file_name.endswith(MEDIAPIPE_SUFFIX)]
    model = bc.model
    return Stage("mediapipe", [[sha256_file(a.path) for a in plain], model.source_sha256, model.label_names],
                 lambda: make_files(plain, model.model_dir, model.label_names, bc.run.workdir, bc.run.log), ARTIFACTS,
                 label="mediapipe files")


def outputs_stage(job: FileJob, run: Callable[[], FileOutputs]) -> Stage[tuple[np.ndarray, list[float]]]:
    """A file's outputs on its inputs in its own runtime (cached by the file's hash and the inputs)."""
    inputs = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in sorted(r.items())} for r in job.inputs]

    def outputs() -> tuple[np.ndarray, list[float]]:
        got = run()
        if got.error is not None:
            raise PipelineError(got.error, job.artifact.path)
        return got.outputs, got.latencies

    delegates = [] if job.delegates else ["builtin kernels"]  # keeps the keys of delegated runs as they were
    return Stage("outputs", [sha256_file(job.artifact.path), job.artifact.runtime, inputs, *delegates], outputs, OUTPUTS,
                 label=f"run {job.key}")


def cached_outputs(bc: BuildContext):
    """A `Where.run` that serves outputs from the stage cache and runs the missing files in one child process."""
    def run(jobs: list[FileJob]) -> dict[str, FileOutputs]:
        missing = [j for j in jobs if bc.run.cache.get("outputs", outputs_stage(j, lambda: None).key()) is None]
        fresh = run_contained(missing) if missing else {}
        found = {}
        for job in jobs:
            name = job.key
            got = fresh.get(name)
            if got is not None and got.error is not None:  # never cached: it is reported (exit 2)
                found[name] = got
                continue
            outputs, latencies = run_cached(outputs_stage(job, lambda got=got: got or run_contained([job])[name]), bc.run)
            found[name] = FileOutputs(outputs, list(latencies))
        return found

    return run


def drift_stage(bc: BuildContext, texts: list[str]) -> Stage[dict]:
    """The MediaPipe tokenizer's drift from the reference tokenizer (cached by tokenizer file + texts)."""
    model, max_length = bc.model, bc.config.build.max_length
    tokenizer = device_tokenizer(model.model_dir)
    return Stage("drift", [model.source_sha256, sha256_file(tokenizer.path), tokenizer.kind, max_length, texts],
                 lambda: drift_report(model, max_length, texts, bc.run.log), JSON, label="tokenizer drift")


# --- the build -----------------------------------------------------------------------------------------------

def build(config: PipelineConfig, log: Log = print, use_cache: bool = True) -> Path:
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
    with build_lock(out_root, b.target):
        workdir = Path(tempfile.mkdtemp(dir=out_root.resolve(), prefix=f".{b.target}-work-{os.getpid()}-"))
        ctx = Context(StageCache(b.cache_dir, enabled=use_cache, log=log), workdir, log, timer)
        bc = BuildContext(config, model, evaluation, eval_texts, calibration, calibration_texts.source, ctx,
                          shapes_for(config, model, log))
        try:
            final = build_target(bc, out_root)
        except PipelineError:
            kept = keep_rejected(workdir, out_root / f"{b.target}.failed")
            if kept:
                log(f"rejected converter files kept for inspection in {kept}")
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"artifacts: {final.resolve()}")
    return final


def build_target(bc: BuildContext, out_root: Path) -> Path:
    """The stages, in order, for one target; the bundled folder."""
    b, log, ctx = bc.config.build, bc.run.log, bc.run
    reference = run_cached(reference_stage(bc), ctx)
    labels = bc.eval_texts.labels
    if labels is not None:
        log(f"  float reference accuracy {float((reference.argmax(1) == labels).mean()):.4f}")
    artifacts: list[Artifact] = []
    with in_background(lambda stop, torch_done: run_cached(tflite_stage(bc, Hooks(log, stop, torch_done)), ctx),
                       enabled="litert" in b.runtimes) as tflite:
        if "executorch" in b.runtimes:
            for precision in b.precisions:
                artifacts += run_cached(executorch_stage(bc, precision), ctx)
        converted = tflite.result()
        artifacts += [a for a in converted if a.precision.split("-")[0] in b.precisions]
        if "int4" in b.precisions and converted:
            float_file = next(a for a in converted if a.precision == "fp32")
            artifacts += run_cached(int4_tflite_stage(bc, float_file, reference), ctx)
    if not artifacts:
        raise PipelineError(f"no artifacts to build: runtimes {b.runtimes}, precisions {b.precisions}")
    with_twins = b.mediapipe and any(a.runtime == "litert" for a in artifacts)
    if with_twins:
        artifacts += run_cached(mediapipe_stage(bc, artifacts), ctx)
    texts = [clean_text(t) for t in bc.eval_texts.texts]  # as the reference saw them
    sweep = sweep_rows(bc.model.tokenizer, b.max_length)
    evidence = Evidence(bc.evaluation, texts, reference, labels, sweep, sweep_reference(bc.model, sweep))
    with ctx.timer("validate"):
        results = validate(artifacts, evidence, bc.config.thresholds, Where(run=cached_outputs(bc)), log)
    drift = run_cached(drift_stage(bc, texts), ctx) if with_twins else None
    broken = run_errors(results)
    if broken is not None:
        raise broken
    for line in drift_table(results):
        log(line)
    if any(not r.passed for r in results):
        failed = out_root / f"{b.target}.failed"
        write_reports(failed, results, reference, f"{bc.model.model_dir.name} for {b.target} (FAILED)",
                      {"target": b.target, "eval data": bc.eval_texts.source}, drift=drift)
        log(f"validation failed: nothing was written to {out_root / b.target}; report in {failed}")
        raise DriftError([f for r in results for f in r.failures])
    with ctx.timer("bundle"):
        extra = {"shape_contract": ShapeContract(bc.shapes, b.max_length).to_manifest(),
                 "stage_seconds": ctx.timer.timings,
                 "thresholds": {**{k: vars(v) for k, v in bc.config.thresholds.per_precision.items()},
                                "cost": vars(bc.config.thresholds.cost)},
                 "eval": {"source": bc.eval_texts.source, "rows": len(bc.evaluation), "truncated": bc.evaluation.truncated},
                 "calibration": {"source": bc.calibration_source, "rows": len(bc.calibration)}}
        if drift is not None:
            extra["tokenizer_drift"] = drift
        return bundle(Bundle(bc.model, b.target, b.max_length, results, evidence, bc.eval_texts.texts, b.golden_texts,
                             bc.eval_texts.source, extra), out_root, b.copy_to_apps)


def shapes_for(config: PipelineConfig, model: LoadedModel, log: Log) -> str:
    shapes = check_shapes(config.build.shapes)
    if shapes == "dynamic" and model.spec.recurrent:
        log(f"  shapes: static [1, {config.build.max_length}]: the {model.spec.recurrent} front end is exported as a "
            "loop unrolled over max_length steps, which a dynamic length cannot trace")
        shapes = "static"
    return shapes


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
