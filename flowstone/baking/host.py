"""The machine a figure was measured on: CPU model, the instruction sets int8 kernels use,
logical CPUs, threads used, and how busy the machine was.

Why: an int8 model's speed-up depends on the CPU (AVX2 ``vpmaddubsw`` against AVX512-VNNI
``vpdpbusd`` against AMX tiles: a 1.3x on one host is 3x on the next), and on the load of the
machine while measuring. A profile records the host so a figure is read against it, and
``HostInfo.flags_key`` names the instruction sets compactly so a choice made on one host (a
recipe, a thread count) can be cached per kind of host.

Linux reads ``/proc/cpuinfo``; macOS asks ``sysctl``; elsewhere the CPU model comes from
``platform`` and the flags are unknown (``flags_known=False``, key ``"unknown"``).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

#: The instruction sets that decide which int8 kernels ONNX Runtime (MLAS) and torch (FBGEMM,
#: oneDNN) can use, in the order ``flags_key`` lists them: x86 AVX2 and AVX-512 (BW holds the
#: byte multiply-adds), the VNNI dot products (512-bit and the AVX2-width ``avx_vnni``), AMX
#: tiles; Arm's dot product (``asimddp``), int8 matrix multiply (``i8mm``) and SVE.
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
              "asimddp", "i8mm", "sve")  # fmt: skip

# macOS sysctl feature names (upper case, no underscores) -> the Linux names above.
_SYSCTL_NAMES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                 "AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni", "AMXTILE": "amx_tile",
                 "AMXINT8": "amx_int8"}  # fmt: skip
# Apple silicon: hw.optional.arm.* sysctl keys -> the Linux names above.
_ARM_SYSCTL = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm"}


@dataclass(frozen=True)
class HostInfo:
    """One machine at one time. ``flags`` holds only the :data:`INT8_FLAGS` it has, in that
    order; ``flags_known`` is False where they could not be read (then the key is "unknown",
    never a claim that the CPU lacks them). Load averages are the 1-minute figure."""

    cpu_model: str
    machine: str
    flags: tuple[str, ...]
    flags_known: bool
    cpu_count: int
    threads: int
    load_average_start: float | None = None
    load_average_end: float | None = None

    def flags_key(self) -> str:
        """A short stable name of the int8-relevant instruction sets, e.g.
        ``"avx2+avx512f+avx512bw+avx512_vnni"``; ``"baseline"`` when the host has none of
        them, ``"unknown"`` when they could not be read."""
        if not self.flags_known:
            return "unknown"
        return "+".join(self.flags) or "baseline"

    def describe(self) -> str:
        """One line for a person: CPU, instruction sets, threads of CPUs, load start -> end."""
        load = ""
        if self.load_average_start is not None:
            end = "" if self.load_average_end is None else f" -> {self.load_average_end:.2f}"
            load = f", load {self.load_average_start:.2f}{end}"
        return (f"{self.cpu_model} ({self.machine}), {self.flags_key()}, "
                f"{self.threads} threads of {self.cpu_count} CPUs{load}")  # fmt: skip

    def ended(self) -> HostInfo:
        """This host with the load average now as ``load_average_end``."""
        return replace(self, load_average_end=load_average())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostInfo:
        return cls(
            cpu_model=str(data.get("cpu_model", "")),
            machine=str(data.get("machine", "")),
            flags=tuple(data.get("flags") or ()),
            flags_known=bool(data.get("flags_known", bool(data.get("flags")))),
            cpu_count=int(data.get("cpu_count") or 0),
            threads=int(data.get("threads") or 0),
            load_average_start=data.get("load_average_start"),
            load_average_end=data.get("load_average_end"),
        )


def int8_flags(flags: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The :data:`INT8_FLAGS` among ``flags``, in that order."""
    return tuple(f for f in INT8_FLAGS if f in flags)


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """CPU model and int8-relevant flags from ``/proc/cpuinfo`` text (the first processor's
    entry: every core of a machine reports the same). x86 has ``model name`` and ``flags``;
    Arm has ``Features`` and often no model name (then ``CPU implementer``/``CPU part``, or
    ``Hardware``/``Model`` where the kernel gives them)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    raw = fields.get("flags") or fields.get("Features") or ""
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or ""
    if not model and "CPU implementer" in fields:
        model = f"implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return model, int8_flags(set(raw.split()))


def load_average() -> float | None:
    """The 1-minute load average, None where the OS has none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _sysctl(*names: str) -> str:
    try:
        done = subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True,
                              timeout=5, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _read_cpu() -> tuple[str, tuple[str, ...], bool]:
    """CPU model, int8 flags and whether the flags could be read, on this OS."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if text:
        model, flags = parse_cpuinfo(text)
        known = "flags" in text or "Features" in text
        return model or platform.processor() or platform.machine(), flags, known
    if platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string").strip()
        features = _sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features").upper().split()
        found = {_SYSCTL_NAMES[f] for f in features if f in _SYSCTL_NAMES}
        for key, name in _ARM_SYSCTL.items():
            if _sysctl(key).strip() == "1":
                found.add(name)
        known = bool(features) or platform.machine() == "arm64"
        return model or platform.processor() or platform.machine(), int8_flags(found), known
    return platform.processor() or platform.machine() or "unknown", (), False


def host_info(threads: int | None = None) -> HostInfo:
    """This machine now; ``threads``: the thread count a measurement uses (default: all CPUs
    this process may run on)."""
    model, flags, known = _read_cpu()
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return HostInfo(
        cpu_model=model,
        machine=platform.machine(),
        flags=flags,
        flags_known=known,
        cpu_count=cpus,
        threads=int(threads or cpus),
        load_average_start=load_average(),
    )
