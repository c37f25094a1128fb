"""Finding tritonserver and preparing its Python backend: the stub for this interpreter, libraries, site dirs."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nestrank.serving.launcher.config import ServerStartError


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    library_dirs: tuple[Path, ...] = ()
    # Set for the pytriton wheel, whose Python backend needs the stub for this interpreter copied in.
    python_backend: Path | None = None
    stub: Path | None = None
    caches: Path | None = None


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    if explicit is not None:
        binary = Path(explicit)
        if not binary.exists():
            raise ServerStartError(f"--tritonserver {binary} does not exist")
        root = binary.resolve().parent.parent  # <root>/bin/tritonserver, as in the NGC container
        return TritonInstall(binary=binary, caches=root / "caches")
    try:
        import pytriton
    except ImportError:
        raise ServerStartError(
            "no tritonserver: install the serving extra (`pip install nestrank[serve]`) "
            "or pass --tritonserver /path/to/bin/tritonserver"
        ) from None
    dist = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerStartError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    return TritonInstall(
        binary=dist / "bin" / "tritonserver",
        library_dirs=(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs",),
        python_backend=dist / "backends" / "python",
        stub=stub,
        caches=dist / "caches",
    )


def prepare_backends(install: TritonInstall, workdir: Path) -> Path | None:
    """A backend directory whose Python backend has the stub for the running interpreter."""
    if install.python_backend is None:
        return None
    target = workdir / "backends" / "python"
    shutil.copytree(install.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, target / "triton_python_backend_stub")
    return target.parent


def server_environment(install: TritonInstall, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, then `extra` (ServerConfig.environment), then what the stub needs to run."""
    env = {**os.environ, **(extra or {})}
    libs = [str(d) for d in install.library_dirs]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    # The stub embeds the system's libpython: tell the model glue where this environment's packages are.
    site_dirs = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["NESTRANK_SITE_DIRS"] = os.pathsep.join(site_dirs)
    return env
