"Build README.md from nbs/index.ipynb without quarto: markdown cells as they are, code cells and their saved outputs fenced"
import json, re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
directive = re.compile(r'^\s*#\s*\|')

def code_md(cell):
    lines = ''.join(cell['source']).splitlines()
    if any(directive.match(l) and re.search(r'\b(hide|exporti?)\b', l) for l in lines): return ''
    src = '\n'.join(l for l in lines if not directive.match(l)).strip()
    parts = [f"```python\n{src}\n```"] if src else []
    for out in cell.get('outputs', []):
        text = ''.join(out.get('text') or out.get('data', {}).get('text/plain', ''))
        if text.strip(): parts.append(f"```\n{text.rstrip()}\n```")
    return '\n\n'.join(parts)

def readme(nb):
    cells = json.loads(nb.read_text())['cells']
    mds = [''.join(c['source']) if c['cell_type'] == 'markdown' else code_md(c) for c in cells]
    return '\n\n'.join(m.strip() for m in mds if m.strip()) + '\n'

if __name__ == '__main__':
    (root/'README.md').write_text(readme(root/'nbs'/'index.ipynb'))
