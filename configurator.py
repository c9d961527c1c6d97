"""
The configurator train.py, evaluate.py and bench.py share: a defaults block of plain assignments at the top of
a script (one key per line with its comment), Python config files, then --key=value overrides.
    cfg, explicit = load(argv, defaults)              # defaults <- config files <- --key=value
    print(help_text(path, title))                      # --help: every key of a defaults block, commented
A value is typed like its default (ints are accepted for floats); an unknown key, in a file or on the command
line, is one line naming it and the closest known key. Config files are Python run with the config so far in
scope (imports, helpers and comprehensions work); the plain values a file assigns are the keys it sets. Files
that set `task` (task configs) apply after the others (architecture configs), wherever they stand.
"""
import ast
import builtins
import difflib
import os
import re
import types

from harness import UserError, oneline, short


def defaults_of(namespace):
    """a script's defaults block as a dict: its str, int, float and bool globals not starting with '_'"""
    plain = (int, float, bool, str)
    return {k: v for k, v in namespace.items() if not k.startswith('_') and type(v) in plain}


def parse_value(key, raw, default):
    """the value of --key=raw, typed like the default: text keys take the text as typed (--out_dir=runs/1),
    the others a Python literal (--n_embd=64, --learning_rate=1e-3, --compile=True)."""
    if type(default) is str:
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        digits = raw.strip().lstrip('+-')
        if digits.isdigit():  # Python refuses integer literals of more than 4,300 digits
            raise UserError(f"--{key}: a {len(digits):,}-digit number is out of range")
        return raw  # not a literal: coerce() says it has the wrong type


def coerce(key, value, default, where, words=()):
    """value as the type of default (an int where a float is expected is that float); `words` are the values
    of another type the key also takes (resume: 'auto'), or that type itself (reference_quirks: a str)"""
    if value in words if isinstance(words, tuple) else type(value) is words:
        return value
    if type(value) is int and type(default) is float:
        value = float(value)  # --learning_rate=1 means 1.0
    if type(value) is not type(default):
        alternatives = (''.join(f" or {w!r}" for w in words) if isinstance(words, tuple)
                        else f" or a {words.__name__}")
        raise UserError(f"{where}: {key} must be of type {type(default).__name__} (like {default!r})"
                        f"{alternatives}, got {short(value)}")
    return value


def unknown_key(key, where, defaults):
    close = difflib.get_close_matches(key, defaults, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ''
    return UserError(f"unknown config key {short(key)} in {where}{hint}")


def assigned_names(tree):
    """the names a module's top level assigns, compound statements included, not inside a def or class"""
    assigned = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            assigned.add(node.id)
        pending.extend(ast.iter_child_nodes(node))
    return assigned


def parse_file(path, what='config file'):
    """a Python file's syntax tree (read, not run), or one line saying why there is none"""
    if os.path.isdir(path):
        raise UserError(f"{what} {short(path)} is a directory (the presets are files in configs/)")
    if not os.path.isfile(path):
        raise UserError(f"{what} {short(path)} not found (the presets are in configs/)")
    try:
        with open(path) as f:
            return ast.parse(f.read(), path)
    except (SyntaxError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} failed to run: {type(e).__name__}: {oneline(e)}")


def read_config_file(path):
    """(path, compiled code, the names its top level assigns): read before any file runs, so the task files
    can be ordered after the architecture files"""
    tree = parse_file(path)
    # (the config key 'compile' shadows the builtin)
    return path, builtins.compile(tree, path, 'exec'), assigned_names(tree)


def run_config_file(path, code, assigned, cfg):
    """the keys a config file sets. It runs as a module with the config so far in scope (the defaults and the
    files before it), so `curriculum_points_start = 2 * n_dims + 1` works; its plain values that it assigns
    (or changes) are the keys it sets."""
    ns = dict(cfg)
    try:
        exec(code, ns)
    except (Exception, SystemExit) as e:
        hint = (" (a config file sees the defaults and the keys of the files before it)"
                if isinstance(e, NameError) else '')
        raise UserError(f"config file {path} failed to run: {type(e).__name__}: {oneline(e)}{hint}")
    return {k: v for k, v in ns.items()
            if (k in assigned or k not in cfg or v is not cfg[k])
            and not (k.startswith('_') or callable(v) or isinstance(v, types.ModuleType))}


def load(argv, defaults, sources=None, words=None, script='train.py'):
    """defaults <- config files (the others, then files that set `task`) <- --key=value overrides.
    Returns (cfg, the keys set explicitly); a `sources` dict gets where each key's value came from; `words`
    maps a key to the values of another type it also takes."""
    words = words or {}
    cfg = dict(defaults)
    sources = {} if sources is None else sources
    sources.update(dict.fromkeys(defaults, f"{script}'s defaults"))
    overrides = [a for a in argv if a.startswith('-')]
    files = [read_config_file(a) for a in argv if not a.startswith('-')]
    files.sort(key=lambda item: 'task' in item[2])  # stable: architecture files first, task files after
    settings = []
    for path, code, assigned in files:
        items = run_config_file(path, code, assigned, cfg)
        for key, value in items.items():
            if key not in defaults:
                raise unknown_key(key, path, defaults)
            cfg[key] = coerce(key, value, defaults[key], path, words.get(key, ()))
            sources[key] = path
        settings += [(key, cfg[key], path) for key in items]
    for arg in overrides:
        key, eq, raw = arg[2:].partition('=') if arg.startswith('--') else (arg, '', '')
        if not arg.startswith('--') or not eq:
            raise UserError(f"{short(arg)}: options are written --key=value "
                            f"(python {script} --help lists the keys)")
        if key not in defaults:
            raise unknown_key(key, 'the command line', defaults)
        settings.append((key, parse_value(key, raw, defaults[key]), 'the command line'))
    for key, value, where in settings:
        cfg[key] = coerce(key, value, defaults[key], where, words.get(key, ()))
        sources[key] = where
    return cfg, {key for key, _, _ in settings}


def help_text(path, title):
    """usage text from the defaults block of the script `path`: each key, its default, its comment"""
    lines, inside = [title, ''], False
    with open(path) as f:
        for line in f:
            if line.startswith('# ----'):
                if inside:
                    break
                inside = True
                continue
            m = re.match(r"(\w+) = (.+?)\s+# (.*)", line)
            if inside and m:
                lines.append(f"  --{m[1]}={m[2].strip()}".ljust(34) + f" {m[3]}")
            elif inside and line.startswith('# '):
                lines.append(line[2:].rstrip())
    return '\n'.join(lines)
