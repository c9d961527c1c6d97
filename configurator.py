"""
The configurator train.py, evaluate.py and bench.py share: a defaults block of plain assignments at the top of
a script (one key per line with its comment), Python config files, then --key=value overrides.
    cfg, explicit = load(argv, defaults)              # defaults <- config files <- --key=value
    print(help_text(path, title))                      # --help: every key of a defaults block, commented
A value is typed like its default (ints are accepted for floats); an unknown key, in a file or on the command
line, is one line naming it and the closest known key. Config files are Python run with the config so far in
scope (imports, helpers and comprehensions work); the plain values a file assigns are the keys it sets. Files
that set `task` (task configs) apply after the others (architecture configs), wherever they stand.
The second half is what a valid train.py config is: the value rules of its keys, the device and scan backend
it asks of this machine, and what a resume may change (the model's keys are model.ModelConfig's to check).
"""
import ast
import builtins
import contextlib
import difflib
import importlib.util
import math
import os
import re
import types

import torch

import ssm_scan
import tasks
from harness import UserError, check_device, oneline, short
from model import ModelConfig


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


def help_text(path, title, *more):
    """usage text from the defaults block of the script `path` (and of the files `more`, the first block
    between `# ----` rulers of each): each key, its default, its comment"""
    lines = [title, '']
    for block_path in (path, *more):
        lines += block_help(block_path)
    return '\n'.join(lines)


def block_help(path):
    """the help lines of the first block between `# ----` rulers in `path`: `key = value  # comment` lines
    (or `key=value,  # comment` entries of a dict) and the comment lines between them"""
    with open(path) as f:
        text = f.read()
    block = text.split('\n# ----')[1].split('\n', 1)[1]
    lines = []
    for line in block.splitlines():
        m = re.match(r"\s*(\w+) ?= ?(.+?),?\s+# (.*)", line)
        if m:
            lines.append(f"  --{m[1]}={m[2].strip()}".ljust(34) + f" {m[3]}")
        elif line.startswith('# '):
            lines.append(line[2:].rstrip())
    return lines

# -----------------------------------------------------------------------------
# train.py's keys: the values each takes, checked before anything is written

# keys that take a word besides a value of their default's type
WORDS = dict(resume=('auto',), reference_quirks=str)
# the tables themselves (not copies): a task added to tasks.TASKS is a valid name at once
CHOICES = dict(task=tasks.TASKS, lr_schedule=('constant', 'cosine'), dtype=('float32', 'bfloat16'),
               compile_mode=('default', 'reduce-overhead', 'max-autotune'))
# number keys that must be >= 1 (POSITIVE) or >= 0 (NONNEG); ints <= 2**62 (tensor sizes) or their UPPER bound
POSITIVE = '''batch_size n_dims n_points n_layer n_embd n_head n_positions d_state d_conv expand ckpt_interval
    keep_last eval_interval eval_batches log_interval curriculum_interval curriculum_dims_start
    curriculum_dims_inc curriculum_points_start curriculum_points_inc mlp_hidden tree_depth parity_k sparsity
    ddp_timeout'''.split()
NONNEG = '''max_iters keep_every micro_batch_size warmup_iters seed dt_rank grad_clip weight_decay min_lr
    noise_std'''.split()
# upper bounds (seed: manual_seed's; ddp_timeout: timedelta's)
UPPER = dict(seed=2**63 - 1, tree_depth=20, n_layer=1024, eval_batches=1000, ddp_timeout=10**7)
# the keys that only a model with Mamba mixers uses
MAMBA_KEYS = ('d_state', 'd_conv', 'expand', 'dt_rank', 'mamba_init')
# keys that may differ between a checkpoint and the resumed run without changing what is trained
RESUME_FREE = set('''out_dir resume allow_config_change max_iters ckpt_interval keep_last keep_every
    eval_interval eval_batches log_interval wandb_log wandb_project device compile compile_mode scan_backend
    ddp_timeout'''.split())


def check_ranges(cfg):
    """the choice and range checks of train.py's own keys; a UserError naming the first problem"""
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise UserError(f"{key}={short(cfg[key])} is not one of {', '.join(allowed)}")
    for key in POSITIVE + NONNEG:
        lo = int(key in POSITIVE)
        hi = UPPER.get(key, math.inf if type(cfg[key]) is float else 2**62)  # ints: tensor sizes
        if not (lo <= cfg[key] <= hi and cfg[key] < math.inf):  # also false for nan; no float() of huge ints
            bound = (f'in [{lo}, {hi}]' if key in UPPER
                     else f'>= {lo}' + (' (and <= 2**62)' if hi < math.inf else ''))
            raise UserError(f"{key} must be {bound}, got {short(cfg[key])}")
    checks = (('learning_rate', 0 < cfg['learning_rate'] < math.inf, 'positive and finite'),
              ('ffn_mult', 0 < cfg['ffn_mult'] < math.inf, 'positive and finite'),
              ('beta1', 0 <= cfg['beta1'] < 1, 'in [0, 1)'),
              ('beta2', 0 <= cfg['beta2'] < 1, 'in [0, 1)'),
              ('n_points', cfg['n_points'] >= 2, '>= 2 (the score needs a prediction made after an example)'))
    for key, ok, what in checks:
        if not ok:
            raise UserError(f"{key} must be {what}, got {short(cfg[key])}")


def check_consistency(cfg, world_size):
    """the checks of train.py's keys against each other and the number of processes"""
    if cfg['keep_every'] % cfg['ckpt_interval']:
        raise UserError(f"keep_every={cfg['keep_every']} must be a multiple of "
                        f"ckpt_interval={cfg['ckpt_interval']} "
                        "(checkpoints exist only at multiples of ckpt_interval)")
    check_device(cfg['device'], auto=True, present=False)
    per_rank = cfg['batch_size'] // world_size
    if cfg['batch_size'] % world_size or per_rank % (cfg['micro_batch_size'] or per_rank):
        raise UserError(f"batch_size={cfg['batch_size']} must split evenly over {world_size} process(es) "
                        f"and then into micro-batches of micro_batch_size={cfg['micro_batch_size']}")
    if cfg['pos'] == 'learned' and cfg['n_points'] > cfg['n_positions']:
        raise UserError(f"n_points={cfg['n_points']} exceeds the learned position table "
                        f"(n_positions={cfg['n_positions']})")


def resolve_device(cfg):
    """the device to run on, after checking it exists and can run the requested scan backend"""
    dev = check_device(cfg['device'], auto=True)
    if cfg['scan_backend'] == 'triton' and not dev.startswith('cuda') and not ssm_scan.INTERPRET:
        raise UserError("scan_backend='triton' needs a CUDA device "
                        "(or TRITON_INTERPRET=1 for the interpreter); use scan_backend='auto'")
    if cfg['scan_backend'] == 'triton' and not ssm_scan.HAS_TRITON:
        raise UserError("scan_backend='triton' but triton is not installed")
    if cfg['scan_backend'] == 'cpu' and dev != 'cpu':
        raise UserError(f"scan_backend='cpu' is the CPU kernel, but the run is on {dev}; "
                        "use scan_backend='auto'")
    mamba = ModelConfig.from_dict(cfg).uses_mamba()
    scan = ssm_scan.resolve_backend(cfg['scan_backend'], torch.device(dev))
    if cfg['compile'] and mamba and scan == 'torch':
        raise UserError("compile=True needs the fused scan (scan_backend='auto', 'cpu' or 'triton'): the "
                        "torch backend's backward cannot run inside the compiled graph")
    if cfg['wandb_log'] and importlib.util.find_spec('wandb') is None:
        raise UserError("wandb_log=True but wandb is not installed (pip install wandb), "
                        "or leave wandb_log off")
    return dev


def resume_free(saved):
    """the keys a resume of a run with config `saved` may change without changing what is trained"""
    free = set(RESUME_FREE)
    if saved.get('lr_schedule') == 'cosine':
        free.discard('max_iters')  # the cosine decays to max_iters: changing it changes the run
    # (a saved config the model refuses is judged elsewhere)
    with contextlib.suppress(TypeError, ValueError, KeyError):
        if not ModelConfig.from_dict(saved).uses_mamba():
            free.update(MAMBA_KEYS)  # a model without Mamba is the same model whatever these say
    return free


def resume_config(cfg, explicit, ckpt, where, world, defaults):
    """the config a resumed run continues with: the checkpoint's, plus the keys given now. Refuses a change of
    what is trained (model, data, optimizer keys, the number of processes) unless allow_config_change."""
    saved = {k: coerce(k, v, defaults[k], where, WORDS.get(k, ())) for k, v in ckpt['config'].items()
             if k in defaults}
    free = resume_free(saved)
    changed = sorted(f"{k}: {short(saved.get(k))} -> {short(cfg[k])}"
                     for k in explicit - free if saved.get(k) != cfg[k])
    trained_world = ckpt.get('world_size')  # (checkpoints before it was recorded: unknown)
    if trained_world is not None and trained_world != world:
        changed.append(f"processes: {trained_world} -> {world} (each process samples its own prompts, "
                       "so the data stream would change; resume with the same torchrun --nproc_per_node)")
    if changed and not cfg['allow_config_change']:
        raise UserError(f"resume would change the run in {cfg['out_dir']} ({'; '.join(changed)}); "
                        "--allow_config_change=True does it")
    # out_dir: where it is now
    return {**defaults, **saved, **{k: cfg[k] for k in explicit}, 'out_dir': cfg['out_dir']}
