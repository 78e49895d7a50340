"""The ARM64 emulation environment: QEMU user-mode + an arm64 sysroot + the aarch64 wheels at the project's pins.

    python -m pipeline arm64-setup      # idempotent; cached in $PIPELINE_ARM64_HOME or ~/.cache/pipeline/arm64

Layout of the cache (nothing of it lives in the repository):
    sysroot/        Debian bookworm arm64 packages unpacked with dpkg -x (CPython 3.11 and its libraries) and an
                    ARM-format proc/cpuinfo (QEMU's -L prefix shadows absolute paths: without it the host's x86
                    /proc/cpuinfo reaches the guest and `import torch` segfaults in cpuinfo)
    site/           ONE `pip install --target` of the aarch64 wheels (torch, executorch, ai-edge-litert, numpy
                    at exactly pyproject.toml's pins, plus the pure-Python modules they import at run time)
    cuda-stubs/     the aarch64 torch wheel is a CUDA build whose libraries NEED libcudart, libcublas, libnccl ...
                    at load time although nothing calls them here; instead of 3 GB of NVIDIA wheels, one small
                    stub library is generated (assembled with binutils-aarch64-linux-gnu) that defines every
                    symbol those libraries import from the missing sonames, each returning an error code, and
                    is linked once per soname. The guest finds them through LD_LIBRARY_PATH.
    env.json        what was installed (pins, QEMU version, disk use); written last: its presence means "ready"
    cost/, sysroot/sys/   instruction counting (Debian's dynamic qemu-user with the project's TCG plugin) and a fixed
                    /sys for the guest: provisioned by cost_env.py in the same command (pipeline.api.arm64_setup)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError

SETUP_COMMAND = "python -m pipeline arm64-setup"
QEMU = "qemu-aarch64-static"
FORMAT = 1  # bump when the layout changes: an older cache is then re-provisioned

SYSROOT_PACKAGES = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 zlib1g libffi8 libssl3 "
    "libexpat1 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libgomp1 libcrypt1 "
    "libnsl2 libtirpc3 libdb5.3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1 "
    "libzstd1 libatomic1"
).split()
# The runtime wheels, pinned by pyproject.toml (read at provisioning time, never restated here).
PINNED = ("torch", "executorch", "ai-edge-litert", "numpy")
# Pure-Python modules the runtimes import (torch, executorch.runtime -> executorch.exir, ai_edge_litert), at the
# versions of the host environment (the set pyproject.toml resolved to); ml_dtypes/markupsafe/pyyaml have
# aarch64 wheels. Anything missing shows as ModuleNotFoundError in the smoke test of arm64-setup.
SUPPORT = ("typing-extensions", "sympy", "mpmath", "filelock", "networkx", "jinja2", "markupsafe", "fsspec",
           "packaging", "flatbuffers", "pyyaml", "ruamel.yaml", "tabulate", "ml-dtypes", "protobuf", "tqdm",
           "backports.strenum", "setuptools")
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)] + ["manylinux2014_aarch64"]
CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for i in range(2))


def home() -> Path:
    return Path(os.environ.get("PIPELINE_ARM64_HOME") or Path.home() / ".cache" / "pipeline" / "arm64").expanduser()


@dataclass
class Arm64Env:
    root: Path
    qemu: str
    info: dict

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    def command(self, cpu: str, argv: list[str]) -> list[str]:
        return [self.qemu, "-cpu", cpu, "-L", str(self.sysroot), str(self.python), *argv]

    def environ(self, extra_path: list[str] = ()) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "VIRTUAL_ENV"))}
        env.update(PYTHONPATH=os.pathsep.join([*extra_path, str(self.site)]), PYTHONNOUSERSITE="1",
                   LD_LIBRARY_PATH=str(self.root / "cuda-stubs"), PYTHONDONTWRITEBYTECODE="1",
                   OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
        return env


def find_env() -> Arm64Env:
    """The provisioned environment, or one PipelineError naming the command that provisions it."""
    root = home()
    qemu = shutil.which(QEMU)
    info = {}
    try:
        info = json.loads((root / "env.json").read_text())
    except (OSError, ValueError):
        pass
    missing = ("qemu-aarch64-static is not on PATH" if qemu is None else
               f"no provisioned environment in {root}" if info.get("format") != FORMAT else
               f"{root} is incomplete" if not (root / "sysroot/usr/bin/python3.11").is_file() else None)
    if missing:
        raise PipelineError(f"ARM64 emulation environment missing ({missing}); provision it with: {SETUP_COMMAND} "
                            "(or set PIPELINE_ARM64_HOME)")
    return Arm64Env(root, qemu, info)


# ---------------------------------------------------------------------------------------------------------- setup

def project_pins() -> dict[str, str]:
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, _, version = dep.partition("==")
        pins[name.strip().lower()] = version.strip()
    missing = [p for p in PINNED if p not in pins]
    if missing:
        raise PipelineError(f"pyproject.toml pins none of {missing}", pyproject)
    return pins


def _run(cmd: list[str], log, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise PipelineError(f"`{' '.join(cmd[:4])} ...` failed (exit {result.returncode}): {tail[0][:300]}")
    return result


def _apt_install(packages: list[str], log) -> None:
    if os.geteuid() != 0:
        raise PipelineError(f"need root to apt-get install {' '.join(packages)} (or install them and re-run)")
    log(f"  apt-get install {' '.join(packages)}")
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], log,
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def du(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def provision_sysroot(root: Path, log) -> None:
    sysroot = root / "sysroot"
    if (sysroot / "usr/bin/python3.11").is_file() and (root / ".sysroot-done").is_file():
        log("  sysroot: present")
        return
    if "arm64" not in _run(["dpkg", "--print-foreign-architectures"], log).stdout.split():
        _run(["dpkg", "--add-architecture", "arm64"], log)
        log("  apt-get update (arm64 added)")
        _run(["apt-get", "update", "-qq"], log)
    debs = root / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    log(f"  apt-get download {len(SYSROOT_PACKAGES)} arm64 packages")
    try:
        _run(["apt-get", "download", "-qq", *[f"{p}:arm64" for p in SYSROOT_PACKAGES]], log, cwd=debs)
    except PipelineError:
        _run(["apt-get", "update", "-qq"], log)
        _run(["apt-get", "download", "-qq", *[f"{p}:arm64" for p in SYSROOT_PACKAGES]], log, cwd=debs)
    shutil.rmtree(sysroot, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(sysroot)], log)
    shutil.rmtree(debs)
    (root / ".sysroot-done").write_text("ok\n")


def write_cpuinfo(root: Path) -> None:
    proc = root / "sysroot" / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cpuinfo").write_text(CPUINFO)


def wanted_wheels(pins: dict[str, str]) -> list[str]:
    from importlib import metadata

    wanted = [f"{name}=={pins[name]}" for name in PINNED]
    for name in SUPPORT:
        try:
            wanted.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            wanted.append(name)
    return wanted


def install_wheels(root: Path, pins: dict[str, str], log) -> list[str]:
    site = root / "site"
    wanted = wanted_wheels(pins)
    stamp = root / ".site-done"
    if stamp.is_file() and stamp.read_text().split() == wanted:
        log("  aarch64 wheels: present")
        return wanted
    shutil.rmtree(site, ignore_errors=True)
    log(f"  pip install --target (aarch64, cp311, one call): {' '.join(wanted[:len(PINNED)])} + {len(SUPPORT)} support modules")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(site),
           "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
           *[a for p in PLATFORMS for a in ("--platform", p)], *wanted]
    _run(cmd, log)
    stamp.write_text(" ".join(wanted) + "\n")
    return wanted


# ELF scanning (host readelf reads aarch64 files)

@dataclass
class _Elf:
    needed: list[str]
    defined: set[str]
    undefined: dict[str, tuple[str, str]]  # strong undefined symbol -> (type, required version or "")
    version_files: dict[str, str]  # required version name -> the soname it is required from


def _scan(path: Path) -> _Elf:
    out = subprocess.run(["readelf", "-W", "--dynamic", "--dyn-syms", "-V", str(path)], capture_output=True,
                         text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    version_files, current = {}, None
    for line in out.split("Version needs section", 1)[1].splitlines() if "Version needs section" in out else []:
        file = re.search(r"File: (\S+)", line)
        name = re.search(r"Name: (\S+)", line)
        if file:
            current = file.group(1)
        elif name and current:
            version_files[name.group(1)] = current
    defined, undefined = set(), {}
    for line in out.split("Symbol table '.dynsym'", 1)[-1].split("Version symbols section", 1)[0].splitlines():
        parts = line.split()
        if len(parts) < 8 or not parts[0].rstrip(":").isdigit():
            continue
        kind, bind, ndx = parts[3], parts[4], parts[6]
        name, _, version = parts[7].partition("@")
        if not name:
            continue
        if ndx == "UND":
            if bind != "WEAK":
                undefined[name] = (kind, version.lstrip("@"))
        else:
            defined.add(name)
    return _Elf(needed, defined, undefined, version_files)


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def write_cuda_stubs(root: Path, log) -> dict:
    """One stub library per CUDA soname that the torch/executorch libraries NEED but that is not installed.

    Every symbol the libraries import from a missing soname is defined there, with the symbol version they
    require (glibc's ld.so asserts when a version is required from a file that defines none); functions
    return 999 (an error code), *ErrorString/*ErrorName return a message, data symbols point at zeros."""
    site, sysroot, stubs = root / "site", root / "sysroot", root / "cuda-stubs"
    libs = sorted({p for d in ("torch", "executorch") if (site / d).is_dir() for p in (site / d).rglob("*.so*")
                   if p.is_file() and _is_elf(p)})
    lib_dirs = [sysroot / "lib/aarch64-linux-gnu", sysroot / "usr/lib/aarch64-linux-gnu"]
    system = [p for d in lib_dirs for p in d.glob("*.so*") if not p.is_symlink() and _is_elf(p)]
    present = {p.name for p in libs} | {p.name for d in lib_dirs for p in d.glob("*.so*")} | {"ld-linux-aarch64.so.1"}
    scanned = {p: _scan(p) for p in libs + system}
    defined = set().union(*(e.defined for e in scanned.values()))
    missing = sorted({n for p in libs for n in scanned[p].needed if n not in present})
    per_soname: dict[str, dict[str, tuple[str, str]]] = {n: {} for n in missing}
    versions: dict[str, set[str]] = {n: set() for n in missing}
    unversioned: dict[str, str] = {}
    for p in libs:
        elf = scanned[p]
        for version, file in elf.version_files.items():
            if file in versions:
                versions[file].add(version)
        if not any(n in per_soname for n in elf.needed):
            continue
        for name, (kind, version) in elf.undefined.items():
            if name in defined:
                continue
            file = elf.version_files.get(version)
            if file in per_soname:
                per_soname[file][name] = (kind, version)
            elif not version:
                unversioned[name] = kind
    shutil.rmtree(stubs, ignore_errors=True)
    stubs.mkdir(parents=True)
    common = [".text", ".balign 4", "__pipeline_stub_error:", "  mov w0, #999", "  ret",
              "__pipeline_stub_string:", "  adr x0, __pipeline_stub_message", "  ret",
              "__pipeline_stub_message: .asciz \"CUDA is not available (pipeline arm64 stub)\"",
              ".data", ".balign 16", "__pipeline_stub_data: .zero 4096"]
    for soname in missing:
        symbols = {**{n: k for n, k in unversioned.items()}, **{n: k for n, (k, _) in per_soname[soname].items()}}
        asm = list(common)
        for name, kind in sorted(symbols.items()):
            q = f'"{name}"'
            if kind == "OBJECT":
                asm += [f".globl {q}", f".type {q}, %object", f".set {q}, __pipeline_stub_data"]
            else:
                target = ("__pipeline_stub_string" if re.search(r"(ErrorString|ErrorName|GetString)$", name)
                          else "__pipeline_stub_error")
                asm += [f".globl {q}", f".type {q}, %function", f".set {q}, {target}"]
        script = []
        for version in sorted(versions[soname]):
            names = sorted(n for n, (_, v) in per_soname[soname].items() if v == version)
            script.append(f"{version} {{ global: " + "".join(f'"{n}"; ' for n in names) + "};")
        base = stubs / f"{soname}.build"
        base.with_suffix(".s").write_text("\n".join(asm) + "\n")
        base.with_suffix(".map").write_text("\n".join(script or ["{ global: *; };"]) + "\n")
        _run(["aarch64-linux-gnu-as", "-o", str(base.with_suffix(".o")), str(base.with_suffix(".s"))], log)
        _run(["aarch64-linux-gnu-ld", "-shared", "-soname", soname, "--version-script", str(base.with_suffix(".map")),
              "-o", str(stubs / soname), str(base.with_suffix(".o"))], log)
        for suffix in (".s", ".map", ".o"):
            base.with_suffix(suffix).unlink()
    count = sum(len(v) for v in per_soname.values())
    log(f"  CUDA stubs: {len(missing)} sonames ({', '.join(missing)}), {count} versioned + "
        f"{len(unversioned)} unversioned symbols")
    return {"sonames": missing, "symbols": count, "unversioned_symbols": len(unversioned)}


SMOKE = (
    "import time; t = time.time(); import torch; t1 = time.time() - t; "
    "import executorch.kernels.quantized; from executorch.runtime import Runtime; Runtime.get(); "
    "from ai_edge_litert.interpreter import Interpreter; import numpy; "
    "print(torch.__version__, numpy.__version__, f'import torch {t1:.1f} s')"
)


def provision(log=print) -> Arm64Env:
    started = time.perf_counter()
    plain = log
    log = lambda message: plain(f"[{time.perf_counter() - started:5.0f} s] {message}")  # noqa: E731
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    log(f"arm64-setup: {root}")
    if shutil.which(QEMU) is None:
        _apt_install(["qemu-user-static"], log)
    if shutil.which("aarch64-linux-gnu-as") is None or shutil.which("aarch64-linux-gnu-ld") is None:
        _apt_install(["binutils-aarch64-linux-gnu"], log)
    qemu_version = _run([QEMU, "--version"], log).stdout.splitlines()[0]
    log(f"  {qemu_version}")
    pins = project_pins()
    try:
        ready = json.loads((root / "env.json").read_text())
    except (OSError, ValueError):
        ready = {}
    if (ready.get("format") == FORMAT and ready.get("wheels") == wanted_wheels(pins) and ready.get("qemu") == qemu_version
            and (root / "sysroot/usr/bin/python3.11").is_file()):
        total = sum(ready.get("bytes", {}).values())
        log(f"already provisioned ({total / 1e9:.2f} GB); delete {root} to start over")
        return Arm64Env(root, shutil.which(QEMU), ready)
    (root / "env.json").unlink(missing_ok=True)  # not ready until the smoke test passed
    provision_sysroot(root, log)
    write_cpuinfo(root)
    wanted = install_wheels(root, pins, log)
    stubs = write_cuda_stubs(root, log)
    env = Arm64Env(root, shutil.which(QEMU), {})
    log("  smoke test under emulation (import torch, executorch.runtime, ai_edge_litert)")
    smoke_started = time.perf_counter()
    try:
        result = subprocess.run(env.command("max,sme=off", ["-c", SMOKE]), capture_output=True, text=True,
                                env=env.environ(), timeout=1800)
    except subprocess.TimeoutExpired:
        raise PipelineError("the emulated smoke test (import torch, executorch, ai_edge_litert) took over 30 min", root) from None
    if result.returncode != 0:
        lines = [l for l in (result.stderr or result.stdout).strip().splitlines() if l.strip()]
        raise PipelineError(f"the emulated runtimes do not import (exit {result.returncode}): "
                            f"{(lines[-1] if lines else 'no output')[:300]}", root)
    log(f"  smoke: {result.stdout.strip()} ({time.perf_counter() - smoke_started:.0f} s)")
    sizes = {name: du(root / name) for name in ("sysroot", "site", "cuda-stubs")}
    info = {"format": FORMAT, "qemu": qemu_version, "wheels": wanted, "cuda_stubs": stubs, "bytes": sizes,
            "provisioned_s": round(time.perf_counter() - started, 1)}
    (root / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    total = sum(sizes.values())
    log("  disk: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()) + f"; total {total / 1e9:.2f} GB"
        + " (pip's download cache not counted)")
    log(f"arm64-setup: ready in {time.perf_counter() - started:.0f} s")
    return Arm64Env(root, env.qemu, info)

