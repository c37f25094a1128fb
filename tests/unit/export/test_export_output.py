"""`nestrank export` is quiet by default: a progress bar and the parity figures, not the libraries' tracer and
exporter warnings or their weight-loading bars; `-v` shows those."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def export(checkpoint, repository, *flags) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nestrank", "export", "embedder", "--checkpoint", str(checkpoint), "--name", "tiny",
           "--repository", str(repository), *flags]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_export_shows_progress_and_parity_and_the_warnings_only_when_asked(tiny_decoder_dir, tmp_path):
    quiet = export(tiny_decoder_dir, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "parity fp32: min cosine" in quiet.stdout
    assert "tiny: done 4/4" in quiet.stderr  # the progress bar, through every stage
    noise = [line for line in quiet.stderr.replace("\r", "\n").splitlines() if "Warning" in line or "Loading" in line]
    assert noise == []
    verbose = export(tiny_decoder_dir, tmp_path / "verbose", "-v")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "TracerWarning" in verbose.stderr and "Loading weights" in verbose.stderr
    assert "parity fp32: min cosine" in verbose.stdout
