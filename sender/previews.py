"""Preview files the upload page shows: the reconstruction (PNG) and the same-bytes JPEG.

They live in ``<data_dir>/previews/<id>.png`` and ``<id>.jpg``, written when the image is
uploaded. Only the newest ``previews_keep`` images keep theirs (default 200): previews are for
looking at, not an archive, and a sender that runs for months must not fill its disk with them.
The outbox keeps every image's numbers regardless.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("latentwire.sender.previews")


class PreviewStore:
    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self._lock = threading.Lock()  # saves come from several worker threads; pruning must not race
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, image_id: str, kind: str) -> Path:
        """``kind``: "png" (reconstruction) or "jpg" (same-bytes JPEG)."""
        return self.directory / f"{image_id}.{kind}"

    def save(self, image_id: str, reconstruction_png: bytes, jpeg: bytes) -> None:
        """Blocking (file I/O): call it from a worker thread."""
        if self.keep <= 0:
            return
        with self._lock:
            for kind, data in (("png", reconstruction_png), ("jpg", jpeg)):
                final = self.path(image_id, kind)
                tmp = final.with_name(final.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, final)
            self._prune()

    def _prune(self) -> None:
        pngs = sorted(self.directory.glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
        for old in pngs[: max(0, len(pngs) - self.keep)]:
            for kind in ("png", "jpg"):
                try:
                    self.path(old.stem, kind).unlink()
                except FileNotFoundError:
                    pass
