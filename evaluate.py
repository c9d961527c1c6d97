"""
Evaluate ICL runs from their checkpoints alone (docs/paper.md §5-§7): squared error per context length
over fixed seeded prompts, the ICL regression score with SE and 95% CI, cross-task and OOD evaluation,
plots, and a score table laid out like the paper's Table 3.
    python evaluate.py out/RUN [out/RUN2 ...] [--key=value ...]
    python evaluate.py out/gpt2-sparse --task=linear_regression --all_ckpts=True  # cross-task, all ckpts
    python evaluate.py out/gpt2-linear --ood=all                                  # Garg's OOD suite
    python evaluate.py out/*-tree --baseline_run=out/gpt2-tree --out=results/table3
    python evaluate.py --help
A run is a run directory (its ckpt.pt, and with --all_ckpts every ckpt_<step>.pt) or one checkpoint file.
Writes next to each run eval_<task>[_<variant>][_vs_<baseline>].json (every number behind the plot) and .png;
with --out=PREFIX also PREFIX.md and PREFIX.csv (the score table) and PREFIX_<task>.png (all runs).
Every run, output path and option is checked before any evaluation work starts.
"""
import hashlib
import json
import math
import os
import sys
from functools import partial

import torch
from tqdm import tqdm

import tasks
import tasks_ood
from baselines import BASELINES, LASSO_ALPHAS, PIP_NAMES, for_task, model_predict
from model import ICLModel, ModelConfig
from harness import (UserError, atomic_write, check_device, load_checkpoint, run_command, save_figure,
                     serialize, short, step_checkpoints)
from configurator import defaults_of, help_text, parse_value

# -----------------------------------------------------------------------------
# defaults, each overridable with --key=value
n_prompts = 6400      # fixed eval prompts (the paper's notebook: 100 batches of 64)
batch_size = 640      # prompts per forward pass / baseline call
seed = 0              # the prompts' seed: every model and baseline of a task sees the same prompts
task = ''             # '' = the task each run was trained on; a task name = cross-task evaluation
ood = ''              # '' | 'all' | comma list of tasks_ood.OOD_VARIANTS (linear regression only)
baselines = ''        # more baselines to draw and score: comma list of baselines.BASELINES, or lasso_sweep
baseline_run = ''     # trained run(s) as score baseline: RUN, or task=RUN,task=RUN (paper: GPT-2 trees)
score_vs = ''         # '' = each task's own (tasks.TASKS); a baselines.BASELINES name; or task=NAME,...
all_ckpts = False     # evaluate every kept ckpt_<step>.pt too (training trajectories, paper Figs. 4-6)
plot = True           # write the PNGs
out = ''              # path prefix of the multi-run outputs: <out>.md/.csv score table, <out>_<task>.png
device = 'cpu'        # cpu | cuda | cuda:N
cache = ''            # results cache: '' = $EVAL_CACHE or ~/.cache/icl-hybrids/eval, 'off', or a directory
# -----------------------------------------------------------------------------
DEFAULTS = defaults_of(globals())
# Table 3's rows
ARCH_ORDER = ('gpt2', 'gpt2_rms', 'gpt2_rope', 'gpt2_swiglu', 'gpt2_rms_swiglu', 'gpt2_rms_rope',
              'gpt2_rope_swiglu', 'llama', 'llama_mamba_pos', 'llama_mamba_ffn', 'llama_mamba', 'mamba',
              'mambaformer')
COLUMNS = dict(linear_regression='Linear', sparse_linear_regression='Sparse Linear',
               relu2nn_regression='2-Layer MLP', decision_tree='Decision Tree', sparse_parity='Sparse Parity',
               mqar='Vector MQAR')
# refuse an evaluation whose error tables would take more than this share of the free memory
MEMORY_SHARE = 0.5

# -----------------------------------------------------------------------------
# options and runs, all checked before any work

def _available_memory():
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return 2**40  # unknown: don't refuse on a guess


def _writable_dir(path):
    # the nearest existing ancestor of path must be a writable directory
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return os.path.isdir(probe) and os.access(probe, os.W_OK), probe


def parse_args(argv):
    cfg = dict(DEFAULTS)
    runs = [a for a in argv if not a.startswith('--')]
    for arg in (a for a in argv if a.startswith('--')):
        key, eq, raw = arg[2:].partition('=')
        if key not in cfg or not eq:
            raise UserError(f"unknown option {short(arg)}; evaluate.py takes runs and --key=value "
                            f"with key in: {', '.join(cfg)} (python evaluate.py --help)")
        if type(cfg[key]) is str and raw in ('True', 'False'):
            value = raw == 'True'  # a bool where text is expected: only --ood takes one
        else:
            value = parse_value(key, raw, cfg[key])
        if key == 'ood' and type(value) is bool:
            value = 'all' if value else ''  # --ood=True: the whole suite
        if type(value) is not type(cfg[key]):
            raise UserError(f"--{key} must be a {type(cfg[key]).__name__} (like {cfg[key]!r}), "
                            f"got {short(raw)}")
        cfg[key] = value
    variants = tasks_ood.OOD_VARIANTS if cfg['ood'] == 'all' else [v for v in cfg['ood'].split(',') if v]
    cfg['variants'] = [v for v in variants if v != 'standard']
    extra = []
    for name in filter(None, cfg['baselines'].split(',')):
        extra += [f'lasso_{a:g}' for a in LASSO_ALPHAS] if name == 'lasso_sweep' else [name]
    cfg['extra'] = extra
    bad_variants = sorted(set(cfg['variants']) - set(tasks_ood.OOD_VARIANTS))
    cfg['score_vs_by_task'] = by_task(cfg['score_vs'], 'score_vs', 'NAME')
    bad_baselines = sorted({*cfg['extra'], *cfg['score_vs_by_task'].values()} - {*BASELINES, ''})
    checks = ((not runs,
               "usage: python evaluate.py out/RUN [out/RUN2 ...] [--key=value ...] (--help lists the keys)"),
              (cfg['n_prompts'] < 2, f"n_prompts must be >= 2, got {short(cfg['n_prompts'])}"),
              (cfg['batch_size'] < 1, f"batch_size must be >= 1, got {short(cfg['batch_size'])}"),
              (not 0 <= cfg['seed'] <= 2**63 - 1,
               f"seed must be in [0, 2**63 - 1], got {short(cfg['seed'])}"),
              (cfg['task'] not in ('', *tasks.TASKS),
               f"unknown task {short(cfg['task'])}; tasks are {', '.join(tasks.TASKS)}"),
              (bad_variants,
               f"unknown OOD variant(s) {short(bad_variants)}; "
               f"choose from {', '.join(tasks_ood.OOD_VARIANTS)}"),
              (bad_baselines,
               f"unknown baseline(s) {short(bad_baselines)}; choose from {', '.join(BASELINES)}, "
               "lasso_sweep"))
    for bad, msg in checks:
        if bad:
            raise UserError(msg)
    check_device(cfg['device'])
    cfg['baseline_runs'] = by_task(cfg['baseline_run'], 'baseline_run', 'RUN')
    if cfg['out'] and (cfg['out'].endswith(os.sep) or os.path.isdir(cfg['out'])):
        # a directory: its table.md, table.csv, table_<task>.png
        cfg['out'] = os.path.join(cfg['out'], 'table')
    if cfg['out']:
        ok, where = _writable_dir(os.path.dirname(cfg['out']) or '.')
        if not ok:
            raise UserError(f"--out={short(cfg['out'])}: cannot write there "
                            f"({where} is not a writable directory)")
    return runs, cfg


def run_checkpoints(run, every):
    """(directory the outputs go to, [checkpoint paths]): a run directory's ckpt.pt (its latest) after, when
    asked, every ckpt_<step>.pt; or the one checkpoint file given"""
    if os.path.isfile(run):
        return os.path.dirname(run) or '.', [run]
    steps = [p for _, p in step_checkpoints(run)]
    latest = os.path.join(run, 'ckpt.pt')
    if not os.path.isdir(run) or (not steps and not os.path.exists(latest)):
        raise UserError(f"no checkpoints in {short(run)} (expected a run directory with ckpt.pt or "
                        "ckpt_<step>.pt written by train.py, or a checkpoint file)")
    if not os.path.exists(latest):
        latest = steps[-1]
    paths = steps if every else []
    if latest not in paths:
        # a ckpt.pt that is a copy of the last step checkpoint is skipped later, by its step
        paths.append(latest)
    return run, paths


def plan_run(run, cfg):
    """everything about one run that can be checked before any evaluation: paths, config, task, baseline"""
    out_dir, paths = run_checkpoints(run, cfg['all_ckpts'])
    latest = load_checkpoint(paths[-1])
    rc = latest['config']
    task = cfg['task'] or rc['task']
    record = tasks.get(task)
    if cfg['variants'] and task != 'linear_regression':
        raise UserError("the OOD suite is defined for linear regression; add --task=linear_regression to "
                        f"evaluate this {task} run on it")
    n_pts = rc['n_points']  # the prompts' length: the trained one
    if n_pts < 2:
        raise UserError(f"{run}: prompts of {n_pts} point(s) have no prediction after an example to score")
    ok, where = _writable_dir(out_dir)
    if not ok:
        raise UserError(f"cannot write the results of {run} next to it ({where} is not a writable directory)")
    score_vs = of_task(cfg['score_vs_by_task'], task) or ''
    base = score_vs or record.score_baseline
    baseline_ckpt = None
    if base == 'model':
        baseline = of_task(cfg['baseline_runs'], task)
        if baseline:
            baseline_ckpt = check_baseline_run(baseline, task, run)
            base = 'model:' + os.path.basename(os.path.normpath(baseline))
        elif record.fallback_baseline:
            base = record.fallback_baseline
            print(f"note: the paper scores {task} against a trained model (pass --baseline_run=out/RUN); "
                  f"using the classical {base} instead")
        else:
            raise UserError(f"{task} is scored against a trained model: pass --baseline_run=out/RUN")
    tkw = {k: rc.get(k, v) for k, v in tasks.TASK_DEFAULTS.items()}
    positions = [n_pts - 1] if record.predict_last else list(range(n_pts))  # mqar is scored at its query
    # a checkpoint file given alone gets results of its own (named by its step), never the run's standard ones
    file_step = latest['step'] if os.path.isfile(run) else None
    return dict(run=run, out_dir=out_dir, paths=paths, rc=rc, task=task, record=record, n_pts=n_pts,
                positions=positions, file_step=file_step, run_id=latest.get('wandb_id'),
                n_dims=rc['n_dims'], tkw=tkw, base=base, score_vs=score_vs, baseline_ckpt=baseline_ckpt)


def by_task(spec, key, what):
    """an option given for every task or per task, as {task: value}: 'X' is every task's (key None),
    'decision_tree=X1,sparse_parity=X2' one value per task (--baseline_run: a run each, --score_vs: a
    baseline each)"""
    if not spec:
        return {}
    if '=' not in spec:
        return {None: spec}
    values = {}
    for item in spec.split(','):
        task, eq, value = item.partition('=')
        if not eq or task not in tasks.TASKS or not value:
            raise UserError(f"--{key}: {short(item)} is not TASK={what} with TASK one of "
                            f"{', '.join(tasks.TASKS)}")
        values[task] = value
    return values


def of_task(values, task):
    """one task's value of a by_task() dict: its own, else every task's (None when neither)"""
    return values.get(task, values.get(None))


def check_baseline_run(baseline, task, run):
    """the checkpoint of a baseline run trained on the task it is a baseline for"""
    _, paths = run_checkpoints(baseline, False)
    trained = load_checkpoint(paths[-1])['config']['task']
    if trained != task:
        raise UserError(f"--baseline_run {short(baseline)} was trained on {trained}, but {run} is evaluated "
                        f"on {task}: a baseline must be trained on the same task")
    return paths[-1]


def check_memory(cfg, plans):
    # the per-prompt error tables kept in memory: the zero predictor, the baselines and one model per run
    curves = max((3 + len(p['record'].plot_baselines) + len(cfg['extra'])) * p['n_pts'] for p in plans)
    need = cfg['n_prompts'] * curves * 4 * (1 + len(cfg['variants']))  # float32 errors
    if need > MEMORY_SHARE * _available_memory():
        raise UserError(f"n_prompts={cfg['n_prompts']:,} needs about {need / 2**30:,.1f} GiB "
                        f"for its error tables, more than {MEMORY_SHARE:.0%} of the free memory "
                        f"({_available_memory() / 2**30:,.1f} GiB): ask for fewer prompts")

# -----------------------------------------------------------------------------
# models, prompts, errors, the score

def build_model(path, task, n_dims, n_pts, dev):
    ckpt = load_checkpoint(path)  # a UserError for a missing, truncated or foreign file
    a = ckpt['model_args']
    y_dim = tasks.y_dim(task, n_dims)
    if (a.get('n_dims'), a.get('y_dim')) != (n_dims, y_dim):
        raise UserError(f"{path}: the model takes x of dimension {a.get('n_dims')} and y of dimension "
                        f"{a.get('y_dim')}, but these {task} prompts have x of dimension {n_dims} and y of "
                        f"dimension {y_dim}")
    if a.get('pos') == 'learned' and n_pts > a.get('n_positions', n_pts):
        raise UserError(f"{path}: {n_pts} points exceed the model's learned position table "
                        f"(n_positions={a['n_positions']})")
    try:
        model = ICLModel(ModelConfig(**a))
        model.load_state_dict(ckpt['model'])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: cannot rebuild the model (unknown or incompatible architecture?): "
                        f"{str(e).splitlines()[0][:300]}")
    return model.to(dev).eval(), ckpt['step']


def prompt_batches(plan, variant, cfg):
    """the evaluation prompts, batch_size at a time: (xs, ys, xq, yq), the query of prediction i xq[:, i]
    (xq None: x_i itself) and its target yq[:, i]. Drawn 64 at a time from one seeded generator whatever
    batch_size is, so the first k*64 prompts never depend on n_prompts or batch_size."""
    g = torch.Generator().manual_seed(cfg['seed'])
    pending = []
    held = 0
    for s in range(0, cfg['n_prompts'], 64):
        b = min(64, cfg['n_prompts'] - s)
        try:
            if variant:
                chunk = tasks_ood.sample_ood(variant, b, plan['n_pts'], plan['n_dims'], g)
            else:
                xs, ys = tasks.sample(plan['task'], b, plan['n_pts'], plan['n_dims'], g, **plan['tkw'])
                chunk = (xs, ys, None, ys)
        except ValueError as e:
            raise UserError(f"cannot sample {plan['task']} prompts with n_dims={plan['n_dims']}, "
                            f"n_points={plan['n_pts']}: {e}")
        pending.append(chunk)
        held += b
        while held >= cfg['batch_size'] or (s + 64 >= cfg['n_prompts'] and held):
            batch = [None if t[0] is None else torch.cat(t) for t in zip(*pending)]  # xs, ys, xq, yq
            n = min(held, cfg['batch_size'])
            pending = [tuple(None if t is None else t[n:] for t in batch)] if held > n else []
            held -= n
            yield tuple(None if t is None else t[:n] for t in batch)


def sq_err(preds, yq, task):
    e = (preds - yq).pow(2).mean(-1)  # (B, N) mean over y dims
    return e[:, -1:] if tasks.get(task).predict_last else e  # mqar is scored at its query only


def errors(fn, plan, variant, cfg, bar=None):
    """fn's squared errors on every prompt, (n_prompts, positions scored), batch_size prompts at a time"""
    out = []
    for xs, ys, xq, yq in prompt_batches(plan, variant, cfg):
        dev = cfg['device']
        preds = fn(xs.to(dev), ys.to(dev), None if xq is None else xq.to(dev)).float().cpu()
        out.append(sq_err(preds, yq, plan['task']))
        if bar is not None:
            bar.update(len(xs))
    return torch.cat(out)


def score(err, err0, errb):
    # paper §6: S = sum_i (xi_model - xi_0) / sum_i (xi_base - xi_0), xi = per-position means over the same
    # prompts. As the reference's RegressionScore, S = mean over prompts of mean_i(err - xi_0) / den, so
    # SE = std/sqrt(n)/|den|. One reduction for all three makes S(base) = 1 and S(zero) = 0 exactly. A
    # baseline no better than predicting 0 (den = 0) leaves the score undefined: None, never inf or nan.
    def per_prompt(e):  # mean over positions (a cached result holds these means already)
        return e.double() if e.dim() == 1 else e.double().mean(1)
    num = per_prompt(err).mean() - per_prompt(err0).mean()
    den = per_prompt(errb).mean() - per_prompt(err0).mean()
    if den == 0 or not torch.isfinite(num / den):
        return dict(score=None, se=None, ci95=None)
    s = (num / den).item()
    se = (per_prompt(err).std() / math.sqrt(len(err)) / abs(den)).item()
    return dict(score=s, se=se, ci95=[s - 1.96 * se, s + 1.96 * se])


def curve(err):
    return dict(mean=err.double().mean(0).tolist(), se=(err.double().std(0) / math.sqrt(len(err))).tolist())


def _finite(obj):  # JSON has no inf or nan: such values are written as null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def fmt_score(s, digits=3):
    if s['score'] is None:
        return 'undefined (the baseline does no better than predicting 0)'
    return f"{s['score']:.{digits}f} ± {1.96 * s['se']:.{digits}f}"

# -----------------------------------------------------------------------------
# the results cache: every predictor's errors on a prompt set, stored once

# what the numbers depend on besides the settings: a changed sampler, model, scan (the C++ kernel too) or
# baseline recomputes
_SOURCES = ('tasks.py', 'tasks_ood.py', 'model.py', 'ssm_scan.py', 'ssm_scan_cpu.py', 'ssm_scan_cpu.cpp',
            'baselines.py', 'evaluate.py')


def _sources_digest():
    h = hashlib.sha256()
    for name in _SOURCES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), 'rb') as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def cache_dir(cfg):
    """the cache's directory, or None when it is off"""
    if cfg['cache'] == 'off':
        return None
    default = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'icl-hybrids',
                           'eval')
    return os.path.expanduser(cfg['cache'] or os.environ.get('EVAL_CACHE') or default)


def file_digest(path):
    """a checkpoint's identity: the hash of its bytes (a rewritten checkpoint is another checkpoint)"""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


class Results:
    """per-prompt mean errors and the error curve of each predictor on each prompt set, kept in memory for
    this call and on disk (one small file per entry) for the next; an unreadable entry is recomputed"""

    def __init__(self, cfg):
        self.dir = cache_dir(cfg)
        self.memory = {}
        self.sources = _sources_digest()
        self.write_failed = None

    def key(self, plan, variant, cfg, predictor):
        # every setting that changes a number; batch_size and the device change the last digits
        prompts = dict(task=plan['task'], variant=variant, n_points=plan['n_pts'], n_dims=plan['n_dims'],
                       params=sorted(plan['tkw'].items()), seed=cfg['seed'], n_prompts=cfg['n_prompts'])
        setting = dict(prompts=prompts, predictor=predictor, batch_size=cfg['batch_size'],
                       device=torch.device(cfg['device']).type, sources=self.sources,
                       scan_backend=os.environ.get('SSM_SCAN_BACKEND', ''))
        return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()

    def path(self, key):
        return os.path.join(self.dir, key[:2], key + '.pt')

    def get(self, key):
        if key in self.memory:
            return self.memory[key]
        if self.dir is None or not os.path.isfile(self.path(key)):
            return None
        try:
            entry = torch.load(self.path(key), map_location='cpu', weights_only=True)
        except Exception:  # noqa: BLE001 -- a truncated or foreign file: recompute it
            return None
        self.memory[key] = entry
        return entry

    def put(self, key, entry):
        self.memory[key] = entry
        if self.dir is None or self.write_failed:
            return
        try:
            os.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
            atomic_write(self.path(key), serialize(entry))
        except OSError as e:  # a full disk must not cost the evaluation: it goes on uncached
            self.write_failed = e
            print(f"note: cannot write to the results cache {self.dir} ({e.strerror or e}); "
                  "going on without it", file=sys.stderr)


def summarize(err, **extra):
    """what a result keeps of an error table (n_prompts, positions): each prompt's mean over positions (the
    score needs only these) and the curve"""
    return dict(per_prompt=err.double().mean(1), **curve(err), **extra)

# -----------------------------------------------------------------------------
# one run

def baseline_fn(name, plan):
    # the run's own k or tree depth, where a baseline takes one
    return for_task(BASELINES[name], plan['tkw'])


def baseline_identity(name, plan):
    # a trained baseline is the content of its checkpoint, a classical one its name
    if name.startswith('model:'):
        return dict(checkpoint=file_digest(plan['baseline_ckpt']))
    return dict(baseline=name)


def evaluate_run(plan, cfg, results):
    """every checkpoint of the run and every baseline on each prompt set (the task's, and each OOD variant):
    from the cache where it holds them, computed otherwise. Returns one result dict per prompt set."""
    names = list(dict.fromkeys([plan['base'], *plan['record'].plot_baselines, *cfg['extra']]))
    variants = [''] + cfg['variants']
    digests = {}
    for path in plan['paths']:
        try:
            digests[path] = file_digest(path)
        except FileNotFoundError:
            if path == plan['paths'][-1]:
                raise UserError(f"{path} disappeared while being read")
            print(f"note: {path} disappeared while being read (rotated away by a running train.py?); skipped")
    identities = {name: baseline_identity(name, plan) for name in ['zero', *names]}
    todo = {}  # (variant, what) -> cache key
    for variant in variants:
        for name in ['zero', *names]:
            todo[variant, name] = results.key(plan, variant, cfg, identities[name])
        for path, digest in digests.items():
            todo[variant, path] = results.key(plan, variant, cfg, dict(checkpoint=digest))
    # (ckpt.pt and its hard-linked step checkpoint are one key: computed once)
    missing = list({key: k for k, key in todo.items() if results.get(key) is None}.values())
    if missing:
        print(f"{plan['run']}: {len(missing)} of {len(todo)} error curves to compute on "
              f"{cfg['n_prompts']:,} prompts ({len(todo) - len(missing)} cached)", flush=True)
    with tqdm(total=len(missing) * cfg['n_prompts'], desc=os.path.basename(os.path.normpath(plan['run'])),
              unit='prompt', unit_scale=True, leave=False, disable=None) as bar:
        for variant, what in missing:
            compute_curve(what, what in digests, variant, todo[variant, what], plan, cfg, results, bar)
    rows = []
    for variant in variants:
        curves = {name: results.get(todo[variant, name]) for name in ['zero', *names]}
        entries = [(path, digest, results.get(todo[variant, path])) for path, digest in digests.items()]
        rows.append(save_result(run_result(plan, cfg, variant, names, curves, entries), plan, variant, cfg))
    return rows


def compute_curve(what, is_checkpoint, variant, key, plan, cfg, results, bar):
    """one error curve into the cache: a checkpoint's (`what` its path) or a baseline's (`what` its name)"""
    if what.startswith('model:'):
        # a trained baseline is its checkpoint (one cache key): stored as that run's own curve, with its step
        what, is_checkpoint = plan['baseline_ckpt'], True
    if is_checkpoint:
        try:
            model, step = build_model(what, plan['task'], plan['n_dims'], plan['n_pts'], cfg['device'])
        except UserError:
            # only one of the run's earlier checkpoints may vanish (rotated away by a running train.py)
            if os.path.exists(what) or what not in plan['paths'][:-1]:
                raise
            print(f"note: {what} disappeared while being read; skipped")
            return
        err = errors(partial(model_predict, model), plan, variant, cfg, bar)
        results.put(key, summarize(err, step=step))
        return
    try:
        err = errors(baseline_fn(what, plan), plan, variant, cfg, bar)
    except ImportError as e:
        package = PIP_NAMES.get(e.name, e.name)
        raise UserError(f"baseline {what} needs the optional package {package} (pip install {package})")
    results.put(key, summarize(err))


def run_result(plan, cfg, variant, names, curves, entries):
    """the result of one prompt set: each checkpoint's curve and score (entries: (path, digest, cached
    curve)), each baseline's (curves: by name), the zero predictor's"""
    base = plan['base']
    zero = curves['zero']['per_prompt']
    ckpts = []
    seen = set()
    for path, digest, entry in entries:
        # ckpt.pt as a copy of the last step checkpoint (after cp -r, hard links become copies)
        if entry is None or entry['step'] in seen:
            continue
        seen.add(entry['step'])
        s = score(entry['per_prompt'], zero, curves[base]['per_prompt'])
        ckpts.append(dict(step=entry['step'], file=os.path.basename(path), sha256=digest[:16],
                          mean=entry['mean'], se=entry['se'], score=s))
    ckpts.sort(key=lambda k: k['step'])
    scored = {n: dict(mean=curves[n]['mean'], se=curves[n]['se'],
                      score=score(curves[n]['per_prompt'], zero, curves[base]['per_prompt']))
              for n in names}
    rc = plan['rc']
    return dict(run=plan['run'], run_id=plan['run_id'], arch=rc.get('arch', '?'), trained_task=rc['task'],
                task=plan['task'], variant=variant or 'standard', n_prompts=cfg['n_prompts'],
                n_points=plan['n_pts'], n_dims=plan['n_dims'], seed=cfg['seed'], score_baseline=base,
                positions=plan['positions'], score=ckpts[-1]['score'],
                zero=dict(mean=curves['zero']['mean'], se=curves['zero']['se']), baselines=scored,
                checkpoints=ckpts)


def result_tag(plan, variant, cfg):
    """the name of a result: what was evaluated, and every setting that changes its numbers where it is not
    the default, so no call overwrites another's; a checkpoint file given alone gets its step"""
    parts = [plan['task'], variant, plan['score_vs'] and 'vs_' + plan['base']]
    if cfg['n_prompts'] != DEFAULTS['n_prompts']:
        parts.append(f"n{cfg['n_prompts']}")
    if cfg['seed'] != DEFAULTS['seed']:
        parts.append(f"seed{cfg['seed']}")
    if plan['file_step'] is not None:
        parts.append(f"step{plan['file_step']}")
    return '_'.join(filter(None, parts))


def merge_earlier(res, path):
    """res with what an earlier call wrote to the same file kept: its checkpoints (the trajectory of an
    --all_ckpts call) and baselines that this call did not compute. The same name means the same settings;
    a result of another run (a directory reused) is replaced, with a note."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return res
    same_run = old.get('run_id') == res['run_id'] or None in (old.get('run_id'), res['run_id'])
    settings = ('task', 'variant', 'n_prompts', 'seed', 'n_points', 'n_dims', 'score_baseline')
    if not same_run or [old.get(k) for k in settings] != [res[k] for k in settings]:
        print(f"note: {path} held the results of another run or setting; replaced")
        return res
    steps = {k['step'] for k in res['checkpoints']}
    kept = [k for k in old.get('checkpoints', []) if k.get('step') not in steps]
    checkpoints = sorted(kept + res['checkpoints'], key=lambda k: k['step'])
    baselines = {**old.get('baselines', {}), **res['baselines']}
    return dict(res, checkpoints=checkpoints, baselines=baselines, score=checkpoints[-1]['score'])


def save_result(res, plan, variant, cfg):
    tag = result_tag(plan, variant, cfg)
    path = os.path.join(plan['out_dir'], f'eval_{tag}.json')
    last = res['checkpoints'][-1]
    print(f"{plan['run']} | {tag} | step {last['step']} | score vs {res['score_baseline']} "
          f"{fmt_score(last['score'])} | error at the last position {last['mean'][-1]:.4g} "
          f"(zero {res['zero']['mean'][-1]:.4g})")
    res = merge_earlier(res, path)
    png = os.path.join(plan['out_dir'], f'eval_{tag}.png')
    try:
        atomic_write(path, json.dumps(_finite(res), indent=1, allow_nan=False))
        if cfg['plot']:
            draw({f"step {k['step']}": k for k in res['checkpoints']}, res, png, f"{res['arch']} on {tag}")
    except OSError as e:
        scores = ', '.join(f"step {k['step']} {fmt_score(k['score'])}" for k in res['checkpoints'][-8:])
        raise UserError(f"cannot write the results of {plan['run']} ({e.strerror or e}; disk full?): "
                        f"{path} and {png} keep what they held; the scores computed: {scores}")
    return res

# -----------------------------------------------------------------------------
# plots and the table

def draw(curves, res, path, title):
    """squared error vs context length over the zero predictor's (like the paper's plots), 99% CI bands."""
    import matplotlib.pyplot as plt
    plt.switch_backend('agg')  # files only, no display needed
    z = sum(res['zero']['mean']) / len(res['zero']['mean'])  # E[y^2]: the zero predictor sits at 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = res['positions']
    # one run's checkpoints: a ramp
    trajectory = all(k.startswith('step') for k in curves) and len(curves) > 1
    styles = []
    for i, (label, v) in enumerate(curves.items()):
        color = plt.cm.viridis(i / max(1, len(curves) - 1)) if trajectory else f'C{i}'
        styles.append((label, v, dict(color=color, lw=2)))
    first = 1 if trajectory else len(curves)
    for i, (name, v) in enumerate(res['baselines'].items()):
        styles.append((name, v, dict(color=f'C{(i + first) % 10}', ls='--', lw=1.2)))
    for label, v, kw in styles:
        m = torch.tensor(v['mean']) / z
        se = torch.tensor(v['se']) / z
        ax.plot(x, m, marker='o' if len(x) == 1 else None, label=label, **kw)
        ax.fill_between(x, m - 2.576 * se, m + 2.576 * se, color=kw['color'], alpha=0.2, lw=0)
    ax.axhline(1.0, color='gray', ls=':', lw=1, label='zero')
    ax.set(xlabel='in-context examples', ylabel='squared error / zero predictor', title=title,
           ylim=(-0.05, 1.6))
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _suffixes(paths):
    """the shortest path endings that tell these runs apart (a/gpt2, b/gpt2), the full paths if none does"""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ['/'.join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [os.path.normpath(p) for p in paths]


def row_labels(rows):
    """one label per row of the score table: the architecture (said to be cross-task when it is), and where
    two runs would share a label in the same column, their path endings instead"""
    def arch_label(r):
        cross = '' if r['task'] == r['trained_task'] else f" (trained on {r['trained_task']})"
        return r['arch'] + cross
    labels = [arch_label(r) for r in rows]
    clashing = set()
    for i, r in enumerate(rows):
        for j in range(i):
            same_run = os.path.normpath(rows[j]['run']) == os.path.normpath(r['run'])
            if labels[j] == labels[i] and rows[j]['task'] == r['task'] and not same_run:
                clashing.add(labels[i])
    which = [i for i, label in enumerate(labels) if label in clashing]
    if which:
        for i, name in zip(which, _suffixes([rows[i]['run'] for i in which])):
            labels[i] = name
    return labels


def write_outputs(rows, prefix, do_plot):
    rows = [r for r in rows if r['variant'] == 'standard']
    labels = row_labels(rows)
    # the paper's five columns, MQAR if run, then any other task evaluated (a task added to tasks.TASKS)
    cols = [t for t in COLUMNS if t != 'mqar' or any(r['task'] == t for r in rows)]
    cols += [t for t in dict.fromkeys(r['task'] for r in rows) if t not in COLUMNS]
    table = {}
    for label, r in zip(labels, rows):
        table.setdefault(label, {})[r['task']] = r['score']
    keys = sorted(table, key=lambda k: (ARCH_ORDER.index(k) if k in ARCH_ORDER else len(ARCH_ORDER), k))

    def cell(s):
        return '–' if s is None or s['score'] is None else f"{s['score']:.3f} ± {1.96 * s['se']:.3f}"

    def csv_cell(s):
        return ',' if s is None or s['score'] is None else f"{s['score']:.6f},{1.96 * s['se']:.6f}"
    md = ['| model | ' + ' | '.join(COLUMNS.get(t, t) for t in cols) + ' |', '|---' * (len(cols) + 1) + '|']
    md += [f'| {k} | ' + ' | '.join(cell(table[k].get(t)) for t in cols) + ' |' for k in keys]
    bases = sorted({f"{COLUMNS.get(r['task'], r['task'])}: {r['score_baseline']}" for r in rows})
    md += ['', 'ICL regression score (paper eq. 1) ± 95% CI; baselines: ' + ', '.join(bases)]
    csv = ['model,' + ','.join(f'{t},{t}_ci95' for t in cols)]
    csv += [k + ',' + ','.join(csv_cell(table[k].get(t)) for t in cols) for k in keys]
    os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    for ext, lines in (('.md', md), ('.csv', csv)):
        atomic_write(prefix + ext, '\n'.join(lines) + '\n')
    print(f"wrote {prefix}.md and {prefix}.csv")
    # one figure per task: every run's last checkpoint
    for t in sorted({r['task'] for r in rows}) if do_plot else ():
        group = [(label, r) for label, r in zip(labels, rows) if r['task'] == t]
        shape = (group[0][1]['n_points'], group[0][1]['n_dims'])
        # the same prompts
        group = [(label, r) for label, r in group if (r['n_points'], r['n_dims']) == shape]
        draw({label: r['checkpoints'][-1] for label, r in group}, group[0][1], f'{prefix}_{t}.png',
             COLUMNS.get(t, t))


def main(argv: list) -> list:
    if any(a in ('-h', '--help') for a in argv):
        print(help_text(__file__, __doc__.strip()))
        return []
    runs, cfg = parse_args(argv)
    plans = [plan_run(run, cfg) for run in runs]  # every run checked before any evaluation
    check_memory(cfg, plans)
    results = Results(cfg)  # errors shared by the runs evaluated on the same prompts, and with later calls
    rows = [row for plan in plans for row in evaluate_run(plan, cfg, results)]
    if cfg['out']:
        try:
            write_outputs(rows, cfg['out'], cfg['plot'])
        except OSError as e:
            raise UserError(f"cannot write the table {cfg['out']}.md/.csv/_<task>.png ({e.strerror or e}; "
                            "disk full?): what they held is intact; the runs' own results are written")
    return rows


if __name__ == '__main__':
    run_command(main)
