"""`ttsc serve`: a compiled strategy behind an OpenAI-compatible endpoint.

`service.py` runs requests through the executor (engines shared, so that
concurrent requests batch together), `protocol.py` reads and writes the
OpenAI wire format, `app.py` is the HTTP server (FastAPI on uvicorn).
"""

from ttsc.runtime.serve.app import build_app, serve
from ttsc.runtime.serve.service import Service, engines_for

__all__ = ["Service", "build_app", "engines_for", "serve"]
