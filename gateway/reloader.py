"""Reloading the manifest without a restart: ``POST /admin/reload``, SIGHUP, or a file watch.

The file is read and validated first, its keys resolved; a manifest that fails either, or that
needs a restart (``serving.reload.restart_needed``), is refused with its errors and the running
one keeps serving. A good one is applied as a diff (``Fleet.reload``): new variants appear,
removed and changed ones drain and stop, kept ones keep their processes; keys, limits and routing
apply to the next request. Each reload is a log line and a ``quantgate_manifest_reloads`` count.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from gateway.keys import KeyRing
from gateway.metrics import GatewayMetrics
from serving.errors import ManifestError, ReloadRefused
from serving.fleet import Fleet
from serving.manifest import load_manifest

log = logging.getLogger(__name__)


class Reloader:
    def __init__(self, path: Path, fleet: Fleet, keys: KeyRing, metrics: GatewayMetrics) -> None:
        self.path = path
        self._fleet = fleet
        self._keys = keys
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._seen = self._stamp()

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Apply the manifest file as it is now; raise ManifestError or ReloadRefused (the
        running manifest stays) when it cannot be."""
        async with self._lock:
            self._seen = self._stamp()
            try:
                manifest = load_manifest(self.path)
                keys = KeyRing.from_auth(manifest.auth)
                change = self._fleet.reload(manifest)
            except (ManifestError, ReloadRefused) as exc:
                self._metrics.reloads.labels("refused").inc()
                log.error("manifest reload (%s) refused, the running one stays: %s", trigger, exc)
                raise
            self._keys.replace(keys)
            self._metrics.reloads.labels("applied").inc()
            log.info("manifest reload (%s) applied: %s", trigger, change.summary())
            return {"applied": True, **change.as_dict()}

    async def watch(self, interval_s: float = 2.0) -> None:
        """Reload whenever the file's content, or a key file's, changes (polled: works on
        ConfigMap and Secret volumes, whose files are swapped through a symlink)."""
        while True:
            await asyncio.sleep(interval_s)
            if self._stamp() != self._seen:
                await self.try_reload("file changed")

    async def try_reload(self, trigger: str) -> None:
        """One reload that never raises (the file watch, SIGHUP): a refusal is logged by
        ``reload``, anything else here with its traceback; the next change is tried again."""
        try:
            await self.reload(trigger)
        except (ManifestError, ReloadRefused):
            pass
        except Exception:
            log.exception("manifest reload (%s) failed with an internal error", trigger)

    def _stamp(self) -> list[bytes | None]:
        """The manifest's content and that of the key files it names (a rotated key reloads)."""
        auth = self._fleet.manifest.auth
        files = [k.key_file for k in auth.keys if k.key_file] if auth else []
        return [_read(path) for path in (self.path, *files)]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
