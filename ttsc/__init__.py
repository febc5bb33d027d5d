"""ttsc: a compiler for test-time-scaling strategies for LLMs.

The API lives in `ttsc.api`; names are loaded on first use so that
`ttsc compile` and `ttsc check` never import torch.
"""

from typing import Any

__all__ = ["compile", "compile_source", "run", "evaluate", "make_engines", "Compiled", "Plan"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ttsc import api
        return getattr(api, name)
    raise AttributeError(f"module 'ttsc' has no attribute {name!r}")
