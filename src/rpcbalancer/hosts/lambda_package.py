"""``rpcbalancer lambda package``: the deployment zip for AWS Lambda.

The zip holds the installed ``rpcbalancer`` package and the wheels of what the Lambda handler
imports, downloaded by pip for the *target* platform (``manylinux2014_aarch64`` for arm64) and
Python version, so it builds on any machine without Docker or the target's interpreter
(``sam build`` needs a local python3.12 or a container for the same job). Left out: boto3 (the
Lambda runtime has it), uvloop (Lambda runs its own loop), the CLI's typer/rich, aiohttp (the
simulator only). The archive is reproducible: sorted entries, fixed timestamps and modes.

The package's own modules go compiled or interpreted, and the zip says which
(:attr:`Built.modules`, printed by the command; ``/version`` says it again at run time):
compiled when the modules installed here are compiled for the target (this machine's
architecture and Python version, needing no newer C library than manylinux2014's, glibc 2.17:
checked on the compiled files), or come from an rpcbalancer wheel built for the target
(``wheel``: a ``manylinux2014`` or older wheel of the target's Python and architecture, say
from cibuildwheel); else the same source, interpreted (``interpreted=True`` asks for it).

Byte-code: Lambda's code directory is read-only, so modules without a ``.pyc`` are compiled
again at every cold start (that doubles the handler's import time). When an interpreter of the
target version is found (this one, ``pythonX.Y`` on the PATH, a pyenv install, or
``--compile-with``), every module is compiled with it, as unchecked-hash ``.pyc`` files that
stay valid whatever timestamps the zip gives the sources.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}
LEFT_OUT = {"boto3", "uvloop", "typer", "rich", "aiohttp"}
EXTRAS = {"redis", "postgres"}
SKIPPED = {"__pycache__", "sim", "commands"}
"""Folders of the package itself left out (the simulator needs aiohttp; the CLI, typer)."""
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """The zip could not be built (pip failed, an unknown option)."""


MANYLINUX_GLIBC = (2, 17)
"""manylinux2014's C library: what Lambda's runtimes all have."""


@dataclass(frozen=True)
class Built:
    path: Path
    size: int
    files: int
    requirements: tuple[str, ...]
    compiled_with: str | None
    """The interpreter that made the byte-code, or None (no byte-code)."""
    modules: str = "interpreted"
    """How the package's own modules run on Lambda: ``interpreted``, or ``compiled (...)``."""


def requirements(extras: Iterable[str] = ()) -> list[str]:
    """What the Lambda zip installs: the package's own dependencies, minus what Lambda has or
    does not need, plus the named store extras."""
    wanted = set(extras)
    unknown = wanted - EXTRAS
    if unknown:
        raise PackageError(f"unknown extra(s) {sorted(unknown)}: choose from {sorted(EXTRAS)}")
    out: set[str] = set()
    for text in importlib.metadata.requires("rpcbalancer") or []:
        spec, _, marker = text.partition(";")
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if name is None or name.group(0).lower() in LEFT_OUT:
            continue
        extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if extra is not None and extra.group(1) not in wanted:
            continue
        out.add(spec.strip())
    return sorted(out)


def build(
    output: Path,
    *,
    arch: str = "arm64",
    python: str = "3.12",
    extras: Sequence[str] = (),
    pip_args: Sequence[str] = (),
    compile_with: str | None = None,
    byte_code: bool = True,
    wheel: Path | None = None,
    interpreted: bool = False,
) -> Built:
    if arch not in ARCHES:
        raise PackageError(f"unknown architecture {arch!r}: choose from {', '.join(ARCHES)}")
    if wheel is not None:
        _check_wheel(wheel, arch, python)
    reqs = requirements(extras)
    with tempfile.TemporaryDirectory(prefix="rpcbalancer-lambda-") as tmp:
        staging = Path(tmp)
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
            str(staging),
            "--platform",
            f"manylinux2014_{ARCHES[arch]}",
            "--implementation",
            "cp",
            "--python-version",
            python,
            "--only-binary=:all:",
            *pip_args,
            *reqs,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PackageError(f"pip could not get the wheels:\n{done.stderr.strip()[-2000:]}")
        source = Path(__file__).resolve().parent.parent  # the rpcbalancer package
        shutil.copytree(source, staging / "rpcbalancer", ignore=_ignored)
        modules = "interpreted"
        if wheel is not None and not interpreted:
            _unpack_compiled(wheel, staging)
            modules = f"compiled ({wheel.name})"
        elif not interpreted and _compiled_here_fits(source, arch, python):
            for library in _compiled_files(source):
                target = staging / library.relative_to(source.parent)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(library, target)
            modules = f"compiled here (manylinux2014_{ARCHES[arch]}, cp{python.replace('.', '')})"
        compiler = (compile_with or find_python(python)) if byte_code else None
        if compiler is not None:
            _compile(compiler, staging)
        files = _zip(staging, output)
    return Built(output, output.stat().st_size, files, tuple(reqs), compiler, modules)


def _compiled_files(package: Path) -> list[Path]:
    """The compiled modules installed with ``package``, and the library they share."""
    return sorted(package.rglob("*.so")) + sorted(package.parent.glob("rpcbalancer__mypyc*.so"))


def _compiled_here_fits(package: Path, arch: str, python: str) -> bool:
    """Whether the modules installed here are compiled, for the target's architecture and
    Python, and need no newer C library than manylinux2014's."""
    files = _compiled_files(package)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not files or python != here or ARCHES[arch] != os.uname().machine:
        return False
    needed = [glibc_needed(path.read_bytes()) for path in files]
    return all(version <= MANYLINUX_GLIBC for version in needed)


def glibc_needed(binary: bytes) -> tuple[int, int]:
    """The newest C library version a shared object asks for (its ``GLIBC_x.y`` symbol
    versions)."""
    found = [(int(a), int(b)) for a, b in re.findall(rb"GLIBC_(\d+)\.(\d+)", binary)]
    return max(found, default=(0, 0))


_MANYLINUX = re.compile(r"manylinux(?:2014|2010|1|_2_(\d+))_(\w+)$")


def _check_wheel(wheel: Path, arch: str, python: str) -> None:
    """An rpcbalancer wheel built for the target: its Python, architecture, manylinux2014."""
    parts = wheel.name.removesuffix(".whl").split("-")
    if not wheel.is_file() or len(parts) < 5 or parts[0] != "rpcbalancer":
        raise PackageError(f"{wheel}: not an rpcbalancer wheel")
    abi, platforms = parts[-2], parts[-1].split(".")
    wanted = f"cp{python.replace('.', '')}"
    fits = [_MANYLINUX.match(tag) for tag in platforms]
    if abi != wanted or not any(
        m and m.group(2) == ARCHES[arch] and int(m.group(1) or 17) <= MANYLINUX_GLIBC[1]
        for m in fits
    ):
        raise PackageError(
            f"{wheel.name} is not for Python {python} on manylinux2014_{ARCHES[arch]} "
            f"(its tags: {abi}, {', '.join(platforms)})"
        )


def _unpack_compiled(wheel: Path, staging: Path) -> None:
    """The compiled modules of ``wheel`` beside the source (which stays, as the fallback)."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".so") and name.startswith(("rpcbalancer/", "rpcbalancer__mypyc")):
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (``3.12``) on this machine, or None."""
    candidates = (
        [sys.executable] if f"{sys.version_info[0]}.{sys.version_info[1]}" == version else []
    )
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    home = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(
        glob.glob(f"{home}/versions/{version}.*/bin/python{version}"), reverse=True
    )
    for exe in candidates:
        try:
            done = subprocess.run(
                [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return exe
    return None


def _compile(python: str, staging: Path) -> None:
    done = subprocess.run(
        [
            python,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            str(staging),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PackageError(f"byte-compiling with {python} failed:\n{done.stdout[-2000:]}")


def _ignored(folder: str, names: list[str]) -> set[str]:
    """Left out of the copy: :data:`SKIPPED`, and the modules compiled for this machine (the
    zip carries compiled modules only when they fit the target: see :func:`build`)."""
    return {n for n in names if n in SKIPPED or n.endswith(".so")}


def _zip(staging: Path, output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for root, dirs, names in os.walk(staging):
        top = root == str(staging)
        dirs[:] = [d for d in dirs if not (top and d == "bin")]
        paths += [Path(root, n) for n in names]
    partial = output.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(paths, key=lambda p: p.relative_to(staging).as_posix()):
            info = zipfile.ZipInfo(path.relative_to(staging).as_posix(), ZIP_TIME)
            executable = os.access(path, os.X_OK) and path.suffix == ".so"
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    partial.replace(output)
    return len(paths)
