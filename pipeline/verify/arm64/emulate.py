"""The ARM64 half of the gate: every artifact of a folder in the aarch64 builds of its runtime, under QEMU user-mode.

Phones run the aarch64 builds of executorch.runtime and LiteRT, whose int8 kernels are other code than x86's (NEON
dot-product, i8mm, SME). This runs the folder's files through those builds for one emulated CPU profile (the
project's own `pipeline.runtimes` inside the emulated CPython; see pipeline/runtimes/worker.py) on the first N eval rows, and
gates the logits with the SAME thresholds: max_abs_error and cosine against the float reference, and against the
x86 run of the same file on the same rows max |Δ| within the max_abs_error limit and top-1 agreement at least
min_top1_agreement. Top-1 agreement and accuracy against float are reported, not gated, on these rows: one row of 32
is 0.031 of either, so a 4-bit file that agrees 0.97 with float on 1000 rows would fail a 0.95 limit on 32 rows one
time in four by chance; the x86 run judged them on every row. A 4-bit .tflite's builtin-kernel run is compared with
the x86 builtin-kernel run.

What it verifies: the runtimes' ARM code paths and their numerics. What it does not: speed (emulated), GPU/NPU
delegates, a real device's OS/loader. The environment comes from `python -m pipeline arm64-setup`
(env.py); when it is missing this is an error naming that command (exit 2), never a skip.
"""
from __future__ import annotations

import json
import resource
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from xml.sax.saxutils import quoteattr

import numpy as np

from pipeline.core.config import ThresholdConfig
from pipeline.core.errors import PipelineError
from pipeline.core.paths import replace_text
from pipeline.runtimes.contained import WITHOUT_DELEGATES, Worker, run_contained
from pipeline.verify.arm64.env import Arm64Env, find_env
from pipeline.verify.validation import ArtifactResult, Evidence, Where, validate

Log = Callable[[str], None]
REPO_ROOT = Path(__file__).resolve().parents[3]

# name -> (QEMU 7.2 -cpu value, what it stands for). QEMU 7.2 has no named core with i8mm (its list: a64fx,
# cortex-a35/a53/a57/a72/a76, neoverse-n1, max), so the i8mm profile is `max` without SME: Armv9-style SVE2 +
# i8mm + dot-product, the int8 kernels of current phones (Cortex-X2+/A710+).
ARM_RUNTIMES = ("executorch", "litert")  # what the emulated worker runs (pipeline.runtimes inside QEMU)
PROFILES = {
    "i8mm": ("max,sme=off", "i8mm + dot-product + SVE2, no SME (current phones; default)"),
    "cortex-a76": ("cortex-a76", "dot-product only (Cortex-A76, 2018-2021 phones)"),
    "max-sme": ("max", "QEMU 7.2 `max`: everything incl. SME (not SME2)"),
}
DEFAULT_PROFILE = "i8mm"
DEFAULT_ROWS = 32  # the default model: 13.4 min wall, 614 s CPU for its 4 files on a loaded machine (README)


def arm_dict(r: ArtifactResult, profile: str) -> dict:
    """One file's ARM64 verdict as report.json and the manifest record it."""
    base = r.baseline or {}
    return {"path": r.artifact.file_name, "runtime": r.artifact.runtime, "precision": r.artifact.precision,
            "profile": profile, "passed": r.passed, "failures": r.failures, "error": r.error,
            "metrics": r.metrics.to_dict() if r.metrics else None, "thresholds": asdict(r.thresholds),
            "x86_max_abs_diff": base.get("max_abs_diff"), "x86_top1_agreement": base.get("top1_agreement"),
            "no_xnnpack": r.evidence.get("no_xnnpack")}


@dataclass
class Arm64Run:
    profile: str
    qemu_cpu: str
    rows: int
    hwcaps: list[str]
    results: list[ArtifactResult]
    seconds: float
    qemu: str
    sme_probe: dict[str, str] | None = None  # for a profile with SME: the instruction-level emulator check
    cpu_seconds: float | None = None  # CPU time of the emulated process: the cost, independent of machine load
    not_checked: dict[str, str] = field(default_factory=dict)  # file -> why it was not run under emulation

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [f for r in self.results for f in r.failures]

    def to_dict(self) -> dict:
        return {"profile": self.profile, "qemu_cpu": self.qemu_cpu, "description": PROFILES[self.profile][1],
                "rows": self.rows, "hwcaps": self.hwcaps, "qemu": self.qemu, "passed": self.passed,
                "seconds": round(self.seconds, 1), "cpu_seconds": self.cpu_seconds, "sme_probe": self.sme_probe,
                "artifacts": [arm_dict(r, self.profile) for r in self.results], "not_checked": self.not_checked}


@dataclass
class ArmRun:
    """One emulated run: the CPU profile, the eval rows it takes, the provisioned environment."""

    profile: str | None = None
    rows: int | None = None
    env: Arm64Env | None = None


def resolve_profile(name: str | None) -> tuple[str, str]:
    name = name or DEFAULT_PROFILE
    if name not in PROFILES:
        raise PipelineError(f"unknown --arm-cpu profile {name!r}; choose from {', '.join(PROFILES)}")
    return name, PROFILES[name][0]


def require_env() -> Arm64Env:
    return find_env()


def emulated_worker(env: Arm64Env, qemu_cpu: str, log: Log) -> Worker:
    """The run worker (pipeline/runtimes/worker.py) in the emulated aarch64 CPython of the environment."""
    with_sme = qemu_cpu.startswith("max") and "sme=off" not in qemu_cpu  # QEMU 7.2: only `max` has SME
    return Worker(prefix=env.command(qemu_cpu, []), env=env.environ([str(REPO_ROOT)]), litert_without_xnnpack=with_sme,
                  on_line=lambda line: log(f"    {line}"))


def gate_arm64(x86: list[ArtifactResult], evidence: Evidence, thresholds: ThresholdConfig, arm: ArmRun,
               log: Log) -> Arm64Run:
    """The ARM64 verdict of one profile: the x86-validated files again under QEMU, through the one validation path,
    also compared with their x86 outputs; a file that cannot run there fails (named with its profile)."""
    env = arm.env or require_env()
    name, qemu_cpu = resolve_profile(arm.profile)
    # MediaPipe has no aarch64 wheel at the pins: its twins are the plain .tflite's graph plus an int32 cast and a
    # softmax, so the plain file's ARM run covers their kernels. Said in the report, never shown as passed.
    not_checked = {r.artifact.file_name: f"{r.artifact.runtime}: no aarch64 runtime here; its plain .tflite twin is checked"
                   for r in x86 if r.artifact.runtime not in ARM_RUNTIMES}
    artifacts = [r.artifact for r in x86 if r.artifact.runtime in ARM_RUNTIMES]
    rows = min(len(evidence.encoded), DEFAULT_ROWS if arm.rows is None else arm.rows)
    if rows <= 0:
        raise PipelineError("--arm-rows must be at least 1")
    log(f"  arm64 [{name}: qemu -cpu {qemu_cpu}]: {len(artifacts)} file(s) x {rows} rows under emulation "
        "(import ~25 s, then seconds per row)")
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    worker = emulated_worker(env, qemu_cpu, log)
    where = Where(run=lambda jobs: run_contained(jobs, worker), label=f"arm64 {name}",
                  baseline={**{r.artifact.file_name: r.logits for r in x86 if r.logits is not None},
                            **{r.artifact.file_name + WITHOUT_DELEGATES: r.builtin_logits for r in x86
                               if r.builtin_logits is not None}})
    results = validate(artifacts, evidence.head(rows), thresholds, where, log)
    for result in results:
        if result.error is not None:
            result.failures.append(f"{result.label}: cannot run on aarch64: {result.error}")
        if result.evidence.get("no_xnnpack") and not result.evidence["no_xnnpack"].get("gated"):
            e = result.evidence["no_xnnpack"]
            log(f"  {result.label}: without the XNNPACK delegate (LiteRT builtin kernels): max_abs "
                f"{e['max_abs_error']:.2e}, top1 {e['top1_agreement']:.4f} (evidence only)")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    run = Arm64Run(name, qemu_cpu, rows, worker.info.get("hwcaps", []), results, time.perf_counter() - started,
                   env.info.get("qemu", ""), cpu_seconds=round(cpu, 1), not_checked=not_checked)
    if "sme" in run.hwcaps:  # evidence for the verdict: is the emulator's SME itself right? (never waives it)
        run.sme_probe = sme_probe(env, qemu_cpu)
        wrong = [k for k, v in run.sme_probe.items() if v.startswith("WRONG")]
        log(f"  arm64 [{name}]: SME instruction probe under this QEMU: "
            + "; ".join(f"{k}: {v}" for k, v in run.sme_probe.items()))
        if wrong and not run.passed:
            log(f"  arm64 [{name}]: the emulator computes {', '.join(w.split(' ')[0] for w in wrong)} wrong: "
                "failures on this profile are explained by QEMU, not shown to be the kernels' (still reported as failures)")
    log(f"  arm64 [{name}]: {'passed' if run.passed else 'FAILED'} in {run.seconds:.0f} s, {run.cpu_seconds} s CPU "
        f"(emulated CPU HWCAPs: {' '.join(run.hwcaps)})")
    return run


# ------------------------------------------------------------------------------------------------------ reports

def markdown(run: Arm64Run) -> str:
    lines = [f"## ARM64 ({run.profile}: `qemu-aarch64 -cpu {run.qemu_cpu}`)", "",
             f"{PROFILES[run.profile][1]}. Emulated CPU HWCAPs: {', '.join(run.hwcaps) or 'n/a'}; {run.rows} eval rows; "
             f"{run.qemu}; {run.seconds:.0f} s. Verifies the aarch64 runtimes' code paths and numerics, not speed, "
             "GPU/NPU delegates or a device's OS.", "",
             "| artifact | runtime | max abs err | cosine | top-1 agree | accuracy | max abs Δ vs x86 | top-1 vs x86 | result |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {name} | - | - | - | - | - | - | - | NOT CHECKED ({why}) |" for name, why in run.not_checked.items()]
    for r in run.results:
        m = r.metrics
        if m is None:
            lines.append(f"| {r.artifact.file_name} | {r.artifact.runtime} | - | - | - | - | - | - | FAIL ({r.error}) |")
            continue
        acc = f"{m.accuracy:.4f}" if m.accuracy is not None else "n/a"
        base = r.baseline or {}
        dx = f"{base['max_abs_diff']:.2e}" if "max_abs_diff" in base else "n/a"
        tx = f"{base['top1_agreement']:.4f}" if "top1_agreement" in base else "n/a"
        lines.append(f"| {r.artifact.file_name} | {r.artifact.runtime} | {m.max_abs_error:.2e} | {m.cosine:.6f} | "
                     f"{m.top1_agreement:.4f} | {acc} | {dx} | {tx} | {'PASS' if r.passed else 'FAIL'} |")
    if run.failures:
        lines += ["", "Failures:", *[f"- {f}" for f in run.failures]]
    for r in run.results:
        e = r.evidence.get("no_xnnpack")
        if e:
            verdict = ("gated like the file" if e.get("gated") else "evidence only, not gated")
            lines += ["", f"{r.artifact.file_name} again without the XNNPACK delegate (LiteRT builtin kernels, no SME "
                          f"code): max abs err {e['max_abs_error']:.2e}, top-1 agree {e['top1_agreement']:.4f} "
                          f"({verdict})."]
    if run.sme_probe:
        lines += ["", "SME instruction probe (one outer product on known data under the same QEMU, vs numpy):", ""]
        lines += [f"- `{k}`: {v}" for k, v in run.sme_probe.items()]
        if any(v.startswith("WRONG") for v in run.sme_probe.values()):
            lines += ["", "The emulator itself computes these instructions wrong, so int8 drift on this profile says "
                          "nothing about the kernels on real SME hardware. It stays a failure here: this profile "
                          "cannot vouch for SME phones; validate SME on a device."]
    return "\n".join(lines) + "\n"


def junit_cases(run: Arm64Run) -> list[str]:
    """One test case per artifact, profile and metric: `albert.int8.pte[arm64:i8mm]:max_abs_error`."""
    suite = quoteattr(f"pipeline.validate.arm64.{run.profile}")
    cases = [f'  <testcase classname={suite} name={quoteattr(f"{name}[arm64:{run.profile}]:run")}>'
             f'<skipped message={quoteattr(why)}/></testcase>' for name, why in run.not_checked.items()]
    for r in run.results:
        case = f"{r.artifact.file_name}[arm64:{run.profile}]"
        if r.metrics is None:
            msg = quoteattr(f"cannot run on aarch64 ({run.profile}): {r.error}")
            cases.append(f'  <testcase classname={suite} name={quoteattr(case + ":run")}><failure message={msg}/></testcase>')
            continue
        m, t = r.metrics, r.thresholds
        checks = [("max_abs_error", m.max_abs_error, t.max_abs_error, "<="), ("cosine", m.cosine, t.min_cosine, ">=")]
        if not r.baseline:  # with an x86 run of the same rows, top-1 is judged against it (validation.judge)
            checks.append(("top1_agreement", m.top1_agreement, t.min_top1_agreement, ">="))
            if m.accuracy_delta is not None:
                checks.append(("accuracy_drop", -m.accuracy_delta, t.max_accuracy_drop, "<="))
        else:
            checks += [("x86_max_abs_diff", r.baseline["max_abs_diff"], t.max_abs_error, "<="),
                       ("x86_top1_agreement", r.baseline["top1_agreement"], t.min_top1_agreement, ">=")]
        for metric, value, limit, op in checks:
            ok = (value <= limit) if op == "<=" else (value >= limit)
            body = "" if ok else f'<failure message={quoteattr(f"{run.profile}: {metric} {value:.6g} {op} {limit} violated")}/>'
            cases.append(f'  <testcase classname={suite} name={quoteattr(case + ":" + metric)}>{body}</testcase>')
    return cases


def extend_reports(report_dir: Path, run: Arm64Run) -> None:
    """Add the ARM64 verdict to report.json / report.md / report.junit.xml written by the x86 gate."""
    data = json.loads((report_dir / "report.json").read_text())
    data.setdefault("arm64", {})[run.profile] = run.to_dict()
    data["passed"] = bool(data.get("passed")) and run.passed
    (report_dir / "report.json").write_text(json.dumps(data, indent=2, default=float) + "\n")
    with open(report_dir / "report.md", "a") as md:
        md.write("\n" + markdown(run))
    junit = (report_dir / "report.junit.xml").read_text()
    cases = junit_cases(run)
    failures, skipped = sum("<failure" in c for c in cases), sum("<skipped" in c for c in cases)
    suite = (f'<testsuite name={quoteattr(f"pipeline.validate.arm64.{run.profile}")} tests="{len(cases)}" '
             f'failures="{failures}" skipped="{skipped}">\n' + "\n".join(cases) + "\n</testsuite>\n")
    body = junit.split("?>", 1)[1].strip() if junit.startswith("<?xml") else junit.strip()
    if body.startswith("<testsuites>"):
        body = body[len("<testsuites>"):-len("</testsuites>")].strip()
    (report_dir / "report.junit.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
                                                 + body + "\n" + suite + "</testsuites>\n")


def record_in_manifest(folder: Path, run: Arm64Run) -> None:
    """manifest.json gets `arm64_validation.<profile>`: the verdict the folder passed (or failed) on aarch64."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = run.to_dict()
    entry["artifacts"] = {r.artifact.file_name: {k: v for k, v in arm_dict(r, run.profile).items()
                                                 if k not in ("path", "thresholds")} for r in run.results}
    manifest.setdefault("arm64_validation", {})[run.profile] = entry
    replace_text(path, json.dumps(manifest, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ SME instruction probe

# One SME outer-product instruction on known data, executed under the same QEMU, checked against numpy. This
# separates the emulator from the kernels: if the instruction itself is wrong, every kernel built on it is too.
# (Found with it: QEMU 7.2's 4-way 8-bit->32-bit integer outer products (SMOPA/UMOPA/SUMOPA/USMOPA .s) run a
# 64-bit-element loop and only fill the diagonal of each 2x2 block of the tile; later QEMU versions split the
# helper into a 32-bit loop (do_imopa_s). FMOPA fp32 is right.)
SME_PROBES = {
    "smopa.s (int8 x int8 -> int32)": ("smopa za0.s, p0/m, p0/m, z0.b, z1.b", np.int8, np.int8),
    "usmopa.s (uint8 x int8 -> int32)": ("usmopa za0.s, p0/m, p0/m, z0.b, z1.b", np.uint8, np.int8),
    "sumopa.s (int8 x uint8 -> int32)": ("sumopa za0.s, p0/m, p0/m, z0.b, z1.b", np.int8, np.uint8),
    "fmopa.s (fp32 -> fp32)": ("fmopa za0.s, p0/m, p0/m, z0.s, z1.s", np.float32, np.float32),
}
_PROBE_ASM = """.text
.globl _start
_start:
  smstart
  rdsvl x9, #1
  ptrue p0.b
  adr x0, abuf
  adr x1, bbuf
  ld1b {{z0.b}}, p0/z, [x0]
  ld1b {{z1.b}}, p0/z, [x1]
  zero {{za}}
  {op}
  adr x2, out
  lsr x10, x9, #2
  mov w12, #0
1:
  st1w {{za0h.s[w12, 0]}}, p0, [x2]
  add x2, x2, x9
  add w12, w12, #1
  cmp x12, x10
  b.lt 1b
  smstop
  adr x3, svl
  str x9, [x3]
  mov x0, #1
  adr x1, svl
  mov x2, #8
  mov x8, #64
  svc #0
  mov x0, #1
  adr x1, out
  mov x2, #65536
  mov x8, #64
  svc #0
  mov x0, #0
  mov x8, #93
  svc #0
.data
.balign 16
svl: .quad 0
abuf: .incbin "a.bin"
bbuf: .incbin "b.bin"
.balign 16
out: .zero 65536
"""


def sme_probe(env: Arm64Env, qemu_cpu: str) -> dict[str, str]:
    """{instruction: "correct" | "WRONG (n of m tile elements differ, max |diff| x)" | "not run: why"}."""
    import shutil

    if shutil.which("aarch64-linux-gnu-as") is None:
        return {"probe": f"not run: aarch64-linux-gnu-as missing (run {SETUP_COMMAND})"}
    rng = np.random.default_rng(0)
    verdicts = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-sme-probe-") as work:
        work = Path(work)
        for label, (op, ta, tb) in SME_PROBES.items():
            if ta == np.float32:
                a, b = rng.integers(-8, 8, 64).astype(np.float32), rng.integers(-8, 8, 64).astype(np.float32)
            else:
                a = rng.integers(np.iinfo(ta).min, np.iinfo(ta).max + 1, 256).astype(ta)
                b = rng.integers(np.iinfo(tb).min, np.iinfo(tb).max + 1, 256).astype(tb)
            a.tofile(work / "a.bin")
            b.tofile(work / "b.bin")
            (work / "p.s").write_text(_PROBE_ASM.format(op=op))
            try:
                subprocess.run(["aarch64-linux-gnu-as", "-march=armv9-a+sme", "-o", "p.o", "p.s"], cwd=work,
                               check=True, capture_output=True)
                subprocess.run(["aarch64-linux-gnu-ld", "-static", "-o", "p", "p.o"], cwd=work, check=True,
                               capture_output=True)
                raw = subprocess.run([env.qemu, "-cpu", qemu_cpu, str(work / "p")], capture_output=True,
                                     timeout=60, check=True).stdout
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                verdicts[label] = f"not run: {type(err).__name__}"
                continue
            svl = int.from_bytes(raw[:8], "little")
            n = svl // 4
            if ta == np.float32:
                tile = np.frombuffer(raw[8:8 + n * svl], np.float32).reshape(n, n)
                expected = np.outer(a[:n], b[:n])
            else:
                tile = np.frombuffer(raw[8:8 + n * svl], np.int32).reshape(n, n).astype(np.int64)
                expected = a[:svl].astype(np.int64).reshape(n, 4) @ b[:svl].astype(np.int64).reshape(n, 4).T
            bad = int((tile != expected).sum())
            verdicts[label] = ("correct" if bad == 0 else
                               f"WRONG ({bad} of {n * n} tile elements differ, max |diff| {np.abs(tile - expected).max():.0f}; "
                               f"SVL {svl * 8} bits)")
    return verdicts
