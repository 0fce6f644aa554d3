"""Workflow versions and diagrams, read from a workflow's code without running it.

- :func:`code_version` is the version id of a workflow's code: a UUID derived from the source of the module
  that defines its class and of the project modules that module uses (:mod:`stepstone.graph.source`).
- :func:`workflow_graph` is its diagram: the ``ast`` of ``run()`` and of the functions it calls, in the JSON shape
  of Cloudflare's ``GET …/versions/{id}/graph`` (:mod:`stepstone.graph.build`).
- :func:`graph_text` draws that diagram as indented text (``stepstone workflows describe NAME --graph``).

Nothing here imports or runs user code beyond reading the class it is given.
"""

from stepstone.graph.build import GRAPH_VERSION, workflow_graph
from stepstone.graph.source import code_version
from stepstone.graph.text import graph_text

__all__ = ["GRAPH_VERSION", "code_version", "graph_text", "workflow_graph"]
