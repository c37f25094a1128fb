"""`nestrank serve`'s front flags: what it refuses before exporting anything, and the command it supervises."""

from nestrank import serve
from nestrank.serving.launcher.server import ServerConfig
from nestrank.serving.launcher.supervisor import EventLog
from tests.certificates import make_certificates

KEY = "serve-unit-key-0123456789"


def test_flags_it_refuses(tmp_path):
    certs = make_certificates(tmp_path)
    mutual = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--tls-ca", str(certs.ca)]
    assert "--no-api" in serve.refused(serve.parser().parse_args(mutual))
    assert serve.refused(serve.parser().parse_args([*mutual, "--no-api"])) is None
    assert "--api-port 8001" in serve.refused(serve.parser().parse_args(["--api-port", "8001"]))


def test_the_front_command_carries_tls_and_leaves_the_key_to_the_environment(tmp_path):
    certs = make_certificates(tmp_path)
    args = serve.parser().parse_args(["--host", "0.0.0.0", "--api-port", "9080", "--api-key", KEY, "--tls-cert",
                                      str(certs.server_cert), "--tls-key", str(certs.server_key),
                                      "--otlp-endpoint", "http://127.0.0.1:4318"])  # fmt: skip
    config = ServerConfig(tmp_path, host="0.0.0.0", grpc_port=9001, api_key=KEY)
    front = serve.front(args)(config, EventLog(echo=False))
    command = " ".join(front.command)
    assert "-m nestrank.api --triton 127.0.0.1:9001 --host 0.0.0.0 --port 9080" in command
    assert f"--tls-cert {certs.server_cert}" in command and f"--triton-ca {certs.server_cert}" in command
    assert KEY not in command and front.env["NESTRANK_API_KEY"] == KEY
    assert "--otlp-endpoint http://127.0.0.1:4318" in command
    assert front.url == "https://0.0.0.0:9080" and front.address == ("127.0.0.1", 9080)


def test_passage_states_go_into_the_store_url_the_models_get(monkeypatch, capsys):
    monkeypatch.delenv("NESTRANK_PASSAGE_STATES", raising=False)
    url = serve.passage_store_url(serve.parser().parse_args(["--passage-store", "lmdb:///srv/p?map_size=1GiB",
                                                             "--passage-states", "int8"]))  # fmt: skip
    assert url == "lmdb:///srv/p?map_size=1GiB&states=int8"
    assert serve.passage_store_url(serve.parser().parse_args(["--passage-store", "memory://"])) == "memory://"
    monkeypatch.setenv("NESTRANK_PASSAGE_STATES", "int8")
    assert serve.parser().parse_args([]).passage_states == "int8"
    # A URL and a flag that disagree: refused before anything is exported or started.
    assert serve.main(["--passage-store", "memory://?states=float16", "--passage-states", "int8"]) == 2
    assert "says states=float16, and --passage-states says int8" in capsys.readouterr().err
