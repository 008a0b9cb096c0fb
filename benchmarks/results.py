"""Where a benchmark script's results go: ``<prefix>.json`` (the rows), ``<prefix>.md`` (the table), ``<prefix>.png``.

Imported by the scripts in this folder as ``results`` (a script's own folder is first on ``sys.path``).
"""

import json
import os
from typing import Any, Callable


def write(prefix: str, data: Any, table: str, plot: Callable[[Any, str], None] | None = None) -> None:
  """Writes ``data`` as JSON, ``table`` (markdown) and, if given, ``plot(data, <prefix>.png)``; makes the folder.

  Rewriting after each finished row keeps what a long sweep measured if it is stopped part-way.
  """
  os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
  with open(prefix + '.json', 'w') as f:
    json.dump(data, f, indent=2)
  with open(prefix + '.md', 'w') as f:
    f.write(table.rstrip('\n') + '\n')
  if plot is not None:
    plot(data, prefix + '.png')
