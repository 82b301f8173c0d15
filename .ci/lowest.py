"Print a pip constraints list pinning each runtime dependency in pyproject.toml to its declared lower bound (`name>=v` -> `name==v`)"
import re, sys, tomllib
from pathlib import Path

deps = tomllib.loads((Path(__file__).resolve().parent.parent/'pyproject.toml').read_text())['project']['dependencies']
for dep in deps:
    m = re.fullmatch(r'\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*', dep)
    if m is None: sys.exit(f"pyproject.toml: dependency {dep!r} is not of the form 'name>=version', so it has no lower bound to test")
    print(f'{m[1]}=={m[2]}')
