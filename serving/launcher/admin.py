"""The launcher's own calls to Triton's HTTP API: health, and model reloads with the admin key."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from nestrank.protocol.headers import ADMIN_KEY_HEADER


@dataclass(frozen=True)
class TritonAdmin:
    http_url: str  # http://host:port
    admin_key: str

    def status(self, path: str, method: str = "GET", headers: dict | None = None, timeout_s: float = 2.0) -> int:
        """The HTTP status of a call (0: no answer)."""
        request = urllib.request.Request(self.http_url + path, method=method,
                                         data=b"" if method == "POST" else None, headers=headers or {})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def is_ready(self) -> bool:
        return self.status("/v2/health/ready") == 200

    def model_ready(self, model: str) -> bool:
        return self.status(f"/v2/models/{model}/ready") == 200

    def admin(self, method: str, path: str, timeout_s: float = 300.0) -> int:
        """A call with the admin key (model repository, statistics, logging)."""
        return self.status(path, method, {ADMIN_KEY_HEADER: self.admin_key}, timeout_s)

    def reload(self, model: str) -> tuple[int, int]:
        """Unload `model` (it is not ready from then on), then load it again: the two statuses."""
        return self.admin("POST", f"/v2/repository/models/{model}/unload"), self.admin(
            "POST", f"/v2/repository/models/{model}/load"
        )
