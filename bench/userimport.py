"""Importing a user's own code (`package.module:function`) without editing `sys.path`.

A module is taken from the installed packages first; failing that, from the directory of the suite that names it
(`suite_dir/package/module.py` or `suite_dir/module.py`), loaded by file location and registered in `sys.modules`
under its own name, so that pickles of the user's model (artifacts, torchrun inputs) refer to it by that name.
Child processes (the measurement worker, torchrun ranks) unpickle those models too: `subprocess_env` gives them a
PYTHONPATH holding the directories user code was loaded from. The working directory is never searched: a run
behaves the same from any directory.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.filehash import file_sha256

# The directory of the suite being parsed: where `package.module` is looked for when it is not installed.
_search_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("bench_user_search_dir", default=None)
# Directories user modules were loaded from, in load order (handed to child processes).
USER_ROOTS: list[Path] = []


@contextlib.contextmanager
def search_dir(path: str | Path | None) -> Iterator[None]:
    """Within the block, user modules that are not installed are looked for in `path` (a suite's directory)."""
    token = _search_dir.set(Path(path).resolve() if path is not None else None)
    try:
        yield
    finally:
        _search_dir.reset(token)


def _load_from_dir(top: str, root: Path) -> bool:
    """Load the top-level package or module `top` from `root`; False when `root` holds neither."""
    package, module = root / top / "__init__.py", root / f"{top}.py"
    if package.is_file():
        spec = importlib.util.spec_from_file_location(top, package, submodule_search_locations=[str(root / top)])
    elif module.is_file():
        spec = importlib.util.spec_from_file_location(top, module)
    else:
        return False
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[top] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[top]
        raise
    return True


def import_module(module_name: str) -> Any:
    """Import `module_name` from the installed packages, else from the current search directory."""
    top = module_name.partition(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != top or top in sys.modules:
            raise  # the module exists but something it imports is missing: the user must see that name
    root = _search_dir.get()
    if root is None or not _load_from_dir(top, root):
        where = f"the installed packages nor {root}" if root else "the installed packages"
        raise ModuleNotFoundError(f"no module '{top}' among {where}", name=top)
    return importlib.import_module(module_name)


def _remember_root(module_name: str) -> None:
    """Note the directory that holds the top-level package of `module_name`, for child processes."""
    top = sys.modules.get(module_name.partition(".")[0])
    location = getattr(top, "__file__", None)
    if location is None:
        return
    path = Path(location).resolve()
    root = path.parent.parent if path.name == "__init__.py" else path.parent
    if root not in USER_ROOTS:
        USER_ROOTS.append(root)


def import_object(spec: str) -> Any:
    """`package.module:attribute` -> the attribute; ConfigError('name', ...) saying where it looked if missing."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError("name", f"expected 'package.module:function', got '{spec}'")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise ConfigError("name", f"cannot import '{spec}': {exc}") from exc
    _remember_root(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError("name", f"cannot import '{spec}': module '{module_name}' has no '{attribute}'") from None


def resolve_path(path: str | Path) -> Path:
    """A file named in a suite: a relative path is relative to the suite's directory (while a suite is parsed),
    not to the working directory, so a suite means the same files wherever `bench` is started."""
    path = Path(path).expanduser()
    root = _search_dir.get()
    return (root / path if root is not None and not path.is_absolute() else path).resolve()


@functools.cache
def _library_dirs() -> frozenset[Path]:
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    return frozenset(Path(p).resolve() for p in (sysconfig.get_path(n) for n in names) if p)


def source_sha256(obj: Any) -> str | None:
    """sha256 of the source files `obj` (a user's function or class) comes from: its module and every loaded
    module of the same package (what it imports from the user's package), or, for a top-level module, the loaded
    modules beside it. None for the harness's own code and for installed libraries: their versions key them."""
    module_name = getattr(obj, "__module__", None) or ""
    top = module_name.partition(".")[0]
    top_module = sys.modules.get(top)
    location = getattr(top_module, "__file__", None)
    if top in ("", "bench") or location is None:
        return None
    top_file = Path(location).resolve()
    root = top_file.parent
    if any(root == lib or lib in root.parents for lib in _library_dirs()):
        return None  # an installed package (an editable install's source folder is not under these)
    digest = hashlib.sha256()
    for path in _source_files(root, top_file.name != "__init__.py", os.path.dirname(location), len(sys.modules)):
        # each file's own hash, memoised by size and mtime: a suite's every cell asks for this, a file is read once
        digest.update(f"{path.relative_to(root)}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _source_files(root: Path, single_module: bool, loaded_from: str, n_modules: int) -> tuple[Path, ...]:
    """The loaded modules' files under `root` (beside it for a single module), sorted; memoised while no module
    is imported (`n_modules`: every cell of a suite asks, and a scan of sys.modules resolves thousands of paths)."""
    prefixes = (str(root), loaded_from)
    files = set()
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if not file or not file.endswith(".py") or not os.path.isabs(file):
            continue  # torch.classes says "_classes.py": no file of the user's
        if not file.startswith(prefixes) and not os.path.islink(file):
            continue  # neither under the root as resolved nor as loaded: no path to resolve
        path = Path(file).resolve()
        if (path.parent == root) if single_module else (root in path.parents):
            files.add(path)
    return tuple(sorted(files))


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default: this process's) whose PYTHONPATH also reaches the user modules loaded here."""
    env = dict(os.environ if env is None else env)
    paths = [str(p) for p in USER_ROOTS]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
