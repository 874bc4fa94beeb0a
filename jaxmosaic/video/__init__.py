"""Video style transfer: reading and writing videos, optical flow, temporal consistency, stylisation.

The public names of the submodules are re-exported here; a submodule that is not
present in this installation is skipped so that the others stay importable.
"""

import importlib as _importlib

__all__: list[str] = []

for _name in ("io", "flow", "temporal", "stylize"):
    try:
        _module = _importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _error:
        if _error.name != f"{__name__}.{_name}":
            raise
        continue
    for _public in getattr(_module, "__all__", ()):
        globals()[_public] = getattr(_module, _public)
        __all__.append(_public)
