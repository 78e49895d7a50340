"""The instruction-counting half of the ARM64 emulation environment (provisioned by `python -m pipeline arm64-setup`,
beside env.py's sysroot and wheels, in the same cache directory).

What counting needs that the ARM gate does not:
    qemu-aarch64    Debian's dynamic `qemu-user` (same QEMU version as the gate's qemu-aarch64-static). Only the
                    dynamic build loads TCG plugins (-plugin); the static one has no plugin support. Installed
                    with --no-install-recommends: its recommended qemu-user-binfmt conflicts with qemu-user-static,
                    and neither binfmt registration is needed (QEMU is always called explicitly). The two packages
                    install different file names and coexist.
    cost/           qemu-plugin.h of the installed QEMU (from Debian's QEMU source package: no binary package
                    ships it), the project's plugin cost_plugin.c compiled against it (cost_plugin.so, gcc, ~1 s),
                    and cost.json (versions and hashes; written last: its presence means "ready").
    sysroot/sys/    a fixed /sys of a 2-core Cortex-A76-like system (topology, cache sizes, MIDR, frequencies; and
                    proc/sys/vm/overcommit_memory).
                    QEMU's -L prefix shadows absolute paths, but only those that exist under it: without these
                    files the guest reads the host's /sys (x86 cache sizes, the host's CPU count), which the
                    runtimes use to size their kernels' blocking. Shared with the ARM gate (its emulated runs see
                    the same fixed machine).

The header comes from `apt-get source --download-only qemu=<installed source version>` through a PRIVATE apt
configuration (a deb-src list built from the machine's own Debian mirrors and keyrings, its own lists directory,
no package cache): the machine's apt state is not touched. Only include/qemu/qemu-plugin.h is kept (plus any
Debian patch hunks for it); the 23 MB tarball is deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.verify.arm64.env import SETUP_COMMAND, Arm64Env, _apt_install, _run, find_env, home

QEMU_DYNAMIC = "qemu-aarch64"
QEMU_PACKAGE = "qemu-user"
PLUGIN_SOURCE = Path(__file__).with_name("cost_plugin.c")
COST_FORMAT = 1  # bump when cost/ or the fixed /sys changes: arm64-setup then rebuilds them
HEADER = "qemu-plugin.h"

# ---------------------------------------------------------------------------------------------- the fixed /sys

SYS_CPUS = 2  # as the fixed proc/cpuinfo (env.CPUINFO)
MIDR = "0x00000000414fd0b1"  # Arm Cortex-A76 r4p1: implementer 0x41, variant 0x4, part 0xd0b, revision 1 (= cpuinfo)
CACHES = (  # (level, type, size, ways, shared by all cores): Cortex-A76 with a 2 MB shared L3
    (1, "Data", 64 * 1024, 4, False),
    (1, "Instruction", 64 * 1024, 4, False),
    (2, "Unified", 512 * 1024, 8, False),
    (3, "Unified", 2048 * 1024, 16, True),
)
LINE = 64


def sys_files() -> dict[str, str]:
    """Path under the sysroot -> contents of the fixed /sys/devices/system/cpu (what cpuinfo, XNNPACK, LiteRT,
    glibc's sysconf and the ExecuTorch thread pool read)."""
    every = f"0-{SYS_CPUS - 1}"
    mask = format((1 << SYS_CPUS) - 1, "x")
    files = {f"sys/devices/system/cpu/{name}": every for name in ("possible", "present", "online")}
    files["sys/devices/system/cpu/offline"] = ""
    files["sys/devices/system/cpu/kernel_max"] = "255"
    for cpu in range(SYS_CPUS):
        base = f"sys/devices/system/cpu/cpu{cpu}"
        files[f"{base}/online"] = "1"
        topology = {"physical_package_id": "0", "cluster_id": "0", "core_id": str(cpu),
                    "core_siblings_list": every, "core_siblings": mask, "package_cpus_list": every,
                    "package_cpus": mask, "cluster_cpus_list": every, "cluster_cpus": mask,
                    "thread_siblings_list": str(cpu), "thread_siblings": format(1 << cpu, "x"),
                    "core_cpus_list": str(cpu), "core_cpus": format(1 << cpu, "x")}
        files.update({f"{base}/topology/{k}": v for k, v in topology.items()})
        for index, (level, kind, size, ways, shared) in enumerate(CACHES):
            cache = {"level": str(level), "type": kind, "size": f"{size // 1024}K", "coherency_line_size": str(LINE),
                     "ways_of_associativity": str(ways), "number_of_sets": str(size // (ways * LINE)),
                     "shared_cpu_list": every if shared else str(cpu),
                     "shared_cpu_map": mask if shared else format(1 << cpu, "x"), "id": "0" if shared else str(cpu),
                     "allocation_policy": "ReadWriteAllocate", "write_policy": "WriteBack"}
            files.update({f"{base}/cache/index{index}/{k}": v for k, v in cache.items()})
        files[f"{base}/regs/identification/midr_el1"] = MIDR
        files[f"{base}/regs/identification/revidr_el1"] = "0x0000000000000000"
        freq = {"cpuinfo_max_freq": "2400000", "cpuinfo_min_freq": "600000", "cpuinfo_cur_freq": "2400000",
                "scaling_max_freq": "2400000", "scaling_min_freq": "600000", "scaling_cur_freq": "2400000"}
        files.update({f"{base}/cpufreq/{k}": v for k, v in freq.items()})
        files[f"{base}/cpu_capacity"] = "1024"
    files.update({"sys/devices/system/node/online": "0", "sys/devices/system/node/possible": "0",
                  "sys/devices/system/node/has_cpu": "0", "sys/devices/system/node/node0/cpulist": every})
    return {path: text + "\n" if text else "" for path, text in files.items()}


# Host settings under /proc that the guest reads at start-up (besides cpuinfo, env.CPUINFO): fixed too.
PROC_FILES = {"proc/sys/vm/overcommit_memory": "0\n"}


def sys_digest() -> str:
    return hashlib.sha256(json.dumps([sys_files(), PROC_FILES], sort_keys=True).encode()).hexdigest()[:12]


def write_sys(sysroot: Path) -> None:
    """Replace sysroot/sys with the fixed tree, and write PROC_FILES. QEMU resolves a guest path under the -L prefix
    only when the file exists there; a path the tree lacks falls through to the HOST's file. So the tree holds every
    file that the runtimes and the C library were seen to read (`qemu-aarch64 -strace` of an import, load and
    inference of both runtimes). What still reaches the host: /sys/devices/system/node/node1 (a probe at import
    time, present only on multi-node NUMA hosts), sched_getaffinity (the host's CPU count: counts are of one
    thread, set explicitly, so it selects nothing), sysinfo (RAM size) and uname."""
    target = sysroot / "sys"
    staging = sysroot / "sys.new"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, text in sys_files().items():
        path = staging / Path(rel).relative_to("sys")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for rel, text in PROC_FILES.items():
        (sysroot / rel).parent.mkdir(parents=True, exist_ok=True)
        (sysroot / rel).write_text(text)


# ------------------------------------------------------------------------------------------------- environment

@dataclass
class CountingEnv:
    arm64: Arm64Env
    qemu: str  # the dynamic qemu-aarch64 (loads plugins)
    plugin: Path
    info: dict

    @property
    def plugin_version(self) -> str:
        return self.info["plugin"]

    @property
    def qemu_version(self) -> str:
        return self.info["qemu"]

    def command(self, cpu: str, marks: Path, argv: list[str]) -> list[str]:
        e = self.arm64
        return [self.qemu, "-plugin", f"{self.plugin},out={marks}", "-seed", "1", "-cpu", cpu, "-L", str(e.sysroot),
                str(e.python), *argv]


def cost_dir(root: Path | None = None) -> Path:
    return (root or home()) / "cost"


def source_sha256() -> str:
    return hashlib.sha256(PLUGIN_SOURCE.read_bytes()).hexdigest()


def plugin_version() -> str:
    """`cost_plugin <version macro> <sha256 of cost_plugin.c, 12 hex>`: changes whenever the counting code does."""
    match = re.search(r'#define COST_PLUGIN_VERSION "([^"]+)"', PLUGIN_SOURCE.read_text())
    return f"cost_plugin {match.group(1) if match else '?'} {source_sha256()[:12]}"


def find_counting_env() -> CountingEnv:
    """The provisioned counting environment, or one PipelineError naming the command that provisions it."""
    try:
        arm64 = find_env()
    except PipelineError as err:
        raise PipelineError(err.message.replace("ARM64 emulation environment missing",
                                                "ARM64 instruction-counting environment missing")) from None
    qemu = shutil.which(QEMU_DYNAMIC)
    directory = cost_dir(arm64.root)
    info = {}
    try:
        info = json.loads((directory / "cost.json").read_text())
    except (OSError, ValueError):
        pass
    missing = (f"{QEMU_DYNAMIC} (Debian's {QEMU_PACKAGE}, loads plugins) is not on PATH" if qemu is None else
               f"no counting plugin in {directory}" if info.get("format") != COST_FORMAT
               or not (directory / "cost_plugin.so").is_file() else
               "the counting plugin was built from another cost_plugin.c" if info.get("source_sha256") != source_sha256() else
               "the fixed /sys of the sysroot is missing or stale" if info.get("sys") != sys_digest()
               or not (arm64.sysroot / "sys/devices/system/cpu/online").is_file() else
               f"the plugin was built for another QEMU ({info.get('qemu')})" if info.get("qemu") != qemu_version(qemu) else None)
    if missing:
        raise PipelineError(f"ARM64 instruction-counting environment missing ({missing}); provision it with: "
                            f"{SETUP_COMMAND} (or set PIPELINE_ARM64_HOME)")
    return CountingEnv(arm64, qemu, directory / "cost_plugin.so", info)


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0].strip() if out else ""


# ----------------------------------------------------------------------------------------------------- setup

def _source_version(package: str, log) -> str:
    return _run(["dpkg-query", "-W", "-f", "${source:Version}", package], log).stdout.strip()


def _codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return match.group(1) if match else ""


def deb_src_lines(codename: str) -> list[str]:
    """One-line deb-src entries for the machine's own Debian archives of this release (URIs, suites, components and
    keyrings of its `deb` entries whose suite is the release or one of its -updates/-security suites)."""
    entries = []  # (uri, suite, components, signed_by)
    parts = Path("/etc/apt/sources.list.d")
    for path in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields = {}
            for line in block.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append((uri, suite, fields.get("components", "main").split(), fields.get("signed-by", "")))
    lists = [Path("/etc/apt/sources.list")] + (sorted(parts.glob("*.list")) if parts.is_dir() else [])
    for path in lists:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            match = re.match(r"^\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)$", line)
            if match:
                signed = re.search(r"signed-by=(\S+?)\]?(\s|$)", match.group(1) or "")
                entries.append((match.group(2), match.group(3), match.group(4).split(), signed.group(1) if signed else ""))
    out = []
    for uri, suite, components, signed_by in entries:
        if not codename or not re.fullmatch(rf"{codename}(-updates|-security)?", suite) or "main" not in components:
            continue
        option = f"[signed-by={signed_by}] " if signed_by else ""
        line = f"deb-src {option}{uri} {suite} main"
        if line not in out:
            out.append(line)
    if not out and codename:
        out.append(f"deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian "
                   f"{codename} main")
    return out


def _patch_header(header: Path, patches: dict[str, str]) -> int:
    """Apply the Debian patches' hunks for include/qemu/qemu-plugin.h (in `series` order) to `header`; their number."""
    names = [l.split()[0] for l in patches.get("series", "").splitlines() if l.strip() and not l.startswith("#")]
    applied = 0
    for name in names:
        for section in re.split(r"(?m)^(?=diff --git |--- a/)", patches.get(name, "")):
            if re.search(r"(?m)^\+\+\+ b/include/qemu/qemu-plugin\.h", section):
                subprocess.run(["patch", "-s", str(header)], input=section, text=True, check=True, capture_output=True)
                applied += 1
    return applied


def fetch_header(directory: Path, source_version: str, log) -> dict:
    """qemu-plugin.h of QEMU's Debian source package `source_version` into directory/include/."""
    codename = _codename()
    with tempfile.TemporaryDirectory(prefix="pipeline-qemu-src-") as work:
        work = Path(work)
        (work / "lists/partial").mkdir(parents=True)
        (work / "src").mkdir()
        lines = deb_src_lines(codename)
        (work / "sources.list").write_text("\n".join(lines) + "\n")
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::sourcelist={work / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", "Dir::Cache::pkgcache=", "-o",
               "Dir::Cache::srcpkgcache=", "-o", "APT::Sandbox::User=root"]
        log(f"  apt-get source --download-only qemu={source_version} (private deb-src list: {len(lines)} entries)")
        _run([*apt, "update"], log)
        _run([*apt, "source", "--download-only", f"qemu={source_version}"], log, cwd=work / "src")
        orig = next((p for p in (work / "src").glob("qemu_*.orig.tar.*")), None)
        debian = next((p for p in (work / "src").glob("qemu_*.debian.tar.*")), None)
        if orig is None:
            raise PipelineError(f"apt-get source qemu={source_version} brought no .orig tarball")
        with tarfile.open(orig) as tar:
            member = next((m for m in tar if m.name.endswith("include/qemu/qemu-plugin.h")), None)
            if member is None:
                raise PipelineError(f"{orig.name} has no include/qemu/qemu-plugin.h")
            data = tar.extractfile(member).read()
        include = directory / "include"
        include.mkdir(parents=True, exist_ok=True)
        (include / HEADER).write_bytes(data)
        applied = 0
        if debian is not None:
            with tarfile.open(debian) as tar:
                patches = {m.name[len("debian/patches/"):]: tar.extractfile(m).read().decode(errors="replace")
                           for m in tar if m.name.startswith("debian/patches/") and m.isfile()}
            applied = _patch_header(include / HEADER, patches)
    return {"qemu_source_version": source_version, "header_sha256": hashlib.sha256((include / HEADER).read_bytes()).hexdigest(),
            "debian_patches_on_header": applied}


def smoke(env: CountingEnv) -> str:
    """The plugin counts under this QEMU: three markers from the emulated CPython, strictly increasing counts."""
    code = "import os\nfor k in range(3):\n    try: os.close(0x51C00000 + k)\n    except OSError: pass\n"
    with tempfile.TemporaryDirectory(prefix="pipeline-cost-smoke-") as work:
        marks = Path(work) / "marks.txt"
        result = subprocess.run(env.command("cortex-a76", marks, ["-c", code]), capture_output=True, text=True,
                                env=env.arm64.environ(), timeout=300)
        lines = marks.read_text().splitlines() if marks.is_file() else []
    counts = [int(l.split()[1]) for l in lines if l and not l.startswith("#")]
    if result.returncode != 0 or len(counts) != 3 or not counts[0] < counts[1] < counts[2]:
        why = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"{len(counts)} markers"]
        raise PipelineError(f"the counting plugin does not work under {env.qemu} (exit {result.returncode}): {why[0][:300]}")
    return f"{counts[0]:,} instructions to the first marker, {counts[1] - counts[0]:,} between markers"


def provision_counting(root: Path, log) -> CountingEnv:
    """Idempotent: qemu-user, gcc, the header, the compiled plugin and the fixed /sys, each redone only when stale."""
    arm64 = find_env()
    if shutil.which(QEMU_DYNAMIC) is None:
        _apt_install([QEMU_PACKAGE], log)
    if shutil.which("gcc") is None:
        _apt_install(["gcc", "libc6-dev"], log)
    if shutil.which("patch") is None:
        _apt_install(["patch"], log)
    qemu = shutil.which(QEMU_DYNAMIC)
    version = qemu_version(qemu)
    if "-plugin" not in subprocess.run([qemu, "-h"], capture_output=True, text=True).stdout:
        raise PipelineError(f"{qemu} ({version}) has no -plugin option: instruction counting needs Debian's {QEMU_PACKAGE}")
    directory = cost_dir(root)
    try:
        info = json.loads((directory / "cost.json").read_text())
    except (OSError, ValueError):
        info = {}
    source_version = _source_version(QEMU_PACKAGE, log)
    wanted = {"format": COST_FORMAT, "qemu": version, "qemu_source_version": source_version,
              "source_sha256": source_sha256(), "plugin": plugin_version(), "sys": sys_digest()}
    if (all(info.get(k) == v for k, v in wanted.items()) and (directory / "cost_plugin.so").is_file()
            and (arm64.sysroot / "sys/devices/system/cpu/online").is_file()):
        log(f"  instruction counting: present ({info['plugin']}, {version})")
        return CountingEnv(arm64, qemu, directory / "cost_plugin.so", info)
    (directory / "cost.json").unlink(missing_ok=True)  # not ready until the smoke test passed
    directory.mkdir(parents=True, exist_ok=True)
    header = {k: info[k] for k in ("qemu_source_version", "header_sha256", "debian_patches_on_header") if k in info}
    if info.get("qemu_source_version") != source_version or not (directory / "include" / HEADER).is_file():
        header = fetch_header(directory, source_version, log)
    if (header != {k: info.get(k) for k in header} or info.get("source_sha256") != source_sha256()
            or info.get("qemu") != version or not (directory / "cost_plugin.so").is_file()):
        gcc = ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-Wno-unused-parameter",
               f"-I{directory / 'include'}", str(PLUGIN_SOURCE), "-o", str(directory / "cost_plugin.so")]
        _run(gcc, log)
        log(f"  compiled {PLUGIN_SOURCE.name} against qemu-plugin.h of qemu {source_version}: {directory / 'cost_plugin.so'}")
    if info.get("sys") != sys_digest() or not (arm64.sysroot / "sys/devices/system/cpu/online").is_file():
        write_sys(arm64.sysroot)
        log(f"  fixed /sys for the guest: {len(sys_files())} files ({SYS_CPUS} Cortex-A76 cores, caches "
            + "/".join(f"L{c[0]}{c[1][0].lower()} {c[2] // 1024}K" for c in CACHES) + ")")
    info = {**wanted, **header, "gcc": _run(["gcc", "-dumpfullversion"], log).stdout.strip()}
    env = CountingEnv(arm64, qemu, directory / "cost_plugin.so", info)
    log(f"  counting smoke test: {smoke(env)}")
    (directory / "cost.json").write_text(json.dumps(info, indent=2) + "\n")
    return env
