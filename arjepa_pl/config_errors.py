"""Errors of the configuration parser and of the constructors it calls, turned into ConfigErrors that
name the full key, the value given and what is allowed, in a few lines.

Two sources, one result:
- jsonargparse's parse errors (mistyped keys, wrong types, YAML syntax, unknown classes) come as a
  nested text: `Parser key "model"` > `Problem with given class_path '...'` > the problem. The chain
  of keys is the key; a mistyped name gets a "did you mean" from the names that class accepts.
- A constructor's ValueError (every object checks its own arguments: `batch_size must be >= 1`)
  names the argument but not where it sits in the config. The traceback says which class raised it
  and with which arguments; the config node of that class with those arguments gives the key, and
  the argument the message names first gives the last part of it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import traceback
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException

from arjepa_pl.errors import _UNSET, ConfigError, UserError

# Exceptions a constructor raises for a value it refuses (a missing input file included). Anything else
# raised while building the objects is a bug and keeps its traceback.
CONSTRUCTOR_VALUE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                            MisconfigurationException)
# Frames of the machinery that calls constructors, not of a constructor.
_CALLER_FILES = (f"{Path('jsonargparse')}", f"{Path('lightning', 'pytorch', 'cli.py')}")


# -- did you mean ------------------------------------------------------------------------------------

def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.75)
    return f"did you mean {close[0]}?" if close else None


def accepted_arguments(cls: type) -> list[str]:
    """The init arguments of `cls`, following **kwargs into its bases the way jsonargparse does."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def import_class(class_path: str) -> Optional[type]:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


# -- parse errors --------------------------------------------------------------------------------------

_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":?\s*(.*)$')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':\s*(.*)$")
_NOT_ACCEPTED = re.compile(r"^(?:Option|Key) '([^']+)' is not (?:accepted|expected)")
_EXPECTED = re.compile(r"^Expected an? (.+?)\. Got value: (.*)$")
_NO_ATTRIBUTE = re.compile(r"^module '([\w.]+)' has no attribute '(\w+)'")
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
          "Expected a <class 'NoneType'>")


def _readable_type(text: str) -> str:
    text = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", text)
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    return f"one of {literal.group(1)}" if literal else f"a value of type {text}"


def _as_written(text: str) -> Any:
    """A value from the command line as YAML reads it (5 is a number, abc a string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _given_value(message: str, name: str) -> Any:
    """The value jsonargparse echoes for `name` in its 'Given value:' line, when it does."""
    found = re.search(rf"'{re.escape(name)}': ([^,}}]+)", message)
    return _as_written(found.group(1).strip()) if found else _UNSET


def from_parse_error(message: str, argv: list[str], keys: Iterable[str]) -> ConfigError:
    """A ConfigError from a jsonargparse ArgumentError's message; `keys`: what the parser accepts."""
    message = str(message)
    first = message.strip().splitlines()[0] if message.strip() else message
    if first.startswith("unrecognized arguments:"):
        given = first.split(":", 1)[1].split()
        key = given[0].lstrip("-").split("=")[0]
        value = _as_written(given[1]) if len(given) > 1 and not given[1].startswith("--") else _UNSET
        return ConfigError(key, value, "no such key", did_you_mean(key, keys))
    found = re.match(r"Subcommand '\w+' does not accept option '([^']+)'", first)
    if found:
        key = found.group(1)
        return ConfigError(key, _UNSET, "no such key", did_you_mean(key, keys))
    found = re.match(r"argument subcommand: invalid choice: '([^']*)' \(choose from (.*)\)", first)
    if found:
        choices = re.findall(r"'(\w+)'", found.group(2))
        return ConfigError("subcommand", found.group(1), f"choose from {', '.join(choices)}",
                           did_you_mean(found.group(1), choices))
    if first.startswith("Problems parsing config"):
        located = locate_yaml_error(argv)
        if located is not None:
            return located
    return _from_nested_message(message, keys)


def _from_nested_message(message: str, keys: Iterable[str]) -> ConfigError:
    path: list[str] = []
    cls_path: Optional[str] = None
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_NOISE):
            continue
        if (found := _PARSER_KEY.match(line)):
            path.append(found.group(1))
            line = found.group(2)
            if not line:
                continue
        if (found := _CLASS_PATH.match(line)):
            cls_path = found.group(1)
            path.append("init_args")
            line = found.group(2)
            if not line:
                continue
        key = ".".join(path).replace("init_args.init_args", "init_args")
        if (found := _NOT_ACCEPTED.match(line)):
            name = found.group(1)
            cls = import_class(cls_path) if cls_path else None
            candidates = accepted_arguments(cls) if cls else [k.rpartition(".")[2] for k in keys]
            return ConfigError(f"{key}.{name}" if key else name, _given_value(message, name), "no such key",
                               did_you_mean(name, candidates))
        if (found := _EXPECTED.match(line)):
            return ConfigError(key, _as_written(found.group(2)), f"expected {_readable_type(found.group(1))}")
        if (found := _NO_ATTRIBUTE.match(line)) and cls_path:
            module = importlib.import_module(found.group(1))
            base = key.removesuffix(".init_args")
            return ConfigError(f"{base}.class_path", cls_path, f"{found.group(1)} has no class {found.group(2)}",
                               did_you_mean(found.group(2), [n for n in dir(module) if not n.startswith("_")]))
        if line.startswith("File does not exist"):
            return ConfigError(key or "config", _UNSET, line)
        key = key.removesuffix(".init_args")
        return ConfigError(key or "configuration", _UNSET, line)
    return ConfigError("configuration", _UNSET, message.strip().splitlines()[0] if message.strip() else "invalid")


def config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def locate_yaml_error(argv: list[str]) -> Optional[ConfigError]:
    """file:line:column and the problem of the first --config file that is not valid YAML."""
    for name in config_files(argv):
        try:
            yaml.safe_load(Path(name).read_text())
        except OSError:
            continue
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
            return ConfigError(where, _UNSET, f"YAML syntax: {' '.join(filter(None, (e.context, e.problem)))}")
        except yaml.YAMLError as e:
            return ConfigError(name, _UNSET, f"YAML syntax: {e}")
    return None


# -- constructor errors --------------------------------------------------------------------------------

def _original(exc: BaseException) -> BaseException:
    """The first exception of a chain (jsonargparse re-raises a constructor's error inside its own)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def constructor_failure(exc: BaseException) -> Optional[tuple[type, dict[str, Any]]]:
    """(class, arguments) of the constructor that raised `exc`: the outermost __init__ in its
    traceback that the parser machinery called."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name != "__init__" or any(part in code.co_filename for part in _CALLER_FILES):
            continue
        obj = frame.f_locals.get("self")
        if obj is None:
            continue
        info = inspect.getargvalues(frame)
        arguments = {name: info.locals.get(name) for name in info.args if name != "self"}
        if info.keywords and isinstance(info.locals.get(info.keywords), dict):
            arguments.update(info.locals[info.keywords])
        return type(obj), arguments
    return None


def _nodes(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(key, node) of every namespace in the config."""
    if isinstance(node, Namespace):
        yield path, node
        for name, value in vars(node).items():
            yield from _nodes(value, f"{path}.{name}" if path else name)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{path}[{i}]")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) in (int, float, str, bool, type(None)) and a == b


def find_class_node(config: Namespace, cls: type, arguments: dict[str, Any]) -> Optional[tuple[str, Namespace]]:
    """(key of the arguments, arguments) of the config node built as `cls(**arguments)`: a node with
    that class_path (its init_args), else a plain namespace of that class's fields (a dataclass in a
    list, like a mask configuration); of several, the one with the most arguments equal."""
    accepted = set(accepted_arguments(cls))
    best, best_score = None, (-1, -1)
    for path, node in _nodes(config, ""):
        if "class_path" in node:
            if import_class(node.class_path) is not cls:
                continue
            candidate, kind = (f"{path}.init_args", node.get("init_args") or Namespace()), 1
        elif path and node.keys() and set(node.keys()) <= accepted:
            candidate, kind = (path, node), 0
        else:
            continue
        values = candidate[1]
        score = (kind, sum(_same(values.get(name), value) for name, value in arguments.items() if name in values))
        if score > best_score:
            best, best_score = candidate, score
    return best


def _named_first(message: str, names: Iterable[str]) -> Optional[str]:
    """The name the message mentions first (as a whole word; the longer one on a tie)."""
    spots = [(m.start(), -len(name), name) for name in set(names)
             if (m := re.search(rf"(?<![\w.])(?:\w+\.)*{re.escape(name)}(?!\w)", message))]
    return min(spots)[2] if spots else None


def _leaves(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(key, last name, value) of every plain value under a config node."""
    if isinstance(node, Namespace):
        for name, value in vars(node).items():
            yield from _leaves(value, f"{path}.{name}") if isinstance(value, (Namespace, list)) else \
                [(f"{path}.{name}", name, value)]
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")


def from_constructor_error(exc: BaseException, config: Namespace, trainer_class: type) -> Optional[ConfigError]:
    """A ConfigError naming the key of the value a constructor refused, or None when `exc` is not such an error."""
    if isinstance(exc, UserError):
        return exc if isinstance(exc, ConfigError) else None
    original = _original(exc)
    if not isinstance(original, CONSTRUCTOR_VALUE_ERRORS):
        return None
    failure = constructor_failure(original)
    if failure is None:
        return None
    cls, arguments = failure
    if issubclass(cls, trainer_class):
        path, init_args = "trainer", config.get("trainer") or Namespace()
    else:
        found = find_class_node(config, cls, arguments)
        if found is None:
            return ConfigError(cls.__name__, _UNSET, str(original))
        path, init_args = found
    if isinstance(original, ConfigError):  # raised with a key relative to the object
        return original.within(path)
    why = str(original).strip() or type(original).__name__
    name = _named_first(why, list(arguments) + list(init_args.keys()))
    if name is not None:
        value = init_args.get(name, arguments.get(name))
        return ConfigError(f"{path}.{name}", value, why)
    # Not an argument of its own: maybe a value nested under it (a task's num_classes, a mask's scale).
    leaves = list(_leaves(init_args, path))
    name = _named_first(why, [leaf[1] for leaf in leaves])
    if name is not None:
        matches = [leaf for leaf in leaves if leaf[1] == name]
        key, _, value = next((leaf for leaf in matches if str(leaf[2]) in why), matches[0])
        return ConfigError(key, value, why)
    return ConfigError(path.removesuffix(".init_args"), _UNSET, why)


def from_list_item_error(config: Namespace, trainer_class: type) -> Optional[ConfigError]:
    """The ConfigError of the item of a Trainer list (loggers, callbacks) whose constructor failed.

    jsonargparse reports a failing item of a list of classes as "does not validate against any of the
    Union subtypes", without the constructor's error; building each item alone finds it again."""
    for path, node in _nodes(config, ""):
        if not path.startswith(("trainer.logger[", "trainer.callbacks[")) or "class_path" not in node:
            continue
        cls = import_class(node.class_path)
        if cls is None:
            continue
        try:
            cls(**vars(node.get("init_args") or Namespace()))
        except CONSTRUCTOR_VALUE_ERRORS as e:
            e.__context__ = None  # raised while the union error is handled: that one is not its cause
            return from_constructor_error(e, config, trainer_class)
        except Exception:  # noqa: BLE001 — an item the parser would build differently (nested classes): not this one
            continue
    return None
