"""dsocr.serve: an OpenAI-compatible OCR server over the runtime's BatchEngine (extra `serve`).

    dsocr serve --model bundles/small --port 8000

`create_app(ServeOptions(...))` builds the ASGI app (FastAPI); `serve(options)` runs it under uvicorn
with graceful shutdown. Only dsocr.runtime is imported from dsocr (never torch, export or engines).
"""
from .options import ServeOptions

__all__ = ["ServeOptions"]
