"""The fingerprint of the code that computes a run: the ``code`` of its cache key and baseline.

A run's result follows from more than its model's structure: the ``forward`` of
every module class in the model's tree, the helper functions they call, the loss
and the optimizer. :class:`Code` stands for that code by the SHA-256 of the
source files that define it:

* the file of the model factory, of the loss and of the optimizer callables (the
  whole file, so that an edit of a helper function beside them counts);
* the file of every class in the method resolution order of every module in the
  built model's tree (``type(m).__mro__`` for ``m`` in ``model.modules()``), and of
  every layer of a Keras model (:func:`~.libraries.keras_layers`), whose layers are not
  torch submodules;
* every file of the project those files import (``import blocks``, ``from
  .layers import Block``), read from their import statements, transitively, so
  that a helper function in another of the project's modules counts too.

Code of torch and of pytest-batchprof is left out (:data:`IN_THE_KEY`): every
cache key holds their versions already. Code of another installed library (a
file under site-packages: torchvision, timm) is stood for by the library's
version, and the standard library by nothing. File *contents* are hashed, never
paths or times, so that unchanged code has the same fingerprint in every session
and on every machine, and any edit of such a file changes it.

What cannot be fingerprinted gives a reason, and its runs are trained but not
cached: a class defined inside a function (what it computes may hang on the
function's local values), or a class or function whose source file cannot be read
(defined in an interactive session or by ``exec``).
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import importlib.metadata
import inspect
import site
import sys
import sysconfig
from dataclasses import dataclass
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from torch import nn

from pytest_batchprof.experiment.libraries import keras_layers

IN_THE_KEY = frozenset({"torch", "pytest_batchprof"})
"""Top-level packages whose versions every cache key holds (see
:func:`pytest_batchprof.runs.cache.key_inputs`): their code is not fingerprinted."""


@dataclass(frozen=True)
class Code:
    """The code a run computes with: what its fingerprint hashes, and why it cannot be
    cached, if it cannot.

    ``parts`` are ``file <sha256>`` (a source file's contents), ``library <name>
    <version>`` (an installed library's code) and the identities of the user's loss
    and optimizer callables (``loss=mymodule.my_loss``). ``a | b`` is the code of both,
    with the first reason.
    """

    parts: frozenset[str] = frozenset()
    reason: str | None = None
    """A clause with its subject (``its module class test_x.<locals>.Block is defined
    inside a function; ...``); ``None`` when all of it could be fingerprinted."""

    def __or__(self, other: Code) -> Code:
        return Code(self.parts | other.parts, self.reason or other.reason)

    def fingerprint(self) -> str | None:
        """SHA-256 (16 hex digits) of the parts; ``None`` when there are none: no code of
        the user's, only torch's and the plugin's."""
        if not self.parts:
            return None
        return hashlib.sha256("\n".join(sorted(self.parts)).encode()).hexdigest()[:16]


def code_of(value: object, subject: str) -> Code:
    """The code of a model factory, loss or optimizer callable (``subject`` is how a reason
    names it: ``its factory``, ``its loss``): the files of the functions and classes it
    calls, a ``functools.partial``'s function and callable arguments, a bound method's
    function and owner, an object's class."""
    code = Code()
    for target in _targets(value):
        code |= _code_of_target(target, subject)
    return code


def model_code(model: nn.Module) -> Code:
    """The code of every module class in ``model``'s tree, and of their base classes; for a
    Keras model, of every layer class too (its layers are not torch submodules: a layer
    class of Keras counts as Keras's version, one of the user's by its file)."""
    code = Code()
    seen: set[type] = set()
    for module in [*model.modules(), *keras_layers(model)]:
        for cls in type(module).__mro__:
            if cls not in seen:
                seen.add(cls)
                code |= _code_of_target(cls, "its module class")
    return code


def _targets(value: object) -> list[object]:
    """The classes and functions whose source computes ``value`` when it is called."""
    if isinstance(value, functools.partial):
        arguments = [argument for argument in (*value.args, *value.keywords.values())
                     if inspect.isclass(argument) or inspect.isfunction(argument)
                     or isinstance(argument, functools.partial)]
        return [*_targets(value.func), *(target for argument in arguments
                                         for target in _targets(argument))]
    if inspect.ismethod(value):
        owner = value.__self__
        return [*_targets(value.__func__),
                *_targets(owner if inspect.isclass(owner) else type(owner))]
    if inspect.isclass(value):
        return list(value.__mro__)
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return [value]
    return list(type(value).__mro__)  # a loss module, a dataclass factory, a callable object


def _code_of_target(target: object, subject: str) -> Code:
    """The code of one class or function: its file (and the project's files it imports), its
    library's version, or nothing for torch, the plugin and Python itself."""
    module_name = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or repr(target)
    if module_name.partition(".")[0] in IN_THE_KEY or (
            module_name == "builtins" and getattr(builtins, qualname, None) is target):
        return Code()  # object, int: not code made by exec, whose module reads "builtins"
    if inspect.isbuiltin(target) or inspect.ismethoddescriptor(target):
        return Code()  # compiled code: its library's version or Python's stands for it
    name = qualname if module_name in ("", "builtins") else f"{module_name}.{qualname}"
    if "<locals>" in qualname:
        return Code(reason=f"{subject} {qualname} is defined inside a function; define it at "
                           f"module level, so that its source file identifies it")
    path = _source_path(target, module_name)
    if path is None:
        return Code(reason=f"{subject} {name} has no source file to fingerprint (defined in "
                           f"an interactive session or by exec); define it in a module's file")
    place = _place(path)
    if place == "stdlib":
        return Code()
    if place == "library":
        versions = _library_versions(module_name.partition(".")[0])
        if versions:
            return Code(frozenset(f"library {version}" for version in versions))
    return Code(frozenset(_project_files(path, module_name)))


def _source_path(target: object, module_name: str) -> Path | None:
    """The file that defines ``target``: its Python source, or the binary of a compiled
    extension module; ``None`` when there is none to read."""
    try:
        name = inspect.getsourcefile(target)  # type: ignore[arg-type]
    except TypeError:  # a class of a module without a file (__main__ of an interactive session)
        name = None
    if name is None:  # a compiled extension: its binary is its code
        name = getattr(sys.modules.get(module_name), "__file__", None)
        if name is not None and name.endswith(".py"):
            name = None  # a module's source that does not hold this object
    if name is None or not Path(name).is_file():
        return None
    return Path(name)


@functools.cache
def _roots() -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """Where installed libraries live (site-packages), and where the standard library does."""
    paths = sysconfig.get_paths()
    libraries = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        libraries.add(site.getusersitepackages())
    stdlib = {paths["stdlib"], paths["platstdlib"]}
    return (tuple(Path(path).resolve() for path in libraries),
            tuple(Path(path).resolve() for path in stdlib))


def _place(path: Path) -> str:
    """``library`` (site-packages), ``stdlib``, or ``project``: anything else."""
    resolved = path.resolve()
    libraries, stdlib = _roots()
    if any(resolved.is_relative_to(root) for root in libraries):  # before the stdlib: a
        return "library"                                          # venv nests them
    if any(resolved.is_relative_to(root) for root in stdlib):
        return "stdlib"
    return "project"


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Installed distributions by the top-level packages they provide (read once: ~0.3 s)."""
    return importlib.metadata.packages_distributions()


def _library_versions(top_level: str) -> tuple[str, ...]:
    """``name version`` of each installed distribution that provides ``top_level``."""
    versions = set()
    for distribution in _distributions().get(top_level, ()):
        try:
            versions.add(f"{distribution} {importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(sorted(versions))


def _project_files(path: Path, module_name: str) -> set[str]:
    """``file <sha256>`` of ``path`` and of every project file it imports, transitively."""
    parts: set[str] = set()
    pending, seen = [(path, module_name)], {path.resolve()}
    while pending:
        current, name = pending.pop()
        digest, imports = _read(current, name)
        parts.add(f"file {digest}")
        for imported in imports:
            if imported.partition(".")[0] in IN_THE_KEY:
                continue
            found = _module_file(imported)
            if found is None or found.resolve() in seen or _place(found) != "project":
                continue
            seen.add(found.resolve())
            pending.append((found, imported))
    return parts


_READ: dict[tuple[str, str, int, int], tuple[str, frozenset[str]]] = {}
""":func:`_read`'s results by path, module name, modification time and size: a session
reads each file once, and a file edited since is read again."""


def _read(path: Path, module_name: str) -> tuple[str, frozenset[str]]:
    """The SHA-256 of ``path``'s bytes, and the absolute names of the modules it imports."""
    status = path.stat()
    key = (str(path), module_name, status.st_mtime_ns, status.st_size)
    if key not in _READ:
        data = path.read_bytes()
        imports = (_imports(data, module_name, path.name == "__init__.py")
                   if path.suffix == ".py" else frozenset())
        _READ[key] = hashlib.sha256(data).hexdigest(), imports
    return _READ[key]


def _imports(source: bytes, module_name: str, package: bool) -> frozenset[str]:
    """Every module an import statement of ``source`` may name, anywhere in it: ``import
    a.b`` names ``a.b``; ``from .c import d`` names ``<package>.c`` and
    ``<package>.c.d`` (``d`` may be a module)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, module_name, package)
            if base is not None:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names
                             if alias.name != "*")
    return frozenset(names)


def _absolute(module: str | None, level: int, importer: str, package: bool) -> str | None:
    """The absolute name of ``from <level dots><module> import ...`` in ``importer``."""
    if level == 0:
        return module
    parts = importer.split(".") if package else importer.split(".")[:-1]
    if level - 1 > len(parts) or (level - 1 == len(parts) and not module):
        return None  # beyond the top-level package: an import that fails anyway
    parts = parts[:len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts) or None


def _module_file(name: str) -> Path | None:
    """The file of module ``name``: where it was imported from, or, for a module not
    imported (yet), where the import system would find it, found without importing it."""
    module = sys.modules.get(name)
    if module is not None:
        file = getattr(module, "__file__", None)
        return Path(file) if file and Path(file).is_file() else None
    spec = _spec(name)
    if spec is None or not spec.has_location or spec.origin is None:
        return None
    origin = Path(spec.origin)
    return origin if origin.is_file() else None


def _spec(name: str) -> ModuleSpec | None:
    """Where module ``name`` would be found on ``sys.path`` (or its package's path),
    without running any of its code or its packages'."""
    parent, _, _ = name.rpartition(".")
    try:
        if not parent:
            return PathFinder.find_spec(name)
        package = sys.modules.get(parent)
        locations = getattr(package, "__path__", None) if package is not None else None
        if package is None:
            parent_spec = _spec(parent)
            locations = None if parent_spec is None else parent_spec.submodule_search_locations
        return None if not locations else PathFinder.find_spec(name, list(locations))
    except (ImportError, ValueError, OSError):
        return None
