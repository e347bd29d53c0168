"""Server options, validated in one place (InputError names the bad value)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from dsocr.runtime.errors import InputError

DEFAULT_MAX_BODY_BYTES = 32 * 2**20  # a base64 data URL is 4/3 of the image file
DEFAULT_MAX_PIXELS = 40_000_000  # per image, read from its header before decoding (A4 at 600 dpi is 35 M)


def _positive(name: str, value, kind=(int,), minimum=1) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        raise InputError(f"{name}={value!r} must be a number >= {minimum}")


@dataclass(frozen=True)
class ServeOptions:
    bundle: Path
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "ort"
    device: str = "cpu"
    threads: int | None = None
    batch: int = 1  # decode slots of the BatchEngine
    max_queue: int = 64  # requests waiting for a slot; one more gets 429
    served_model_name: str | None = None  # default: the bundle directory's name
    request_timeout_s: float = 600.0  # queue wait + decode; past it the page is cancelled (504)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_remote_media: bool = False  # fetch http(s) image URLs
    allowed_local_media_path: Path | None = None  # file:// URLs only under this directory
    grace_period_s: float = 30.0  # on SIGTERM: time for in-flight requests to finish
    log_level: str = "info"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise in place)
        set_("bundle", Path(self.bundle))
        _positive("port", self.port, minimum=0)
        if self.port > 65535:
            raise InputError(f"port={self.port} must lie in 0..65535")
        _positive("batch", self.batch)
        _positive("max_queue", self.max_queue)
        _positive("max_body_bytes", self.max_body_bytes, minimum=1024)
        _positive("max_pixels", self.max_pixels)
        _positive("request_timeout_s", self.request_timeout_s, kind=(int, float), minimum=0.001)
        _positive("grace_period_s", self.grace_period_s, kind=(int, float), minimum=0)
        if self.allowed_local_media_path is not None:
            root = Path(self.allowed_local_media_path).resolve()
            if not root.is_dir():
                raise InputError(f"allowed_local_media_path={self.allowed_local_media_path}: not a directory")
            set_("allowed_local_media_path", root)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.bundle.resolve().name

    def replace(self, **changes) -> ServeOptions:
        return dataclasses.replace(self, **changes)
