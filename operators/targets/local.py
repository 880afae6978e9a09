"""The project's own model server as a serving target."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airloop.canary import VariantStats


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (an address from a connection)
        return resp.read()


class LocalServerTarget:
    """The project's model server (``airloop.serving.server``), driven through its admin routes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def serve_aliases(self) -> dict[str, Any]:
        """Load the registry's current ``@champion`` / ``@challenger``."""
        return json.loads(_http("POST", f"{self.base_url}/admin/reload"))

    def prepare(self, version: str) -> None:
        info = self.serve_aliases()
        served = info.get("variants", {}).get("challenger")
        if served != str(version):
            raise RuntimeError(
                f"the model server at {self.base_url} serves challenger v{served}, not v{version}: "
                "the @challenger alias moved while this rollout started"
            )

    def set_percent(self, percent: int) -> None:
        _http("PUT", f"{self.base_url}/admin/weight", {"weight": percent / 100.0})

    def readings(self) -> dict[str, VariantStats]:
        from airloop.canary import parse_metrics

        return parse_metrics(_http("GET", f"{self.base_url}/metrics").decode())

    def finish(self, promoted: bool) -> None:
        self.set_percent(0)
        if promoted:
            self.serve_aliases()  # the new champion; a newer challenger, if any, waits at 0 for its canary

    def describe(self) -> str:
        return f"model server {self.base_url}"
