"""Load a user's function named in a config file, such as ``data.formatting_func: my_format.py:to_messages``.

A config file is data: naming ``os:system`` in it must not run anything. So a function can only
come from a ``.py`` file the user points at explicitly (its path, relative to the current directory
or to the config file's directory); installed modules are never imported by name. Executing that
file is the point of the option, so only name files you wrote or trust.

The rule, checked before anything is imported or run:

* the file must lie inside the current directory or the directory of a run config that was read
  (or below them; symbolic links are resolved first);
* it must not lie in an installed location: the standard library, site-packages or dist-packages
  (a virtual environment inside the project folder included), so that ``.../json/__init__.py:loads``
  is refused like ``json:loads``;
* ``FUNCTION`` must be defined at the top level of the file (``def``, an assignment or an import),
  read from its syntax tree: a wrong name is refused without running the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ConfigError

__all__ = ["load_function", "split_function_spec", "resolve_function_file", "trust_config_dir", "check_function_file"]

_CONFIG_DIRS: set[Path] = set()


def trust_config_dir(directory: str | os.PathLike) -> None:
    """Allow ``formatting_func`` files in (and below) ``directory``: the folder of a run config read
    by the CLI, whose relative paths name files beside it."""
    _CONFIG_DIRS.add(Path(directory).resolve())


def _installed_locations() -> list[Path]:
    import site
    import sysconfig

    places = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        places.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv's site module
        pass
    places.add(getattr(site, "USER_SITE", None))
    places.update(p for p in sys.path if p and os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages"))
    return [Path(p).resolve() for p in places if p]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_function_file(file: Path, name: str, option: str) -> None:
    """The rule of this module's docstring, for a resolved file, before it is imported."""
    roots = [Path.cwd().resolve(), *sorted(_CONFIG_DIRS)]
    if not any(_inside(file, root) for root in roots):
        raise ConfigError(f"{option}: {file} is outside the current directory ({roots[0]})"
                          + (f" and the config's directory ({', '.join(map(str, roots[1:]))})" if roots[1:] else "")
                          + "; a config may only name a .py file of the project it belongs to (in Python, pass "
                          "the function itself: formatting_func=f)")
    installed = next((place for place in _installed_locations() if _inside(file, place)), None)
    if installed is not None:
        raise ConfigError(f"{option}: {file} is part of an installed package or the standard library ({installed}); "
                          "a config cannot make the library import an installed module; copy the function into a "
                          "file of your project")
    import ast

    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except SyntaxError as exc:
        raise ConfigError(f"{option}: {file}:{exc.lineno}: syntax error ({exc.msg})") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{option}: cannot read {file} ({exc})") from None
    defined: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined += [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.If, ast.Try)):  # conditional definitions: accept what either branch binds
            defined += [n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            defined += [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    if name not in defined:
        functions = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))
        raise ConfigError(f"{option}: {file} defines no {name!r}; its functions: {', '.join(functions) or '(none)'}")


def split_function_spec(spec: str, option: str) -> tuple[str, str]:
    """``"dir/file.py:func"`` -> ``("dir/file.py", "func")``, or a ConfigError saying what is expected."""
    path, sep, name = str(spec).rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ConfigError(f"{option}: {spec!r} is not FILE.py:FUNCTION (e.g. my_format.py:to_messages)")
    if not path.endswith(".py"):
        raise ConfigError(f"{option}: {spec!r} does not name a .py file; give the path of the file that "
                          f"defines the function (e.g. my_format.py:{name}). Installed modules are not "
                          "imported by name from a config file")
    return path, name


def resolve_function_file(spec: str, option: str, search_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The file of ``spec``: absolute, or relative to the current directory, then to ``search_dirs``."""
    path, _ = split_function_spec(spec, option)
    candidates = [Path(path)] if os.path.isabs(path) else [Path(path), *(Path(d) / path for d in search_dirs)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise ConfigError(f"{option}: {path}: no such file (looked for {tried})")


def load_function(spec: str, option: str = "data.formatting_func",
                  search_dirs: Iterable[str | os.PathLike] = ()) -> Callable[..., Any]:
    """Import ``FILE.py`` from its path (not through ``sys.path``) and return its ``FUNCTION``."""
    _, name = split_function_spec(spec, option)
    file = resolve_function_file(spec, option, search_dirs)
    check_function_file(file, name, option)  # before anything in it runs
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"_sage_finetune_user_{file.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, file)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"{option}: cannot import {file}")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise ConfigError(f"{option}: {file}:{exc.lineno}: syntax error ({exc.msg})") from None
        except Exception as exc:
            raise ConfigError(f"{option}: importing {file} raised {type(exc).__name__}: {exc}") from exc
        sys.modules[module_name] = module  # only once it imported cleanly
    func = getattr(module, name, None)
    if func is None:
        defined = sorted(n for n, v in vars(module).items()
                         if inspect.isfunction(v) and v.__module__ == module_name and not n.startswith("_"))
        raise ConfigError(f"{option}: {file} defines no {name!r}; its functions: {', '.join(defined) or '(none)'}")
    if not callable(func):
        raise ConfigError(f"{option}: {file}: {name!r} is a {type(func).__name__}, not a function")
    return func
