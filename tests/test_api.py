"""The public face checks itself, as dm_pix's api_test does: every public function and class has a
docstring, a public function's options are keyword-only, every name the README and the docs write
resolves, and nothing outside the package (tests, benchmarks) imports a private name.

Public: a name in the `__all__` of `jaxmosaic` or of a module under it whose dotted path has no
segment starting with "_" (the command line, `jaxmosaic.cli`, is checked by its own tests). Each
check gathers every offence and fails once, listing them all.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest
from helpers import ROOT

import jaxmosaic

PACKAGE = ROOT / "jaxmosaic"

# Public functions whose listed parameters have defaults yet may still be passed by position:
# the exceptions found when this check was written, a list to shrink (each entry a function to
# give a `*`), never to grow. A new function takes its options after `*`.
POSITIONAL_DEFAULTS = {
    "jaxmosaic.alexnet.adaptive_avg_pool": ("out",),
    "jaxmosaic.alexnet.alexnet_features": ("layers",),
    "jaxmosaic.alexnet.check_alexnet_layers": ("field",),
    "jaxmosaic.filters.gabor_kernel": ("psi",),
    "jaxmosaic.io.artifacts.artifact_format": ("version",),
    "jaxmosaic.io.checkpoints.load_tree": ("like",),
    "jaxmosaic.io.files.atomic_path": ("inputs",),
    "jaxmosaic.io.files.check_not_input": ("inputs",),
    "jaxmosaic.io.files.write_json": ("inputs",),
    "jaxmosaic.lbfgs.batched_lbfgs": ("learning_rate", "memory_size"),
    "jaxmosaic.optimize.learning_rate": ("default",),
    "jaxmosaic.optimize.make_optimizer": ("learning_rate",),
    "jaxmosaic.resources.activation_bytes": ("batch",),
    "jaxmosaic.resources.largest_tile": ("batch",),
    "jaxmosaic.resources.memory_budget": ("max_memory",),
    "jaxmosaic.resources.optimisation_bytes": ("batch", "channels"),
    "jaxmosaic.search.l2_normalize": ("axis", "eps"),
    "jaxmosaic.sharding.device_mesh": ("devices",),
    "jaxmosaic.spectrum.radial_power_spectrum": ("bins",),
    "jaxmosaic.techniques.hybrid.hybrid_problem": ("params",),
    "jaxmosaic.techniques.mosaic.assemble.colorize": ("alpha",),
    "jaxmosaic.techniques.mosaic.assemble.make_mosaic": ("params",),
    "jaxmosaic.techniques.mosaic.bank.bank_axes": ("grid",),
    "jaxmosaic.techniques.mosaic.bank.bank_tiles": ("size",),
    "jaxmosaic.techniques.mosaic.bank.render_bank": ("size",),
    "jaxmosaic.techniques.mosaic.features.batched_features": ("batch",),
    "jaxmosaic.techniques.mosaic.features.color_features": ("grid",),
    "jaxmosaic.techniques.mosaic.features.feature_function": ("params",),
    "jaxmosaic.techniques.mosaic.library.auto_svd_k": ("energy", "cap"),
    "jaxmosaic.techniques.mosaic.library.save_library": ("inputs",),
    "jaxmosaic.techniques.mosaic.sources.color_mode": ("library",),
    "jaxmosaic.techniques.mosaic.sources.feature_config": ("library", "params"),
    "jaxmosaic.techniques.mosaic.stream.build_folder": ("processes", "process"),
    "jaxmosaic.techniques.mosaic.stream.tile_source": ("grid",),
    "jaxmosaic.techniques.mosaic.tiles.gabor_parameters": ("grid",),
    "jaxmosaic.techniques.mosaic.tiles.gabor_tiles": ("colors",),
    "jaxmosaic.techniques.texture.is_gray": ("tolerance",),
    "jaxmosaic.techniques.vq.compress_image": ("stride",),
    "jaxmosaic.techniques.vq.vq_decode": ("stride",),
    "jaxmosaic.techniques.vq.vq_encode": ("stride",),
    "jaxmosaic.tiled_losses.tiled_style_terms": ("content_layers",),
    "jaxmosaic.tiling.visit_order": ("seed",),
    "jaxmosaic.vgg.check_layers": ("field",),
    "jaxmosaic.vgg.vgg19_features": ("layers",),
    "jaxmosaic.weights.convert": ("out_dir",),
    "jaxmosaic.weights.default_weights_dir": ("arch",),
    "jaxmosaic.weights.download": ("url", "out_dir"),
    "jaxmosaic.weights.find_weights": ("path", "arch"),
    "jaxmosaic.weights.load_alexnet": ("path",),
    "jaxmosaic.weights.load_params": ("arch",),
    "jaxmosaic.weights.load_vgg19": ("path",),
    "jaxmosaic.weights.load_weights": ("path",),
    "jaxmosaic.weights.weights_info": ("path", "arch"),
}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def public_modules() -> list[str]:
    names = ["jaxmosaic"]
    for info in pkgutil.walk_packages(jaxmosaic.__path__, "jaxmosaic."):
        if info.name == "jaxmosaic.cli" or info.name.startswith("jaxmosaic.cli."):
            continue
        if not any(is_private(part) for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_objects() -> list[tuple[str, str, object]]:
    """(module, name, object) for every name in a public module's `__all__`."""
    found = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            found.append((module_name, name, getattr(module, name)))
    return found


def is_function(obj) -> bool:
    """A function, or a callable wrapping one (a jitted function)."""
    return inspect.isroutine(obj) or (callable(obj) and not inspect.isclass(obj) and hasattr(obj, "__wrapped__"))


def own_docstring(obj) -> str:
    """The docstring written for `obj`: a class's own (not the one a dataclass or NamedTuple makes up)."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        return "" if doc.startswith(f"{obj.__name__}(") else doc.strip()
    return (getattr(obj, "__doc__", None) or "").strip()


def public_functions() -> dict[str, object]:
    """Every public function once, under the dotted name of where it is defined."""
    return {f"{obj.__module__}.{obj.__qualname__}": obj for _, _, obj in public_objects() if is_function(obj)}


def positional_defaults(function) -> tuple[str, ...]:
    """The parameters of `function` that have a default but may be passed by position."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return ()
    return tuple(p.name for p in parameters if p.default is not inspect.Parameter.empty
                 and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def test_every_public_function_and_class_has_a_docstring():
    missing = sorted({f"{module}.{name}" for module, name, obj in public_objects()
                      if (inspect.isclass(obj) or is_function(obj)) and not own_docstring(obj)})
    assert not missing, "no docstring:\n" + "\n".join(missing)


def test_options_of_public_functions_are_keyword_only():
    offences = []
    for name, function in sorted(public_functions().items()):
        extra = set(positional_defaults(function)) - set(POSITIONAL_DEFAULTS.get(name, ()))
        if extra:
            offences.append(f"{name}: {', '.join(sorted(extra))}")
    assert not offences, "options that may be passed by position (put them after `*`):\n" + "\n".join(offences)


def test_the_positional_defaults_allowed_are_still_there():
    """An exception that was fixed (or renamed) leaves the list, so that the list only shrinks."""
    functions = public_functions()
    stale = [f"{name}: {', '.join(sorted(set(params) - set(positional_defaults(functions[name]))))}"
             if name in functions else f"{name}: no such public function"
             for name, params in sorted(POSITIONAL_DEFAULTS.items())
             if name not in functions or set(params) - set(positional_defaults(functions[name]))]
    assert not stale, "POSITIONAL_DEFAULTS names what is no longer so:\n" + "\n".join(stale)


# --- the names the README and the docs write ------------------------------------------------------

DOTTED = re.compile(r"(?<![\w./-])(?:jaxmosaic|jm)((?:\.\w+)+)(?![\w-])")
PLACEHOLDER = re.compile(r"\.[A-Z](?:\.|$)")  # jaxmosaic.X, jm.X: any name, as the text says
FROM_IMPORT = re.compile(r"^\s*from\s+(jaxmosaic(?:\.\w+)*)\s+import\s+(?:\(([^)]*)\)|([\w ,]+))", re.MULTILINE)


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/, those that exist."""
    docs = ROOT / "docs"
    return [path for path in [ROOT / "README.md", *sorted(docs.rglob("*.md") if docs.is_dir() else [])] if path.is_file()]


def written_names(text: str) -> set[str]:
    """Every jaxmosaic.name, jm.name and jaxmosaic.module.name in a text, and each name a
    `from jaxmosaic... import a, b` line imports, as full dotted paths. A one-capital-letter
    segment (jaxmosaic.X) stands for any name and is left out."""
    names = {"jaxmosaic" + match.group(1) for match in DOTTED.finditer(text) if not PLACEHOLDER.search(match.group(1))}
    for module, parenthesised, imported in FROM_IMPORT.findall(text):
        for item in (parenthesised or imported).split(","):
            if item.split():
                names.add(f"{module}.{item.split()[0]}")
    return names


def resolves(dotted: str) -> bool:
    """Whether the longest importable prefix of `dotted` is a module that has the rest as attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue
            raise
        for attribute in parts[end:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_every_name_the_readme_and_docs_write_resolves():
    assert (ROOT / "README.md").is_file()
    unresolved = [f"{path.relative_to(ROOT)}: {name}" for path in documents()
                  for name in sorted(written_names(path.read_text())) if not resolves(name)]
    assert not unresolved, "names that do not resolve:\n" + "\n".join(unresolved)


# --- no private name from outside the package ----------------------------------------------------

DOTTED_STRING = re.compile(r"jaxmosaic(?:\.\w+)+")
ATTRIBUTE_CALLS = {"getattr", "setattr", "delattr", "hasattr"}


def is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except Exception:  # noqa: BLE001 - a parent that is no package, or fails to import: not a module here
        return False


def private_path(dotted: str) -> bool:
    return any(is_private(part) for part in dotted.split(".")[1:])


def dotted_name(node: ast.AST, modules: dict[str, str]) -> str | None:
    """`a.b.c` as the full dotted path when `a` is bound to a jaxmosaic module, else None."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in modules:
        return ".".join([modules[node.id], *reversed(attributes)])
    return None


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each private jaxmosaic name the code imports or reaches: a module path or
    name starting with "_" (dunders aside) in an import, an attribute of a jaxmosaic module (or of
    a name assigned one), the name given to getattr / setattr (monkeypatch's too), a dotted
    string naming one (monkeypatch.setattr's target), and the same inside Python code held in a
    string (a script run in a subprocess)."""
    tree = mark_parents(ast.parse(source))
    modules: dict[str, str] = {}  # local name -> the jaxmosaic module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jaxmosaic":
                    if private_path(alias.name):
                        found.append((node.lineno, f"import {alias.name}"))
                    modules[alias.asname or "jaxmosaic"] = alias.name if alias.asname else "jaxmosaic"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jaxmosaic" and not node.level:
            for alias in node.names:
                if private_path(node.module) or is_private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                if is_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):  # `km = jaxmosaic.clustering`
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            dotted = dotted_name(node.value, modules)
            if dotted and is_module(dotted):
                modules[node.targets[0].id] = dotted
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(node.parent, ast.Attribute):
            dotted = dotted_name(node, modules)
            if dotted and private_path(dotted):
                found.append((node.lineno, dotted))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            target, attribute = dotted_name(node.args[0], modules), node.args[1]
            if (function in ATTRIBUTE_CALLS and target and isinstance(attribute, ast.Constant)
                    and isinstance(attribute.value, str) and is_private(attribute.value)):
                found.append((node.lineno, f"{function}({target}, {attribute.value!r})"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "jaxmosaic" in node.value:
            for dotted in DOTTED_STRING.findall(node.value):
                if private_path(dotted):
                    found.append((node.lineno, repr(dotted)))
            if "import" in node.value:
                try:
                    inner = private_uses(textwrap.dedent(node.value))
                except SyntaxError:
                    continue
                found += [(node.lineno + line - 1, f"{what} (in a script)") for line, what in inner]
    return sorted(set(found))


def mark_parents(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return tree


def test_nothing_outside_the_package_imports_a_private_name():
    offences = []
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        for line, what in private_uses(path.read_text()):
            offences.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offences, "private names used outside the package:\n" + "\n".join(offences)


# The optimisation loop, its placement on devices and tiled refinement know no network: a
# technique brings its loss. Checked on the import statements, module by module, transitively.
LOOP_MODULES = ("jaxmosaic.optimize", "jaxmosaic.sharding", "jaxmosaic.stages", "jaxmosaic.refine", "jaxmosaic.tiling")
NETWORK_MODULES = ("jaxmosaic.vgg", "jaxmosaic.alexnet", "jaxmosaic.losses")


def _package_imports(module: str) -> set[str]:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxmosaic"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("jaxmosaic")}
    return found


@pytest.mark.parametrize("module", LOOP_MODULES)
def test_loop_modules_import_no_network(module):
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _package_imports(name)
    assert not seen & set(NETWORK_MODULES), f"{module} reaches {sorted(seen & set(NETWORK_MODULES))}"



def test_cli_functions_take_at_most_eight_parameters():
    crowded = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                count = len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs)
                count += (arguments.vararg is not None) + (arguments.kwarg is not None)
                if arguments.args and arguments.args[0].arg in ("self", "cls"):
                    count -= 1
                if count > 8:
                    crowded.append(f"{path.name}:{node.lineno} {node.name} ({count})")
    assert not crowded
