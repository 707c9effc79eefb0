"""The layering, checked: routes -> records -> store / upstream, and nothing around it.

- The import contracts in ``pyproject.toml`` hold (``lint-imports``), and they
  catch a route module that imports the database or a PACS client.
- No two modules of the gateway import each other, however indirectly.
- Every route under ``/fhir`` and ``/dicomweb`` (and the portal's and shares'
  image routes) declares what it needs with ``@requires``, bar the few that
  serve no patient data.
- No route module reaches for the services' PACS client, database or
  jackets, or makes up an Access of its own.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest
from starlette.routing import BaseRoute, Mount, Route

from gateway.app import create_app
from gateway.authorization import requirement_of
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
ROUTE_MODULES = (
    "gateway/fhir/routes.py",
    "gateway/dicomweb/routes.py",
    "gateway/portal/routes.py",
    "gateway/portal/recipient.py",
    "gateway/portal/shares_pages.py",
    "gateway/portal/activity.py",
    "gateway/portal/viewing.py",
    "gateway/portal/pages.py",
    "gateway/portal/gates.py",
    "gateway/admin/routes.py",
    "gateway/auth/authorize.py",
    "gateway/operations.py",
    "gateway/portal/sites_pages.py",
    "gateway/portal/research_pages.py",
    "gateway/portal/recipient_viewer.py",
    "gateway/admin/transfers.py",
    "gateway/admin/research.py",
    "gateway/donation/routes.py",
    "gateway/apps/routes.py",
)
# What only the wiring and the records layer hold; a route that needs them has a hole.
INTERNALS = frozenset({"upstream", "database", "sessions", "engine", "jackets", "index"})
DATA_MOUNTS = ("/fhir", "/dicomweb", "/portal/dicomweb", "/share/dicomweb")
# Routes under those mounts that serve no patient data (and so need no Access).
OPEN_ROUTES = frozenset(
    {
        "/fhir/metadata",
        "/fhir/.well-known/smart-configuration",
        "/fhir/{path:path}",
        # DELETE ends a capability URL for whoever holds it; it reads no patient data.
        "/dicomweb/cap/{secret}",
    }
)


def _lint_imports(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    checked = _lint_imports(ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Contracts: 4 kept, 0 broken." in checked.stdout


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("gateway/fhir/routes.py", "from gateway.store.database import Database"),
        ("gateway/portal/routes.py", "import sqlalchemy"),
        ("gateway/dicomweb/routes.py", "from gateway.dicomweb.upstream import Upstream"),
    ],
)
def test_a_route_that_reaches_around_the_records_layer_breaks_the_contract(
    tmp_path: Path, module: str, line: str
) -> None:
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{line}  # noqa\n")
    checked = _lint_imports(tmp_path, PYTHONPATH=str(tmp_path))
    assert checked.returncode != 0
    assert "Routes reach neither the PACS nor the database" in checked.stdout
    assert module.removesuffix(".py").replace("/", ".") + " is not allowed to import" in (
        checked.stdout
    )


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("gateway")
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def _strongly_connected(graph: grimp.ImportGraph) -> Iterator[list[str]]:
    """Tarjan's algorithm, iteratively (the import graph is deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                yield sorted(component)


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _routes(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, route


def test_every_data_route_declares_what_it_needs(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    found = [
        (path, route)
        for path, route in _routes(app.routes)
        if path.startswith(DATA_MOUNTS) and path not in OPEN_ROUTES
    ]
    assert len(found) > 30  # the walk reaches the mounted API routes
    undeclared = [path for path, route in found if requirement_of(route.endpoint) is None]
    assert undeclared == []
    declared = {path: requirement_of(route.endpoint) for path, route in found}
    assert declared["/dicomweb/studies"] is not None
    assert declared["/fhir/Binary/{id}"].resource_type == "DocumentReference"  # type: ignore[union-attr]


@pytest.mark.parametrize("module", ROUTE_MODULES)
def test_no_route_reaches_around_its_access(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text(), module)
    reached = sorted(
        {
            f"line {node.lineno}: .{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in INTERNALS
        }
    )
    made_up = sorted(
        f"line {node.lineno}: {node.func.id}(...)"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("Access", "Visibility")
    )
    assert reached == [] and made_up == []
