"""The launcher: the tritonserver process and what keeps it honest (flags closed by default, a private /dev/shm,
supervision with backoff, the HTTP front as a supervised companion, admin calls), and `nestrank serve`'s flags. It
never imports the pipeline or the Triton glue: it runs a server, the models run inside it."""

from nestrank.serving.launcher.server import (  # noqa: F401  (the names callers use)
    SHM_DIR,
    ServerConfig,
    ServerStartError,
    TlsConfig,
    TritonServer,
    find_tritonserver,
    free_ports,
    process_tree_memory,
    stub_models,
    stubs_with_prefix,
)
