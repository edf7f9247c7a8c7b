"""Load a user's function named in a config file, such as ``data.formatting_func: my_format.py:to_messages``.

A config file is data: naming ``os:system`` in it must not run anything. So a function can only
come from a ``.py`` file the user points at explicitly (its path, relative to the current directory
or to the config file's directory); installed modules are never imported by name. Executing that
file is the point of the option, so only name files you wrote or trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import ConfigError

__all__ = ["load_function", "split_function_spec", "resolve_function_file"]


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
