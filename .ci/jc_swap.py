"""pytest plugin for `.ci/jupyter_client_suite`: run jupyter_client's own tests with conkernelclient swapped in.

Load it with `-p jc_swap` (`.ci` on PYTHONPATH) so it runs before pytest imports the test modules: they then bind
`AsyncKernelClient`, `AsyncKernelManager` and `AsyncIOLoopKernelManager` to conkernelclient's classes, and so do
jupyter_client's own lookups by dotted name at run time (`AsyncKernelManager.client_class`,
`AsyncMultiKernelManager.kernel_manager_class`) and `start_new_async_kernel`.

Environment:
    JC_SWAP=0    run jupyter_client's own classes (the vanilla control); default 1 swaps them.
    JC_KNOWN     lines `nodeid-glob | regex | reason`: a failure of a matching test whose traceback or captured
                 output matches regex (empty: any failure) is reported as xfail with the reason. The tests still
                 run, and pass as usual. The list and its reasons live in the script.
"""
import os, re
from fnmatch import fnmatch
import pytest
import jupyter_client, jupyter_client.manager, jupyter_client.asynchronous, jupyter_client.asynchronous.client
import jupyter_client.ioloop, jupyter_client.ioloop.manager
import conkernelclient
# conkernelclient imports jupyter_client's originals first, so the Con classes subclass the real ones
from conkernelclient.core import ConKernelClient, ConKernelManager, ConIOLoopKernelManager

SWAP = os.environ.get('JC_SWAP', '1') != '0'
PATCHES = [(jupyter_client, jupyter_client.asynchronous, jupyter_client.asynchronous.client, 'AsyncKernelClient', ConKernelClient),
           (jupyter_client, jupyter_client.manager, 'AsyncKernelManager', ConKernelManager),
           (jupyter_client.ioloop, jupyter_client.ioloop.manager, 'AsyncIOLoopKernelManager', ConIOLoopKernelManager)]
SWAPPED = []
if SWAP:
    for *mods, name, new in PATCHES:
        old = getattr(mods[0], name)
        assert issubclass(new, old), f"{new.__name__} is no {old.__name__}: nothing to swap"
        for mod in mods: setattr(mod, name, new)
        SWAPPED.append(f"{name} -> {new.__name__}")

# (nodeid glob, regex, reason) for each line `nodeid-glob | regex | reason` of JC_KNOWN
KNOWN = [tuple(f.strip() for f in l.split(' | ', 2)) for l in os.environ.get('JC_KNOWN', '').splitlines() if l.strip()]

def pytest_report_header(config):
    return [f"jc_swap: jupyter_client {jupyter_client.__version__}: "
            + (", ".join(SWAPPED) + f" (conkernelclient {conkernelclient.__version__} from {os.path.dirname(conkernelclient.__file__)})"
               if SWAP else "vanilla (no swap)"),
            f"jc_swap: {len(KNOWN)} known failure(s) reported as xfail"]

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    "A failure (in setup, call or teardown) that a KNOWN entry matches, by nodeid and text, is reported as xfail"
    rep = (yield).get_result()
    if not rep.failed: return
    text = rep.longreprtext + ''.join(content for _, content in rep.sections) # the traceback and captured output
    for glob, pattern, reason in KNOWN:
        if fnmatch(rep.nodeid, glob) and (not pattern or re.search(pattern, text)):
            rep.outcome, rep.wasxfail = 'skipped', f"known: {reason}"
            return
