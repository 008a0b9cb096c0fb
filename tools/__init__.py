"""Command modules: the thin command-line faces of the library (``python -m tools.hierarchy``, ``tools.convert``,
``tools.prepare``), run from the repository root. They parse flags and print; the work is the library's."""
