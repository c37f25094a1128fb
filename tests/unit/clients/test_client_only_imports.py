import subprocess
import sys


def test_the_client_imports_without_torch_onnxruntime_or_tokenizers():
    code = (
        "import sys; import nestrank.clients.embed, nestrank.clients.cli, nestrank.cli; "
        "heavy = {'torch', 'onnxruntime', 'tokenizers', 'transformers'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
