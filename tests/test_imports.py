"""The package's shape, read from its source: no import circle among supersub_jax's modules, no module that imports
upward (benchmarks, studies, tools, the entry points), and no library module that is also a program."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'supersub_jax'
UPWARD = ('benchmarks', 'studies', 'tools', 'train', 'evaluate', 'tests', 'conftest')


def _modules() -> dict[str, ast.Module]:
  """{'supersub_jax.data.sources': its syntax tree} for every module of the package ('…__init__' for a package)."""
  modules = {}
  for folder, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
        with open(path) as f:
          modules[dotted] = ast.parse(f.read(), path)
  return modules


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
  """Every module an ``import`` anywhere in ``tree`` names (in functions too: a deferred import is still an edge).
  ``from p import x`` names module ``p.x`` when there is one, else ``p``."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        found.add(f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known else node.module)
  return found


def _resolve(name: str, known: set[str]) -> str | None:
  if name in known:
    return name
  if f'{name}.__init__' in known:
    return f'{name}.__init__'
  return None


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = {m[:-len('.__init__')] if m.endswith('.__init__') else m for m in modules} | set(modules)
  graph = {}
  for module, tree in modules.items():
    edges = {_resolve(name, set(modules)) for name in _imports(tree, known)}
    graph[module] = {e for e in edges if e and e != module}
  return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def _has_main_block(tree: ast.Module) -> bool:
  for node in ast.walk(tree):
    if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__'
        and any(isinstance(c, ast.Constant) and c.value == '__main__' for c in node.test.comparators)):
      return True
  return False


def test_the_circle_finder_finds_a_circle_and_the_edges_are_read():
  assert _circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert _circles({'a': {'b'}, 'b': set()}) == []
  graph = _graph()
  # One `from supersub_jax import x` edge, one `from supersub_jax.data import x` edge, one `import x.y` edge.
  assert 'supersub_jax.hierarchy' in graph['supersub_jax.bundle']
  assert 'supersub_jax.data.builders' in graph['supersub_jax.data.prepare']
  assert {'supersub_jax.wordnet'} == graph['supersub_jax.hierarchy']


def test_the_package_has_no_import_circle_and_no_library_main():
  graph = _graph()
  assert _circles(graph) == []
  upward = {m: sorted(n for n in _imports(tree, set()) if n.split('.')[0] in UPWARD)
            for m, tree in _modules().items()}
  assert {m: names for m, names in upward.items() if names} == {}
  assert sorted(m for m, tree in _modules().items() if _has_main_block(tree)) == []


def test_benchmarks_and_studies_import_the_package_and_their_own_folder_only():
  import glob  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  crossing = {}
  for folder, other in (('benchmarks', 'studies'), ('studies', 'benchmarks')):
    for path in glob.glob(os.path.join(root, folder, '*.py')):
      tree = ast.parse(open(path).read())
      names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
      names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
      wrong = sorted(n for n in names if n.split('.')[0] in (other, 'tools', 'train', 'evaluate', 'tests'))
      if wrong:
        crossing[os.path.relpath(path, root)] = wrong
  assert crossing == {}


def test_no_module_of_the_package_is_over_450_lines():
  # The house's size rule: a module that outgrows it holds two things.
  lengths = {}
  for folder, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in (n for n in names if n.endswith('.py')):
      with open(os.path.join(folder, name)) as f:
        lengths[os.path.relpath(os.path.join(folder, name), ROOT)] = len(f.read().splitlines())
  assert len(lengths) == len(_modules()) and {path: n for path, n in lengths.items() if n > 450} == {}
