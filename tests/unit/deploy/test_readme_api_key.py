"""deploy/README.md's API key example gives a key `nestrank serve` accepts (a short one made compose restart the
container for ever)."""

import re
import subprocess
from pathlib import Path

from nestrank.serving.launcher.config import ServerConfig

README = Path(__file__).resolve().parents[3] / "deploy" / "README.md"


def test_the_api_key_the_readme_makes_is_one_the_launcher_accepts(tmp_path):
    assignments = re.findall(r"NESTRANK_API_KEY=(\"[^\"]*\"|'[^']*'|\S+)", README.read_text())
    assert assignments, "the README shows how to set NESTRANK_API_KEY"
    for value in assignments:
        key = subprocess.run(["bash", "-c", f"printf %s {value}"], capture_output=True, text=True, check=True).stdout
        assert ServerConfig(tmp_path, api_key=key).api_key == key  # raises ValueError for a key it refuses
