"A drop-in Jupyter kernel client that keeps many requests in flight at once and routes every reply to the request that asked for it"
__version__ = "0.0.1"
import importlib
from functools import cache

_API = ('errors', 'session', 'routing', 'channel', 'core', 'requests') # the modules whose `__all__` the package exports

@cache
def _api() -> dict:
    "Every name the package exports, by name, from the module that defines it (importing `requests` adds `kc.run`)"
    mods = [importlib.import_module(f'{__name__}.{m}') for m in _API]
    return {n: getattr(m, n) for m in mods for n in m.__all__}

def __getattr__(name:str):
    "The package's API, imported at its first use, so that `conkernelclient.stubkernel` alone loads no client"
    if name == '__all__': return list(_api())
    try: return _api()[name]
    except KeyError: raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

def __dir__() -> list[str]: return sorted({*globals(), *_api()})
