"""
Run a sweep (arms x seeds of train.py runs) in parallel lanes, resumably, then evaluate every finished run
into one table: per arm the mean score over seeds with its 95% CI, and the difference from a reference arm.
    python sweep.py configs/gpt2.py configs/linear_regression.py --vary=norm=layernorm,rmsnorm --seeds=1,2 \
        --max_iters=1000 --out=out/ln_vs_rms
    python sweep.py configs/study/tree.py              # a spec file (below); the same command continues it
    python sweep.py configs/study/tree.py --dry-run    # the runs, where each stands, their train.py commands
    python sweep.py configs/sweeps/paper.py --slurm    # <out>/sweep.sbatch: a SLURM array, one task per run
    python sweep.py configs/sweeps/paper.py --cost     # projected GPU-hours, from the steps/s runs logged
    python sweep.py configs/sweeps/paper.py --arms='gpt2-*' --eval-only   # some arms, evaluated as they stand
    python sweep.py --help
A spec file is plain Python assignments (helpers and names starting with _ are not read):
    configs = ['configs/gpt2.py', 'configs/linear_regression.py']   # base config files, in train.py's order
    overrides = dict(max_iters=1000, n_layer=4)                        # --key=value of every run
    arms = dict(ln=dict(norm='layernorm'), rms=dict(norm='rmsnorm'))   # name -> its overrides; an arm may add
                                                                       # its own 'configs' and 'seeds'
    vary = dict(norm=['layernorm', 'rmsnorm'])   # instead of arms: the grid, one arm per combination
    seeds = [1, 2]                               # training seeds of every arm (absent: the config's seed)
    out = 'out/ln_vs_rms'                        # the sweep's directory: sweep.json, table.md/.csv/.png
    run_dir = '{out}/{arm}/s{seed}'              # each run's directory (fields out, arm, seed)
    evaluate = dict(n_prompts=6400)              # evaluate.py options (a list: several calls, the first
                                                 # one scores the table; None: no evaluation)
    reference = 'ln'                             # the arm the differences are taken from (default: the first)
    compare = [('rms', 'ln')]                    # the comparisons, (arm, minus arm) each (default: every arm
                                                 # against the reference)
    margin = 0.05                                # the equivalence margin of the verdicts (below the table)
    fail_below = 0.1                             # a run scoring below this failed to learn
    sbatch = dict(time='48:00:00', gres='gpu:1')  # #SBATCH lines of --slurm (None drops one)
Positional files that set none of these are train.py config files (added after the spec's); --key=value
with a train.py key goes to every run, after the spec's overrides; --evaluate.KEY=VALUE sets an evaluate.py
option. Paths are relative to the working directory, as train.py's are (run it from the repository root).
Each run trains with `python train.py ... --out_dir=<run dir> --resume=auto` (new, resumed or nothing to do;
its output in <run dir>/train.out). Before any run starts, every run's resolved config is checked against
its directory: a run trained with other keys is refused by name, never mixed. Exit status: 0 every run
finished (and evaluated), 1 a run failed or is unfinished (or the evaluation failed), 2 bad input (one line,
nothing written or started), 128 + N stopped by signal N (each run checkpointed: the same command continues).
"""
import contextlib
import ctypes
import fcntl
import fnmatch
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types

from tqdm import tqdm

import configurator
import train
from harness import UserError, atomic_write, oneline, save_figure, short

# -----------------------------------------------------------------------------
# defaults, each overridable with --key=value (a train.py key, --max_iters=1000, goes to every run instead)
out = ''                     # the sweep's directory (required: here or `out = ...` in the spec)
run_dir = '{out}/{arm}/s{seed}'  # each run's directory; its fields: out, arm, seed
vary = ''                    # the grid, KEY=V1,V2 (give --vary again for a product): one arm per combination
seeds = ''                   # training seeds, e.g. 1,2,3 ('' = the spec's, else each config's own seed)
ref = ''                     # the reference arm of the differences ('' = the spec's reference, or the 1st)
arms = ''                    # only these arms: names or patterns, e.g. gpt2-*,mamba-linear* ('' = every arm)
jobs = 0                     # runs at once; 0 = one per GPU on a GPU machine, else one per CPU core
threads = 0                  # OMP_NUM_THREADS of each run; 0 = the CPU cores / jobs
evaluate = True              # evaluate the finished runs and write the table (--evaluate.KEY=VALUE: options)
fail_below = 0.1             # a run scoring below this failed to learn (counted per arm, kept in the mean)
margin = 0.05                # a difference whose 95% CI lies within +-margin is "level" (the verdict rule)
dry_run = False              # list the runs, where each stands and its command; write and start nothing
slurm = False                # write <out>/sweep.sbatch, a SLURM array of one task per run; start nothing
cost = False                 # the projected GPU-hours of each run's max_iters, from the steps/s it logged
eval_only = False            # train nothing: evaluate the finished runs, even mid-sweep, and write the table
# -----------------------------------------------------------------------------
OPTIONS = {k: v for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)}
FLAGS = dict(dry_run=True, slurm=True, cost=True, eval_only=True)  # options that may be given bare (--slurm)
# the names a spec file may set (a file that sets any of them is a spec, not a config)
SPEC_KEYS = ('configs', 'overrides', 'arms', 'vary', 'seeds', 'out', 'run_dir', 'evaluate', 'reference',
             'compare', 'margin', 'fail_below', 'sbatch')
# train.py keys the sweep sets itself
OWN_KEYS = ('out_dir', 'resume')
SBATCH = dict(job_name='sweep', time='48:00:00', gres='gpu:1', cpus_per_task=4)
# two-sided 95% quantiles of Student's t by degrees of freedom (no scipy); see t95()
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
       29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HERE = os.path.dirname(os.path.abspath(__file__))
PILOT_STEPS = 500            # --cost with no runs yet: the pilot trains every run this many steps
tqdm.monitor_interval = 0    # no monitor thread: the children are forked (preexec_fn)

# -----------------------------------------------------------------------------
# statistics over seeds

def t95(df):
    """the two-sided 95% quantile of Student's t at df degrees of freedom. A fractional df (Welch's) is
    floored and a df between the table's entries takes the entry below: both widen the interval
    (conservative)."""
    if not df >= 1:
        raise ValueError(f"t95 needs df >= 1, got {df}")
    return T95[max(d for d in T95 if d <= math.floor(df))]


def mean_ci(values):
    """dict(mean, lo, hi, n, df) of the mean of values, its 95% CI by Student's t (None for one value)"""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return dict(mean=mean, lo=None, hi=None, n=n, df=None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return dict(mean=mean, lo=mean - half, hi=mean + half, n=n, df=n - 1)


def paired_diff(a, b):
    """a - b over the seeds both hold ({seed: score} each): the mean difference and its 95% CI, paired t"""
    common = sorted(set(a) & set(b))
    return dict(mean_ci([a[s] - b[s] for s in common]), test='paired')


def welch_diff(a, b):
    """mean(a) - mean(b) of two lists of scores and its 95% CI by Welch's t (df floored)"""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        df = na + nb - 2  # no spread at all: the interval is the point whatever the df
    else:
        df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = t95(df) * math.sqrt(se2)
    seeds = f"{na} and {nb}" if na != nb else f"{na}"
    return dict(mean=ma - mb, lo=ma - mb - half, hi=ma - mb + half, n=min(na, nb), df=df, test='Welch',
                seeds=seeds)


def difference(a, b):
    """arm minus reference ({seed: score} each): paired by seed when both ran the same seeds, Welch's t
    otherwise; no CI when either side has one seed"""
    if set(a) == set(b) and len(a) >= 2:
        return paired_diff(a, b)
    if len(a) >= 2 and len(b) >= 2:
        return welch_diff(list(a.values()), list(b.values()))
    mean = sum(a.values()) / len(a) - sum(b.values()) / len(b)
    return dict(mean=mean, lo=None, hi=None, n=min(len(a), len(b)), df=None, test='one seed: no CI')


def verdict(d, margin):
    """the one rule every comparison is read by, from the difference's 95% CI: 'different' when it excludes 0,
    'level' when it lies within +-margin, 'undecided' otherwise (more seeds may decide it)"""
    if d is None or d['lo'] is None:
        return 'no CI (one seed)'
    if d['lo'] > 0 or d['hi'] < 0:
        return 'different'
    if -margin <= d['lo'] and d['hi'] <= margin:
        return 'level'
    return 'undecided'


def _binomial_tail(k, n, p):  # P(X >= k) for X ~ Binomial(n, p)
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def rate_ci(k, n):
    """the exact (Clopper-Pearson) 95% interval of a rate from k events in n trials, by bisection: 0 of 3
    allows up to 0.708, 0 of 5 up to 0.522"""
    def solve(f):  # the p in [0, 1] where the increasing function f crosses 0
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2
    low = 0.0 if k == 0 else solve(lambda p: _binomial_tail(k, n, p) - 0.025)
    high = 1.0 if k == n else solve(lambda p: 0.025 - (1 - _binomial_tail(k + 1, n, p)))
    return low, high


def trend(curves, last=3):
    """the slope of the score over each run's last `last` scored checkpoints (least squares, per 1,000 steps),
    mean over runs with its 95% CI: 'rising' / 'falling' when the CI excludes 0, else 'flat'; None without two
    runs of `last` checkpoints each"""
    slopes = []
    for curve in curves:
        pts = [(step / 1000, v) for step, v in curve if v is not None and step is not None][-last:]
        if len(pts) < last:
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        slopes.append(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts))
    if len(slopes) < 2:
        return None
    ci = mean_ci(slopes)
    word = 'rising' if ci['lo'] > 0 else 'falling' if ci['hi'] < 0 else 'flat'
    return dict(ci, word=word)

# -----------------------------------------------------------------------------
# the command line and the spec, all checked before anything is written

def parse_argv(argv):
    """(files, sweep options, [(train key, raw)], {evaluate key: raw}) from the command line"""
    opts = dict(OPTIONS, vary=[], given=set())
    files, overrides, eval_opts = [], [], {}
    for arg in argv:
        if not arg.startswith('-'):
            files.append(arg)
            continue
        key, eq, raw = arg[2:].partition('=') if arg.startswith('--') else (arg, '', '')
        key = key.replace('-', '_') if key.replace('-', '_') in OPTIONS else key
        if not arg.startswith('--') or not (eq or key in FLAGS):
            raise UserError(f"{short(arg)}: options are written --key=value (python sweep.py --help)")
        if key.startswith('evaluate.'):
            eval_opts[key[len('evaluate.'):]] = raw
        elif key == 'vary':
            opts['vary'].append(raw)
        elif key in OPTIONS:
            opts[key] = parse_option(key, raw if eq else 'True')
            opts['given'].add(key)
        elif key in OWN_KEYS:
            raise UserError(f"--{key}: the sweep sets it for each run (choose the directories with --out and "
                            "run_dir)")
        elif key in train.DEFAULTS:
            overrides.append((key, raw))
        else:
            raise unknown(key, 'the command line', list(train.DEFAULTS) + list(OPTIONS))
    return files, opts, overrides, eval_opts


def parse_option(key, raw):
    default = OPTIONS[key]
    value = train.parse_value(key, raw, default)
    if type(value) is int and type(default) is float:
        value = float(value)
    if type(value) is not type(default):
        raise UserError(f"--{key} must be of type {type(default).__name__} (like {default!r}), "
                        f"got {short(raw)}")
    if key in ('jobs', 'threads') and value < 0:
        raise UserError(f"--{key} must be >= 0, got {value}")
    return value


def unknown(key, where, known=None):
    return configurator.unknown_key(key, where, known or train.DEFAULTS)


def typed(key, value, where):
    """a train.py key's value as train.py would type it: raw text from a command line, or a spec's value"""
    if key in OWN_KEYS:
        raise UserError(f"{where}: {key} is set by the sweep for each run (use out and run_dir)")
    if key not in train.DEFAULTS:
        raise unknown(key, where)
    if type(value) is str and type(train.DEFAULTS[key]) is not str:
        value = train.parse_value(key, value, train.DEFAULTS[key])
    return train.coerce(key, value, train.DEFAULTS[key], where)


def as_arg(key, value):
    """--key=value as train.py reads it back to the same value (text as is, the rest as a literal)"""
    return f"--{key}={value if type(value) is str else repr(value)}"


def parse_seeds(value, where):
    items = value.split(',') if type(value) is str else value
    if type(items) not in (list, tuple) or not items or not all(str(s).strip() for s in items):
        raise UserError(f"{where}: seeds must be a list of integers, got {short(value)}")
    seeds_ = []
    for s in items:
        text = s.strip() if type(s) is str else s
        if type(text) is str and re.fullmatch(r'[+]?\d+', text):
            text = int(text)
        if type(text) is not int:
            raise UserError(f"{where}: seeds must be integers, got {short(s)}")
        seeds_.append(text)
    if len(set(seeds_)) < len(seeds_):
        raise UserError(f"{where}: seeds {short(value)} repeat a seed")
    return seeds_


def file_assigns(path):
    """the names a Python file's top level assigns (read, not run: a config file may need train.py's keys in
    scope to run)"""
    return configurator.assigned_names(configurator.parse_file(path, 'spec or config file'))


def read_spec(path):
    """the names a spec file sets (run as a module, as train.py runs a config); None for a config file"""
    if not file_assigns(path) & set(SPEC_KEYS):
        return None
    ns = {}
    try:
        with open(path) as f:
            exec(compile(f.read(), path, 'exec'), ns)
    except (Exception, SystemExit) as e:
        raise UserError(f"spec {path} failed to run: {type(e).__name__}: {oneline(e)}")
    ns = {k: v for k, v in ns.items()
          if not (k.startswith('_') or callable(v) or isinstance(v, types.ModuleType))}
    bad = sorted(set(ns) - set(SPEC_KEYS))
    if bad:
        hint = ' (train.py keys go in overrides)' if set(bad) & set(train.DEFAULTS) else ''
        raise UserError(f"spec {path}: unknown name(s) {', '.join(bad)}{hint}; a spec sets "
                        f"{', '.join(SPEC_KEYS)}")
    return ns



def file_list(value, where):
    items = [value] if type(value) is str else value
    if type(items) not in (list, tuple) or not all(type(p) is str for p in items):
        raise UserError(f"{where}: configs must be a list of config file paths, got {short(value)}")
    return list(items)


def grid(vary_items, where):
    """[(arm name, [(key, value)])]: the cartesian product of [(key, [values], raw?)]"""
    axes = []
    for key, values, raw in vary_items:
        if key != 'configs' and key not in train.DEFAULTS:
            raise unknown(key, where)
        if key in OWN_KEYS:
            raise UserError(f"{where}: {key} is set by the sweep for each run")
        if not values:
            raise UserError(f"{where}: empty grid: {key} has no values")
        axis = []
        for v in values:
            if key == 'configs':
                paths = file_list(v, where)
                axis.append(('+'.join(os.path.basename(p)[:-3] if p.endswith('.py') else p for p in paths),
                             (key, paths)))
                continue
            value = typed(key, v, where)
            text = v if raw else (value if type(value) is str else repr(value))
            axis.append((text if type(value) is str else f"{key}={text}", (key, value)))
        axes.append(axis)
    combos = itertools.product(*axes)
    return [('-'.join(name for name, _ in combo), [kv for _, kv in combo]) for combo in combos]


def load_spec(argv):
    """the sweep as resolved from the command line (and a spec file): its arms, seeds, directories, options"""
    files, opts, cli_overrides, cli_eval = parse_argv(argv)
    spec_path, ns, configs = None, {}, []
    for path in files:
        found = read_spec(path)
        if found is None:
            configs.append(path)
            continue
        if spec_path:
            raise UserError(f"two spec files, {spec_path} and {path}: a sweep is one spec")
        spec_path, ns = path, found
    where = f"spec {spec_path}" if spec_path else 'the command line'
    base = file_list(ns.get('configs', []), where) + configs
    overrides = ns.get('overrides', {})
    if type(overrides) is not dict:
        raise UserError(f"{where}: overrides must be a dict of train.py keys, got {short(overrides)}")
    glob_overrides = [(k, typed(k, v, where)) for k, v in overrides.items()]
    glob_overrides += [(k, typed(k, raw, 'the command line')) for k, raw in cli_overrides]
    arms = spec_arms(ns, opts, where, spec_path, glob_overrides)
    evals = spec_evaluations(ns, opts, cli_eval, where)
    given = opts['given']
    setting = {k: opts[k] if k in given else ns.get(name, OPTIONS[k])
               for k, name in (('out', 'out'), ('run_dir', 'run_dir'), ('ref', 'reference'),
                               ('fail_below', 'fail_below'), ('margin', 'margin'))}
    for k, name in (('out', 'out'), ('run_dir', 'run_dir'), ('ref', 'reference')):
        if type(setting[k]) is not str:
            raise UserError(f"{where}: {name} must be text, got {short(setting[k])}")
    for k in ('fail_below', 'margin'):
        if type(setting[k]) not in (int, float) or not math.isfinite(setting[k]):
            raise UserError(f"{where}: {k} must be a number, got {short(setting[k])}")
    if setting['margin'] <= 0:
        raise UserError(f"{where}: margin must be positive, got {short(setting['margin'])}")
    sbatch = ns.get('sbatch', {})
    if type(sbatch) is not dict:
        raise UserError(f"{where}: sbatch must be a dict of #SBATCH options, got {short(sbatch)}")
    spec = dict(path=spec_path, configs=base, overrides=glob_overrides, arms=arms, evaluate=evals,
                out=setting['out'], run_dir=setting['run_dir'], reference=setting['ref'] or next(iter(arms)),
                fail_below=float(setting['fail_below']), margin=float(setting['margin']),
                compare=ns.get('compare'), sbatch=dict(SBATCH, **sbatch), opts=opts, argv=list(argv))
    if not spec['out']:
        raise UserError("no --out: give the sweep's directory (--out=DIR, or `out = ...` in a spec)")
    if spec['reference'] not in arms:
        raise UserError(f"reference arm {short(spec['reference'])} is not an arm ({', '.join(arms)})")
    if spec['compare'] is not None:
        spec['compare'] = spec_compare(spec['compare'], arms, where)
    return spec


def spec_arms(ns, opts, where, spec_path, glob_overrides):
    """the arms: the spec's, or the grid of --vary / the spec's vary, or one arm; each with its config files,
    seeds and overrides"""
    combos = spec_combos(ns, opts, where, spec_path)
    arms = {}
    for name, items in combos:
        if type(name) is not str or not re.fullmatch(r'[\w.=+@,-]+', name) or name.startswith('.'):
            raise UserError(f"{where}: arm name {short(name)} is not a directory name (letters, digits, "
                            "_ . = + - @ ,)")
        if name in arms:
            raise UserError(f"{where}: two arms are named {name!r}")
        arm = dict(configs=[], seeds=None, overrides=[])
        for key, value in items:
            if key == 'configs':
                arm['configs'] = file_list(value, f"{where}, arm {name}")
            elif key == 'seeds':
                arm['seeds'] = parse_seeds(value, f"{where}, arm {name}")
            else:
                arm['overrides'].append((key, typed(key, value, f"{where}, arm {name}")))
        arms[name] = arm
    # seeds: the command line's, else the spec's (an arm's own seeds unless the command line gives them)
    if opts['seeds']:
        seed_list = parse_seeds(opts['seeds'], '--seeds')
        for arm in arms.values():
            arm['seeds'] = seed_list
    elif 'seeds' in ns:
        seed_list = parse_seeds(ns['seeds'], where)
        for arm in arms.values():
            arm['seeds'] = arm['seeds'] or seed_list
    for name, arm in arms.items():
        if arm['seeds'] and any(k == 'seed' for k, _ in glob_overrides + arm['overrides']):
            raise UserError(f"arm {name}: seed is set besides seeds; give the seeds only")
    return arms


def spec_combos(ns, opts, where, spec_path):
    """[(arm name, [(key, value)])] from --vary, the spec's vary or its arms; one arm 'base' without them"""
    if opts['vary'] and 'arms' in ns:
        raise UserError(f"--vary and the arms of {spec_path}: give one of them")
    if opts['vary']:
        items = []
        for item in opts['vary']:
            key, eq, values = item.partition('=')
            if not eq or not key:
                raise UserError(f"--vary={short(item)}: write --vary=KEY=V1,V2")
            items.append((key, [v for v in values.split(',') if v != ''], True))
        return grid(items, '--vary')
    if 'vary' in ns:
        if type(ns['vary']) is not dict or not all(type(v) in (list, tuple) for v in ns['vary'].values()):
            raise UserError(f"{where}: vary must be a dict of key -> list of values, got {short(ns['vary'])}")
        if not ns['vary']:
            raise UserError(f"{where}: empty grid: vary has no keys")
        return grid([(k, list(v), False) for k, v in ns['vary'].items()], f"{where} (vary)")
    if 'arms' in ns:
        if type(ns['arms']) is not dict or not all(type(a) is dict for a in ns['arms'].values()):
            raise UserError(f"{where}: arms must be a dict of name -> dict of overrides, "
                            f"got {short(ns['arms'])}")
        if not ns['arms']:
            raise UserError(f"{where}: empty grid: arms is empty")
        return [(name, list(a.items())) for name, a in ns['arms'].items()]
    return [('base', [])]


def spec_evaluations(ns, opts, cli_eval, where):
    """the evaluation: a list of evaluate.py option dicts (the first scores the table), or none"""
    evals = ns.get('evaluate', {})
    evals = [] if evals is None else [evals] if type(evals) is dict else evals
    if type(evals) not in (list, tuple) or not all(type(e) is dict for e in evals):
        raise UserError(f"{where}: evaluate must be a dict of evaluate.py options, a list of them, or None")
    evals = [dict(e) for e in evals]
    if cli_eval:
        evals = evals or [{}]
        evals[0].update(cli_eval)
    return evals if opts['evaluate'] else []


def spec_compare(pairs, arms, where):
    """the spec's compare: a list of (arm, arm) pairs, each of two different arms"""
    if type(pairs) not in (list, tuple) or not pairs or not all(
            type(p) in (list, tuple) and len(p) == 2 and all(type(a) is str for a in p) for p in pairs):
        raise UserError(f"{where}: compare must be a list of (arm, arm) pairs, got {short(pairs)}")
    for a, b in pairs:
        if a not in arms or b not in arms or a == b:
            raise UserError(f"{where}: compare ({a!r}, {b!r}) must name two different arms "
                            f"({', '.join(arms)})")
    return [tuple(p) for p in pairs]


def plan(spec):
    """every run of the sweep: dict(arm, seed, dir, argv, command, cfg), each config resolved and validated
    as train.py will"""
    runs = []
    arms = spec['arms']
    width = max(len(a['seeds'] or [None]) for a in arms.values())
    for i, (name, arm) in itertools.product(range(width), arms.items()):  # seed-major: every arm early
        seed_list = arm['seeds'] or [None]
        if i >= len(seed_list):
            continue
        seed = seed_list[i]
        argv = spec['configs'] + arm['configs']
        merged = dict(spec['overrides'])
        merged.update(arm['overrides'])  # an arm's value replaces the base's: one --key a key in the command
        argv += [as_arg(k, v) for k, v in merged.items()]
        argv += [as_arg('seed', seed)] if seed is not None else []
        cfg, _ = train.load_config(argv)
        try:
            directory = spec['run_dir'].format(out=spec['out'], arm=name, seed=cfg['seed'])
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"run_dir {short(spec['run_dir'])}: {type(e).__name__} {e} (its fields are "
                            "{out}, {arm} and {seed})")
        argv += [as_arg('out_dir', directory)]
        cfg, _ = train.load_config(argv)
        try:
            train.validate(cfg)
        except UserError as e:
            raise UserError(f"arm {name}, seed {cfg['seed']}: {e}")
        command = ['python', os.path.relpath(os.path.join(HERE, 'train.py')), *argv, '--resume=auto']
        label = os.path.relpath(directory, spec['out'])
        runs.append(dict(arm=name, seed=cfg['seed'], dir=directory, argv=argv, command=command, cfg=cfg,
                         label=directory if label.startswith('..') else label))
    distinct([r for r in runs if chosen(spec, r['arm'])])
    for r in runs:
        r['label'] = r['label'].replace(os.sep, '/')
    return runs


def distinct(runs):
    """refuse two runs in one directory, or two runs of one config (checked among the runs --arms keeps: an
    arm left out, whose seeds --seeds replaced, may equal a kept one without harm)"""
    by_dir, by_cfg = {}, {}
    for r in runs:
        key = os.path.normpath(r['dir'])
        if key in by_dir:
            raise UserError(f"runs {by_dir[key]['arm']} (seed {by_dir[key]['seed']}) and {r['arm']} (seed "
                            f"{r['seed']}) share the directory {r['dir']}: "
                            "put {seed} and {arm} in run_dir")
        by_dir[key] = r
        same = json.dumps({k: v for k, v in r['cfg'].items() if k != 'out_dir'}, sort_keys=True)
        if same in by_cfg:
            raise UserError(f"runs {by_cfg[same]['dir']} and {r['dir']} resolve to the same config: "
                            "the arms do not differ")
        by_cfg[same] = r


def chosen(spec, name):
    """whether --arms keeps the arm `name` (every arm when it is empty)"""
    patterns = spec['opts']['arms'].split(',') if spec['opts']['arms'] else ['*']
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select(spec, runs):
    """the runs of the arms --arms names (all when it is empty); the reference falls back to the first arm
    kept unless --ref names it"""
    if not spec['opts']['arms']:
        return runs
    patterns = spec['opts']['arms'].split(',')
    for p in patterns:
        if not any(fnmatch.fnmatchcase(name, p) for name in spec['arms']):
            names = short(', '.join(spec['arms']), 200)
            raise UserError(f"--arms: {short(p)} matches no arm (the arms: {names})")
    spec['arms'] = {k: a for k, a in spec['arms'].items() if chosen(spec, k)}
    if spec['reference'] not in spec['arms']:
        if 'ref' in spec['opts']['given']:
            raise UserError(f"--ref={spec['reference']} is not among the arms --arms keeps")
        spec['reference'] = next(iter(spec['arms']))
    return [r for r in runs if r['arm'] in spec['arms']]


def identity(spec):
    """what makes two invocations one sweep (arms and seeds may be added): the spec file, the base configs and
    the overrides of every run, but those a resume may change (max_iters, intervals, device)"""
    keep = [(k, v) for k, v in spec['overrides'] if k not in train.RESUME_FREE]
    return json.loads(json.dumps(dict(spec=spec['path'], configs=spec['configs'], overrides=dict(keep))))


def check_eval_options(spec):
    import evaluate as evaluation
    for options in spec['evaluate']:
        bad = sorted(set(options) - set(evaluation.DEFAULTS))
        if bad:
            raise UserError(f"unknown evaluate.py option(s) {', '.join(bad)} (python evaluate.py --help)")
        evaluation.parse_args(['(a run)', *eval_args(spec, options)])

# -----------------------------------------------------------------------------
# the runs on disk

def mismatch(cfg, saved):
    """the keys a resume from `saved` would change (run-control keys may differ)"""
    free = train.resume_free(saved)
    return sorted(k for k in train.DEFAULTS
                  if k not in free and saved.get(k, train.DEFAULTS[k]) != cfg[k])


def inspect(run):
    """where a run stands: run['state'] new | unfinished | finished | unreadable, run['step'];
    a UserError when its directory holds a run of another config"""
    if not train.RunDirectory(run['dir']).run_files():
        run.update(state='new', step=0, note='')
        return run
    try:
        _, ckpt = train.resume_checkpoint(run['dir'], quiet=True)
    except UserError as e:
        run.update(state='unreadable', step=None, note=str(e))
        return run
    keys = mismatch(run['cfg'], ckpt['config'])
    if keys:
        old = ckpt['config']
        changes = ', '.join(f"{k}: {short(old.get(k, train.DEFAULTS[k]))} -> {short(run['cfg'][k])}"
                            for k in keys)
        raise UserError(f"{run['dir']} holds a run of another config ({changes}); the sweep would mix them: "
                        "choose another --out or run_dir")
    done = ckpt['step'] >= run['cfg']['max_iters']
    run.update(state='finished' if done else 'unfinished', step=ckpt['step'], note='')
    return run


def check_out(spec, runs):
    """refuse an --out that holds another sweep's runs: another base (sweep.json), or run directories that are
    not this sweep's (runs: every run of the spec, --arms or not)"""
    out_dir = spec['out']
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file")
    manifest = read_manifest(out_dir)
    if manifest and manifest.get('identity') != identity(spec):
        old, new = manifest.get('identity', {}), identity(spec)
        files = [' '.join(c) or '(none)' for c in (old.get('configs', []), new['configs'])]
        what = [f"spec {old.get('spec')} -> {new['spec']}" if old.get('spec') != new['spec'] else '',
                f"configs {files[0]} -> {files[1]}" if files[0] != files[1] else '']
        keys = sorted(set(old.get('overrides', {})) | set(new['overrides']))
        what += [f"{k}: {short(old.get('overrides', {}).get(k))} -> {short(new['overrides'].get(k))}"
                 for k in keys if old.get('overrides', {}).get(k) != new['overrides'].get(k)]
        raise UserError(f"{out_dir} holds another sweep's runs ({'; '.join(filter(None, what))}); "
                        "choose another --out")
    known = {os.path.normpath(r['dir']) for r in runs}
    known |= {os.path.normpath(d) for d in (manifest or {}).get('runs', {})}
    foreign = []
    for folder, dirs, files in os.walk(out_dir):
        if os.path.relpath(folder, out_dir).count(os.sep) >= 2:
            dirs[:] = []  # runs sit at most two levels down (<out>/<arm>/s<seed>)
        if any(train.RUN_FILES.fullmatch(f) for f in files) and os.path.normpath(folder) not in known:
            foreign.append(folder)
    if foreign:
        shown = ', '.join(sorted(foreign)[:3]) + (f' and {len(foreign) - 3} more' if len(foreign) > 3 else '')
        raise UserError(f"{out_dir} holds runs that are not this sweep's ({shown}); choose another --out")


def read_manifest(out_dir):
    path = os.path.join(out_dir, 'sweep.json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable ({oneline(e)}); move it away or choose another --out")


def write_manifest(spec, runs):
    """<out>/sweep.json: the spec as resolved, every run with its command (runs of earlier invocations
    kept)"""
    old = read_manifest(spec['out']) or {}
    entries = dict(old.get('runs', {}))
    for r in runs:
        entries[r['dir']] = dict(arm=r['arm'], seed=r['seed'], command=shlex.join(r['command']))
    arms = {name: dict(configs=a['configs'], seeds=a['seeds'], overrides=dict(a['overrides']))
            for name, a in spec['arms'].items()}
    doc = dict(identity=identity(spec), command=shlex.join(['python', 'sweep.py', *spec['argv']]),
               spec=dict(path=spec['path'], configs=spec['configs'], overrides=dict(spec['overrides']),
                         arms=arms, run_dir=spec['run_dir'], evaluate=spec['evaluate'],
                         reference=spec['reference'], compare=spec['compare'], margin=spec['margin'],
                         fail_below=spec['fail_below']),
               runs=entries)
    os.makedirs(spec['out'], exist_ok=True)
    atomic_write(os.path.join(spec['out'], 'sweep.json'), json.dumps(doc, indent=1) + '\n')


def sweep_command(spec, *extra):
    """the command line of this sweep (without --dry-run, --slurm, --cost), and `extra`"""
    modes = re.compile(r'--(dry[-_]run|slurm|cost)(=.*)?')
    argv = [a for a in spec['argv'] if not modes.fullmatch(a)]
    return shlex.join(['python', os.path.relpath(os.path.join(HERE, 'sweep.py')), *argv, *extra])

# -----------------------------------------------------------------------------
# --dry-run, --slurm, --cost

def show_dry_run(spec, runs):
    counts = {s: sum(r['state'] == s for r in runs) for s in ('finished', 'unfinished', 'new', 'unreadable')}
    print(f"sweep {spec['out']}: {len(runs)} runs ({len(spec['arms'])} arms): " +
          ', '.join(f'{n} {s}' for s, n in counts.items() if n))
    for r in runs:
        where = dict(new='new', finished=f"finished at step {r['step']}",
                     unfinished=f"unfinished at step {r['step']}", unreadable='unreadable')[r['state']]
        print(f"{r['label']} ({where}): {shlex.join(r['command'])}")


def write_sbatch(spec, runs):
    """<out>/sweep.sbatch: one array task per run. SLURM signals the batch shell 5 minutes before the time
    limit; the trap forwards it to train.py (which checkpoints and exits 0), and a run left unfinished is
    requeued, so the next start resumes it."""
    path = os.path.join(spec['out'], 'sweep.sbatch')
    q = shlex.quote
    lines = ['#!/usr/bin/env bash',
             f"# the sweep {spec['out']} as a SLURM array, one task per run; submit it from the directory",
             f"# sweep.py ran in: sbatch {q(path)}",
             f"# (written by: {sweep_command(spec, '--slurm')})"]
    for key, value in spec['sbatch'].items():
        if value is not None:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={value}")
    lines += [f"#SBATCH --array=0-{len(runs) - 1}",
              f"#SBATCH --output={os.path.join(spec['out'], 'slurm-%A_%a.out')}",
              '#SBATCH --open-mode=append',
              '#SBATCH --signal=B:TERM@300   # to this shell, 5 minutes before the limit (see the trap)',
              '#SBATCH --requeue',
              'set -uo pipefail',
              'cd "${SLURM_SUBMIT_DIR:-.}"',
              'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
              'case "${SLURM_ARRAY_TASK_ID:?not a SLURM array task}" in']
    for i, r in enumerate(runs):
        lines.append(f"    {i}) run_dir={q(r['dir'])}; set -- {shlex.join(r['command'])} ;;")
    lines += ['    *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
              'esac',
              'pid=',
              'stop=',
              'trap \'stop=1; [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null\' TERM',
              '"$@" &   # in the background, so that the trap runs as soon as the signal comes',
              'pid=$!',
              '[ -z "$stop" ] || kill -TERM "$pid"   # (a signal before train.py started)',
              'code=0',
              'wait "$pid" || code=$?',
              'while kill -0 "$pid" 2>/dev/null; do   # the trap ended the wait: wait for the checkpoint',
              '    code=0',
              '    wait "$pid" || code=$?',
              'done',
              f"state=$(python -c 'import sys; sys.path.insert(0, sys.argv[1]); import train; "
              f"print(train.run_status(sys.argv[2])[\"state\"])' {q(os.path.relpath(HERE))} \"$run_dir\") "
              '|| state=unknown',
              '# stopped by the time limit (train.py checkpointed and exited 0): continue it later',
              'if [ "$code" = 0 ] && [ "$state" = unfinished ]; then',
              '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
              'fi',
              'exit "$code"']
    os.makedirs(spec['out'], exist_ok=True)
    atomic_write(path, '\n'.join(lines) + '\n')
    print(f"wrote {path} ({len(runs)} array tasks): sbatch {q(path)}")


def measured_rate(run_dir):
    """(device, processes, steps/s) a run logged: the device of its last start, the median steps/s of the
    second half of its metrics rows (past the warm-up); (None, 0, None) without a run"""
    log, metrics = os.path.join(run_dir, 'log.txt'), os.path.join(run_dir, 'metrics.jsonl')
    if not (os.path.isfile(log) and os.path.isfile(metrics)):
        return None, 0, None
    device, procs = '?', 1
    with open(log, errors='replace') as f:
        for line in f:
            m = re.search(r'\| (\d+) process\(es\) on (\S+) \|', line)
            if m:
                procs, device = int(m[1]), m[2]
    rates = []
    with open(metrics, errors='replace') as f:
        for line in f:
            with contextlib.suppress(ValueError, AttributeError):
                rates.append(json.loads(line).get('steps_per_s'))
    rates = sorted(r for r in rates[len(rates) // 2:] if r)
    return device, procs, (rates[len(rates) // 2] if rates else None)


def show_cost(spec, runs):
    rows = [(r, *measured_rate(r['dir'])) for r in runs]
    if not any(device for _, device, _, _ in rows):
        print(f"no run of {spec['out']} has trained yet: nothing to measure. Train every run "
              f"{PILOT_STEPS:,} steps on the GPU machine first (they resume to their max_iters later), "
              "then ask again:")
        print(f"    {sweep_command(spec, f'--max_iters={PILOT_STEPS}', '--evaluate=False')}")
        print(f"    {sweep_command(spec, '--cost')}")
        return
    print('| run | device | steps/s | step | max_iters | GPU-hours for max_iters | GPU-hours left |')
    print('|---|---|---|---|---|---|---|')
    total = left = 0.0
    measured = 0
    for r, device, procs, rate in rows:
        step = r['step'] or 0
        cells = ['not measured (no GPU run)' if device else 'not measured (not run)'] * 2
        if device and device.startswith('cuda') and rate:
            hours = r['cfg']['max_iters'] / rate / 3600 * procs  # GPU-hours: every process holds a GPU
            rest = max(0, r['cfg']['max_iters'] - step) / rate / 3600 * procs
            total, left, measured = total + hours, left + rest, measured + 1
            cells = [f'{hours:,.1f}', f'{rest:,.1f}']
        print(f"| {r['label']} | {device or '-'} | {rate or '-'} | {step:,} | "
              f"{r['cfg']['max_iters']:,} | {cells[0]} | {cells[1]} |")
    print(f"\n{measured} of {len(rows)} runs measured on a GPU: {total:,.1f} GPU-hours for their max_iters, "
          f"{left:,.1f} left" + (' (the others are not measured)' if measured < len(rows) else ''))

# -----------------------------------------------------------------------------
# training: lanes of train.py processes

def _prctl():
    try:
        return ctypes.CDLL(None).prctl  # Linux: the child's death signal
    except (OSError, AttributeError):
        return None


PRCTL = _prctl()


def _die_with_parent():  # a sweep killed outright (SIGKILL) stops its runs with a checkpoint each
    if PRCTL is not None:
        PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def resources(jobs_, threads_):
    """(lanes, threads per run, GPU ids or []) from --jobs/--threads and the machine"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    gpus = []
    if train.torch.cuda.is_available():
        visible = os.environ.get('CUDA_VISIBLE_DEVICES')
        gpus = visible.split(',') if visible else [str(i) for i in range(train.torch.cuda.device_count())]
    lanes = jobs_ or len(gpus) or cores
    return lanes, threads_ or max(1, cores // lanes), gpus


def log_tail(path, n=8):
    with contextlib.suppress(OSError):
        with open(path, errors='replace') as f:
            return [line.rstrip() for line in f.readlines()[-n:]]
    return []


def last_step(run_dir):
    """the last step metrics.jsonl logged (progress of a running run, read from the file's end)"""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):  # none yet, half a row
        with open(os.path.join(run_dir, 'metrics.jsonl'), 'rb') as f:
            f.seek(max(0, f.seek(0, 2) - 2048))
            lines = [line for line in f.read().split(b'\n') if line.strip()]
        return int(json.loads(lines[-1])['step'])
    return 0


def execute(runs, lanes, threads_, gpus):
    """train the runs not yet finished, `lanes` at a time. Sets each run's 'outcome' (done, stopped, failed,
    not started); returns the stop signal's number or None"""
    stop = dict(signum=None, count=0)

    def on_signal(signum, frame):
        stop['signum'] = stop['signum'] or signum
        stop['count'] += 1
    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    todo = [r for r in runs if r['state'] in ('new', 'unfinished')]
    for r in runs:
        r['outcome'] = dict(finished='done', unreadable='failed').get(r['state'], 'not started')
    running = {}  # lane -> (run, process, log file, start time, signals forwarded)
    bar = tqdm(total=len(runs), unit='run', dynamic_ncols=True, disable=None,
               initial=sum(r['outcome'] == 'done' for r in runs),
               bar_format='{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}{postfix}]')
    try:
        while todo or running:
            poll_lanes(running, stop, bar)
            free = [i for i in range(lanes) if i not in running]
            while todo and free and not stop['signum']:
                lane = free.pop(0)
                r = todo.pop(0)
                running[lane] = (*start(r, lane, threads_, gpus, bar), 0)
            show_progress(bar, runs, running)
            if stop['signum'] and not running:
                break
            time.sleep(0.2)
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    return stop['signum']


def poll_lanes(running, stop, bar):
    """forward a new stop signal to every running run (each signal once: train.py checkpoints and exits 0),
    and finish the runs that ended, freeing their lanes"""
    for lane, (r, proc, log, t0, sent) in list(running.items()):
        if sent < stop['count']:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(stop['signum'])
            running[lane] = (r, proc, log, t0, stop['count'])
        if proc.poll() is None:
            continue
        log.close()
        del running[lane]
        finish(r, proc.returncode, time.time() - t0, bar)


def show_progress(bar, runs, running):
    # finished runs count whole, running ones by their last logged step
    done = sum(r['outcome'] in ('done', 'failed') for r in runs)
    partial = sum(last_step(r['dir']) / max(1, r['cfg']['max_iters']) for r, *_ in running.values())
    bar.n = done + partial
    bar.set_postfix_str(f"done {sum(r['outcome'] == 'done' for r in runs)}, running {len(running)}, "
                        f"failed {sum(r['outcome'] == 'failed' for r in runs)}", refresh=True)


def start(r, lane, threads_, gpus, bar):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_), MKL_NUM_THREADS=str(threads_), PYTHONUNBUFFERED='1')
    if gpus:
        env['CUDA_VISIBLE_DEVICES'] = gpus[lane % len(gpus)]
    os.makedirs(r['dir'], exist_ok=True)
    log = open(os.path.join(r['dir'], 'train.out'), 'a')
    log.write(f"$ {shlex.join(r['command'])}\n")
    log.flush()
    proc = subprocess.Popen([sys.executable, *r['command'][1:]], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
    where = 'new' if r['state'] == 'new' else f"resuming at step {r['step']}"
    bar.write(f"start   {r['label']} ({where}; pid {proc.pid}" + (f", GPU {env['CUDA_VISIBLE_DEVICES']})"
                                                                  if gpus else ')'))
    return r, proc, log, time.time()


def finish(r, code, seconds, bar):
    log = os.path.join(r['dir'], 'train.out')
    with contextlib.suppress(UserError):  # (a run that died before its first checkpoint has no step)
        r['step'] = train.run_status(r['dir'])['step']
    if code == 0 or -code in STOP_SIGNALS:  # (a signal before train.py took over its signals: nothing lost)
        r['outcome'] = 'done' if code == 0 and (r['step'] or 0) >= r['cfg']['max_iters'] else 'stopped'
        r['note'] = '' if r['outcome'] == 'done' else 'unfinished: the same command continues it'
    else:
        r['outcome'] = 'failed'
        r['note'] = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        r['tail'] = log_tail(log)
    word = dict(done='done   ', stopped='stopped', failed='FAILED ')[r['outcome']]
    bar.write(f"{word} {r['label']} at step {r['step']} ({seconds:.0f} s)" +
              (f": {r['note']} (log {log})" if r['note'] else ''))

# -----------------------------------------------------------------------------
# evaluation and the table

def eval_args(spec, options):
    """evaluate.py's --key=value of options; '{out}' in a text stands for the sweep's directory"""
    return [f"--{k}={v.replace('{out}', spec['out']) if type(v) is str else repr(v)}"
            for k, v in options.items()]


def baseline_path(item):
    """the run directory of one evaluate.py baseline_run item (RUN, or TASK=RUN)"""
    return item.partition('=')[2] if '=' in item else item


def usable_baselines(value):
    """evaluate.py's baseline_run without the runs that are not finished (their task falls back to its
    classical baseline, as evaluate.py says)"""
    kept = []
    for item in value.split(','):
        path = baseline_path(item)
        with contextlib.suppress(UserError):
            if train.run_status(path)['state'] == 'finished':
                kept.append(item)
                continue
        print(f"note: the baseline run {path} is not finished; left out of --baseline_run")
    return ','.join(kept)


def score_runs(spec, runs):
    """evaluate.main over the finished runs, once per evaluate entry; the first one's scores go to
    run['score']"""
    import evaluate as evaluation
    finished = [r for r in runs if r['outcome'] == 'done']
    by_dir = {os.path.normpath(r['dir']): r for r in finished}
    for i, options in enumerate(spec['evaluate']):
        options = dict(options)
        scored = finished
        if options.get('baseline_run'):
            options['baseline_run'] = usable_baselines(options['baseline_run'].replace('{out}', spec['out']))
            # a trained baseline that is a run of this sweep is not scored against itself (1 by definition)
            items = [item for item in options['baseline_run'].split(',') if item]
            itself = {os.path.normpath(baseline_path(item)) for item in items}
            scored = [r for r in finished if os.path.normpath(r['dir']) not in itself]
        if not scored:
            continue
        rows = evaluation.main([r['dir'] for r in scored] + eval_args(spec, options))
        for row in rows if i == 0 else []:
            r = by_dir.get(os.path.normpath(row['run']))
            if r is not None and row['variant'] == 'standard':
                r.update(score=row['score']['score'], task=row['task'], baseline=row['score_baseline'],
                         eval_step=row['checkpoints'][-1]['step'], n_prompts=row['n_prompts'],
                         curve=[(c['step'], c['score']['score']) for c in row['checkpoints']])


def summarize(spec, runs):
    """(arms, comparisons): per arm its scores by seed, mean and CI, failures to learn with the interval of
    the rate,
    the mean of the runs that learned, the trend over its last checkpoints, unfinished runs; per comparison
    (the spec's compare, else every arm against the reference) the difference, its CI and the verdict"""
    rows = {}
    for name in spec['arms']:
        mine = [r for r in runs if r['arm'] == name]
        scored = {r['seed']: r['score'] for r in mine if r.get('score') is not None}
        learned = [v for v in scored.values() if v >= spec['fail_below']]
        rows[name] = dict(arm=name, runs=mine, scores=scored, task=mine[0]['cfg']['task'],
                          stat=mean_ci(list(scored.values())) if scored else None,
                          failed_to_learn=len(scored) - len(learned),
                          learned=mean_ci(learned) if learned else None,
                          trend=trend([r['curve'] for r in mine if r.get('score') is not None]),
                          unfinished=[r for r in mine if r['outcome'] != 'done'],
                          steps=sorted({r['eval_step'] for r in mine if r.get('score') is not None},
                                key=lambda x: -1 if x is None else x))
    ref = spec['reference']
    pairs = spec['compare'] or [(name, ref) for name in spec['arms'] if name != ref]
    comparisons = []
    for a, b in pairs:
        if a not in rows or b not in rows or rows[a]['task'] != rows[b]['task']:
            continue  # (an arm --arms left out; arms of two tasks are not compared)
        d = None
        if rows[a]['scores'] and rows[b]['scores']:
            d = difference(rows[a]['scores'], rows[b]['scores'])
        comparisons.append(dict(a=a, b=b, diff=d, verdict=verdict(d, spec['margin']) if d else 'no scores'))
    return list(rows.values()), comparisons


def fmt(v):
    return '–' if v is None else f"{v:.3f}".replace('-', '−')


def cells(row):
    """the table's text for one arm: score, per-seed scores, steps, failures, the learned runs' mean, trend"""
    s, n = row['stat'], len(row['scores'])
    score = '–' if s is None else f"{fmt(s['mean'])} (one seed)" if s['lo'] is None else (
        f"{fmt(s['mean'])} ± {fmt(s['hi'] - s['mean'])}")
    per_seed = ', '.join(f"{seed}: {fmt(v)}" for seed, v in sorted(row['scores'].items())) or '–'
    known = [x for x in row['steps'] if x is not None]  # (a score table read back holds no steps)
    ends = sorted({known[0], known[-1]}) if known else []
    steps = '–'.join(f"{x:,}" for x in ends) or '–'
    failed = '–'
    if n:
        low, high = rate_ci(row['failed_to_learn'], n)
        failed = f"{row['failed_to_learn']} of {n} [{low:.2f}, {high:.2f}]"
    learned = '–' if row['learned'] is None else (
        f"{fmt(row['learned']['mean'])} ({row['learned']['n']})" if row['learned']['lo'] is None else
        f"{fmt(row['learned']['mean'])} ± {fmt(row['learned']['hi'] - row['learned']['mean'])} "
        f"({row['learned']['n']})")
    t = row['trend']
    trend_text = '–' if t is None else f"{t['word']} ({fmt(t['mean'])} [{fmt(t['lo'])}, {fmt(t['hi'])}])"
    return score, per_seed, steps, failed, learned, trend_text


def diff_text(d):
    if d is None:
        return '–', '–'
    if d['lo'] is None:
        return fmt(d['mean']), d['test']
    seeds = d.get('seeds', d['n'])  # (Welch names both arms' counts)
    return f"{fmt(d['mean'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]", f"{d['test']}, {seeds} seeds"


def table_text(spec, runs, summary):
    """(md, csv, compare_csv) lines: the arms, then the comparisons, and the rules they were read by"""
    rows, comparisons = summary
    several = len({row['task'] for row in rows}) > 1  # a task column only when the arms differ in it
    head = ['arm', *(['task'] if several else []), 'seeds', 'score (mean ± 95% CI)', 'per seed', 'steps',
            f"failed to learn (< {spec['fail_below']:g}) [95% CI of the rate]", 'learned: mean (runs)',
            'last 3 checkpoints: slope / 1k steps [95% CI]', 'not finished']
    md = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    csv = ['arm,task,seeds,mean,ci95_low,ci95_high,failed_to_learn,fail_rate_ci95_low,fail_rate_ci95_high,'
           'learned_mean,trend,trend_slope,steps,not_finished,per_seed']
    for row in rows:
        score, per_seed, steps, failed, learned, trend_text = cells(row)
        n = len(row['scores'])
        line = [row['arm'], *([row['task']] if several else []), str(n), score, per_seed, steps, failed,
                learned, trend_text, str(len(row['unfinished']))]
        md.append('| ' + ' | '.join(line) + ' |')
        s, t, lr = row['stat'] or {}, row['trend'] or {}, row['learned'] or {}
        nums = ['' if v is None else f"{v:.6f}" for v in (s.get('mean'), s.get('lo'), s.get('hi'))]
        rate = [f"{v:.6f}" for v in rate_ci(row['failed_to_learn'], n)] if n else ['', '']
        csv.append(','.join([row['arm'], row['task'], str(n), *nums, str(row['failed_to_learn']), *rate,
                             '' if lr.get('mean') is None else f"{lr['mean']:.6f}", t.get('word', ''),
                             '' if t.get('mean') is None else f"{t['mean']:.6f}",
                             '/'.join(str(x) for x in row['steps'] if x is not None),
                             str(len(row['unfinished'])),
                             ';'.join(f'{k}:{v:.6f}' for k, v in sorted(row['scores'].items()))]))
    md += ['', '| comparison | Δ (95% CI) | test | verdict (margin ±' + f"{spec['margin']:g})" + ' |',
           '|---|---|---|---|']
    compare_csv = ['arm,minus,diff,ci95_low,ci95_high,test,seeds,verdict']
    for c in comparisons:
        delta, test = diff_text(c['diff'])
        md.append(f"| {c['a']} − {c['b']} | {delta} | {test} | {c['verdict']} |")
        d = c['diff'] or {}
        nums = ['' if d.get(k) is None else f"{d[k]:.6f}" for k in ('mean', 'lo', 'hi')]
        compare_csv.append(','.join([c['a'], c['b'], *nums, d.get('test', ''), str(d.get('n', '')),
                                     c['verdict']]))
    scored = [r for r in runs if r.get('score') is not None]
    bases = ', '.join(sorted({f"{r['baseline']} ({r['task']})" for r in scored})) or '–'
    prompts = ', '.join(sorted({f"{r['n_prompts']:,}" for r in scored})) or '–'
    unfinished = '; '.join(f"{r['label']} {r['outcome']} at step {r['step'] or 0}"
                           + (f" ({r['note']})" if r.get('note') else '')
                           for row in rows for r in row['unfinished'])
    at = spec.get('scored_at', "each run's last checkpoint")
    md += ['', f"Score: the ICL regression score (paper eq. 1) of {at} against "
               f"{bases}, on {prompts} prompts; the mean over seeds ± the half-width of its 95% CI "
               "(Student's t, n − 1 df; one seed: no CI).",
           f"Failed to learn: runs scoring below fail_below = {spec['fail_below']:g}, counted (with the "
           "exact Clopper-Pearson 95% interval of the rate) and kept in the mean; 'learned' is the mean of "
           "the others.",
           "Last 3 checkpoints: the least-squares slope of each run's score over its last three scored "
           "checkpoints, per 1,000 steps, mean over runs with its 95% CI: 'rising' or 'falling' when the CI "
           "excludes 0, else 'flat' (needs evaluate all_ckpts and two runs).",
           "Δ: the first arm's mean minus the second's, with its 95% CI: a paired t over the seeds when "
           "both arms ran the same seeds, Welch's t otherwise (its fractional df rounded down: "
           "conservative).",
           "Verdict, one rule for every comparison: 'different' when the CI of Δ excludes 0, 'level' when "
           f"it lies within ±{spec['margin']:g} (the margin, fixed before the runs), 'undecided' otherwise.",
           f"Not finished: runs short of their max_iters, left out of the scores: {unfinished or 'none'}."]
    return md, csv, compare_csv


def write_table(spec, runs, summary):
    """<out>/table.md (the arms, then the comparisons), table.csv (arms), compare.csv and table.png"""
    md, csv, compare_csv = table_text(spec, runs, summary)
    prefix = os.path.join(spec['out'], 'table')
    for path, lines in ((prefix + '.md', md), (prefix + '.csv', csv),
                        (os.path.join(spec['out'], 'compare.csv'), compare_csv)):
        atomic_write(path, '\n'.join(lines) + '\n')
    draw(spec, summary[0], prefix + '.png')
    print('\n'.join(md))
    print(f"wrote {prefix}.md, {prefix}.csv, compare.csv and {prefix}.png")


def draw(spec, rows, path):
    """per arm: each seed's score, the mean and its 95% CI; next to it, when several checkpoints were scored
    (evaluate.py's all_ckpts), the mean score by step"""
    import matplotlib
    matplotlib.use('agg')  # files only, no display needed
    import matplotlib.pyplot as plt
    by_step = any(len(r.get('curve', [])) > 1 for row in rows for r in row['runs'])
    fig, axes = plt.subplots(1, 2 if by_step else 1, figsize=(11 if by_step else 6.4, 4.2), squeeze=False)
    draw_seeds(axes[0][0], spec, rows)
    if by_step:
        draw_by_step(axes[0][1], rows)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def draw_seeds(ax, spec, rows):
    for i, row in enumerate(rows):
        values = list(row['scores'].values())
        ax.plot([i] * len(values), values, 'o', color='gray', alpha=0.6, ms=4)
        s = row['stat']
        if s is not None:
            err = [[s['mean'] - s['lo']], [s['hi'] - s['mean']]] if s['lo'] is not None else None
            ax.errorbar([i + 0.15], [s['mean']], yerr=err, fmt='s', color=f'C{i % 10}', capsize=4)
    ax.axhline(spec['fail_below'], color='gray', ls='--', lw=1, label=f"fail_below = {spec['fail_below']:g}")
    ax.axhline(1.0, color='gray', ls=':', lw=1)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xticks(range(len(rows)), [row['arm'] for row in rows], rotation=30 if len(rows) > 4 else 0,
                  ha='right' if len(rows) > 4 else 'center', fontsize=8)
    ax.set(ylabel='ICL regression score', title=f"{os.path.basename(os.path.normpath(spec['out']))}: "
                                                "seeds (dots), mean ± 95% CI")
    ax.legend(fontsize=7)


def draw_by_step(ax, rows):
    # a thin line per seed under each arm's mean: a mean halfway between a failed and a learned seed looks
    # like a slow learner, the seeds' lines show the split (and when each seed leaves a plateau)
    for i, row in enumerate(rows):
        steps = {}
        for r in row['runs']:
            points = [(step, value) for step, value in r.get('curve', [])
                      if value is not None and step is not None]
            for step, value in points:
                steps.setdefault(step, []).append(value)
            if len(row['runs']) > 1 and len(points) > 1:
                ax.plot(*zip(*points), color=f'C{i % 10}', lw=0.8, alpha=0.35)
        xs = sorted(steps)
        ax.plot(xs, [sum(steps[x]) / len(steps[x]) for x in xs], marker='o', color=f'C{i % 10}',
                label=row['arm'])
    ax.axhline(1.0, color='gray', ls=':', lw=1)
    ax.set(xlabel='training step', ylabel='score: mean over seeds (thin: each seed)', title='score by step')
    ax.legend(fontsize=7)

# -----------------------------------------------------------------------------

def report(spec, runs, signum):
    """the end of a sweep: what failed (exit status, log tail), what stopped, how to continue"""
    failed = [r for r in runs if r['outcome'] == 'failed']
    stopped = [r for r in runs if r['outcome'] in ('stopped', 'unfinished', 'not started')]
    for r in failed:
        print(f"FAILED {r['label']}: {r['note']}; {os.path.join(r['dir'], 'train.out')} ends:")
        for line in r.get('tail', []):
            print(f"    {line}")
    done = sum(r['outcome'] == 'done' for r in runs)
    print(f"{done} of {len(runs)} runs finished" + (f", {len(failed)} failed" if failed else '') +
          (f", {len(stopped)} unfinished (stopped or not started)" if stopped else ''))
    if signum:
        print(f"sweep stopped by {signal.Signals(signum).name}: every running run checkpointed; "
              f"continue with the same command: {sweep_command(spec)}")


def main(argv):
    if any(a in ('-h', '--help') for a in argv):
        print(configurator.help_text(__file__, __doc__.strip()))
        return 0
    spec = load_spec(argv)
    every = plan(spec)
    runs = select(spec, every)
    check_eval_options(spec)
    for r in runs:  # every run against its directory, before any starts
        inspect(r)
    check_out(spec, every)
    modes = [m for m in ('dry_run', 'slurm', 'cost', 'eval_only') if spec['opts'][m]]
    if len(modes) > 1:
        raise UserError(f"--{' and --'.join(modes)}: give one of them")
    if modes == ['dry_run']:
        show_dry_run(spec, runs)
        return 0
    if modes == ['cost']:
        show_cost(spec, runs)
        return 0
    lock = os.path.join(spec['out'], 'sweep.lock')
    os.makedirs(spec['out'], exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors='replace').strip() or '?'
        if modes != ['eval_only']:
            raise UserError(f"{spec['out']} is in use by another sweep.py (pid {holder})")
        # scoring beside a training sweep is safe: a finished run's files no longer change, the cache and
        # the tables are written atomically, and sweep.json stays the trainer's to write
        print(f"note: {spec['out']} is in use by another sweep.py (pid {holder}); evaluating the runs "
              "finished so far beside it")
    else:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        write_manifest(spec, runs)
    if modes == ['slurm']:
        write_sbatch(spec, runs)
        return 0
    if modes == ['eval_only']:
        for r in runs:
            r['outcome'] = dict(finished='done', unfinished='unfinished').get(r['state'], 'not started')
        ok = evaluate_and_tabulate(spec, runs)
        report(spec, runs, None)
        return 0 if ok else 1
    lanes, threads_, gpus = resources(spec['opts']['jobs'], spec['opts']['threads'])
    todo = sum(r['state'] in ('new', 'unfinished') for r in runs)
    lanes = max(1, min(lanes, todo))  # (no idle lanes: a lane is one process at a time)
    states = {s: sum(r['state'] == s for r in runs) for s in ('finished', 'unfinished', 'new')}
    on = f" on GPUs {','.join(gpus)}" if gpus else ''
    lanes_text = f"{lanes} at a time, {threads_} thread(s) each{on}" if todo else 'nothing to train'
    print(f"sweep {spec['out']}: {len(runs)} runs ({len(spec['arms'])} arms), {states['finished']} finished, "
          f"{states['unfinished']} to resume, {states['new']} new; {lanes_text}")
    for r in runs:
        if r['state'] == 'unreadable':
            r.update(note=r['note'], tail=[])
            print(f"FAILED  {r['label']}: {r['note']}")
    signum = execute(runs, lanes, threads_, gpus)
    if signum:
        report(spec, runs, signum)
        return 128 + signum
    ok = evaluate_and_tabulate(spec, runs)
    report(spec, runs, None)
    return 0 if ok and all(r['outcome'] == 'done' for r in runs) else 1


def evaluate_and_tabulate(spec, runs):
    """the evaluation of the finished runs and the table; False when the evaluation failed"""
    if not spec['evaluate']:
        return True
    try:
        if any(r['outcome'] == 'done' for r in runs):
            score_runs(spec, runs)
    except UserError as e:
        print(f"error: the evaluation failed: {e}", file=sys.stderr)
        return False
    write_table(spec, runs, summarize(spec, runs))
    return True


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # `python sweep.py --help | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (UserError, OSError) as e:  # OSError: permissions, a path that is not a directory
        print('error: ' + ' '.join(str(e).splitlines()), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # outside the training (the check, the evaluation): nothing half-written
        print('error: interrupted; the same command continues the sweep', file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
