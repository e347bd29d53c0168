"""Run the app under uvicorn: SIGTERM/SIGINT stop accepting connections, in-flight requests get up to
the grace period to finish (then they are cancelled), the engine is closed, and the process exits 0."""
from __future__ import annotations

import logging
import signal

from .app import Loader, create_app, load_engine
from .options import ServeOptions


def serve(opts: ServeOptions, loader: Loader = load_engine) -> int:
    """Serve until a signal; -> 0 after a graceful stop, 1 when the bundle failed to load."""
    import uvicorn

    logging.basicConfig(level=opts.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(opts, loader)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level=opts.log_level,
                            timeout_graceful_shutdown=opts.grace_period_s, lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    state = app.state.dsocr
    state.on_load_error = lambda e: setattr(server, "should_exit", True)
    # uvicorn re-raises the signal it caught once it has shut down; these make that a no-op (exit 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 1 if state.load_error is not None else 0
