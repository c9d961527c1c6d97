"""
Evaluate ICL runs from their checkpoints alone (docs/paper.md §5-§7): squared error per context length
over fixed seeded prompts, the ICL regression score with SE and 95% CI, cross-task and OOD evaluation,
plots, and a score table laid out like the paper's Table 3.
    python evaluate.py out/RUN [out/RUN2 ...] [--key=value ...]
    python evaluate.py out/gpt2-sparse --task=linear_regression --all_ckpts=True  # cross-task, every checkpoint
    python evaluate.py out/gpt2-linear --ood=all                                  # Garg's OOD suite
    python evaluate.py out/*-tree --baseline_run=out/gpt2-tree --out=results/table3
Writes next to each run eval_<task>[_<variant>].json (every number behind the plot) and .png;
with --out=PREFIX also PREFIX.md and PREFIX.csv (the score table) and PREFIX_<task>.png (all runs).
"""
import ast
import json
import math
import os
import re
import sys
from functools import partial

import torch
from tqdm import tqdm

import tasks
from baselines import BASELINES, FALLBACK, LASSO_ALPHAS, PAPER_BASELINE, PLOT_BASELINES, model_predict
from model import ICLModel, ModelConfig
from train import UserError, load_checkpoint

# -----------------------------------------------------------------------------
# defaults, each overridable with --key=value
n_prompts = 6400      # fixed eval prompts (the paper's notebook: 100 batches of 64)
batch_size = 640      # prompts per forward pass / baseline call
seed = 0              # the prompts' seed: every model and baseline of a task sees the same prompts
task = ''             # '' = the task each run was trained on; a task name = cross-task evaluation
ood = ''              # '' | 'all' | comma list of tasks.OOD_VARIANTS (linear regression only)
baselines = ''        # more baselines to draw and score: comma list of baselines.BASELINES names, or lasso_sweep
baseline_run = ''     # a trained run as the score's baseline (paper: GPT-2 for decision_tree, Mamba for sparse_parity)
score_vs = ''         # '' = the paper's baseline of the task; or any baselines.BASELINES name (e.g. least_squares on sparse linear)
all_ckpts = False     # evaluate every kept ckpt_<step>.pt too (training trajectories, paper Figs. 4-6)
plot = True           # write the PNGs
out = ''              # path prefix for the multi-run outputs: <out>.md/.csv score table, <out>_<task>.png
device = 'cpu'
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)}
ARCH_ORDER = ('gpt2', 'gpt2_rms', 'gpt2_rope', 'gpt2_swiglu', 'gpt2_rms_swiglu', 'gpt2_rms_rope', 'gpt2_rope_swiglu',
              'llama', 'llama_mamba_pos', 'llama_mamba_ffn', 'llama_mamba', 'mamba', 'mambaformer')  # Table 3's rows
COLUMNS = dict(linear_regression='Linear', sparse_linear_regression='Sparse Linear', relu2nn_regression='2-Layer MLP',
               decision_tree='Decision Tree', sparse_parity='Sparse Parity', mqar='Vector MQAR')

def parse_args(argv):
    cfg, runs = dict(DEFAULTS), [a for a in argv if not a.startswith('--')]
    for arg in (a for a in argv if a.startswith('--')):
        key, eq, raw = arg[2:].partition('=')
        if key not in cfg or not eq:
            raise UserError(f"unknown option {arg!r}; evaluate.py takes run directories and --key=value with key in: {', '.join(cfg)}")
        try:  # text keys take the text as it is (--task=mqar, --baselines=lasso,knn); ints and bools are literals
            value = raw if type(cfg[key]) is str and raw not in ('True', 'False') else ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        value = {True: 'all', False: ''}[value] if key == 'ood' and type(value) is bool else value  # --ood=True
        if type(value) is not type(cfg[key]):
            raise UserError(f"--{key} must be a {type(cfg[key]).__name__} (like {cfg[key]!r}), got {raw!r}")
        cfg[key] = value
    cfg['variants'] = [v for v in (tasks.OOD_VARIANTS if cfg['ood'] == 'all' else filter(None, cfg['ood'].split(','))) if v != 'standard']
    cfg['extra'] = [b for name in filter(None, cfg['baselines'].split(',')) for b in
                    ([f'lasso_{a:g}' for a in LASSO_ALPHAS] if name == 'lasso_sweep' else [name])]
    bad_v, bad_b = sorted(set(cfg['variants']) - set(tasks.OOD_VARIANTS)), sorted({*cfg['extra'], cfg['score_vs']} - {*BASELINES, ''})
    for bad, msg in ((not runs, "usage: python evaluate.py out/RUN [out/RUN2 ...] [--key=value ...]"),
                     (cfg['n_prompts'] < 2 or cfg['batch_size'] < 1, "n_prompts must be >= 2 and batch_size >= 1"),
                     (cfg['task'] not in ('', *tasks.TASK_NAMES), f"unknown task {cfg['task']!r}; tasks are {', '.join(tasks.TASK_NAMES)}"),
                     (bad_v, f"unknown OOD variant(s) {bad_v}; choose from {', '.join(tasks.OOD_VARIANTS)}"),
                     (bad_b, f"unknown baseline(s) {bad_b}; choose from {', '.join(BASELINES)}, lasso_sweep")):
        if bad:
            raise UserError(msg)
    return runs, cfg

# -----------------------------------------------------------------------------
# checkpoints, prompts, errors, the score

def find_ckpts(run, every):
    """ckpt.pt (the latest), after every ckpt_<step>.pt when asked (those are hard links: ckpt.pt is the last one)."""
    files = os.listdir(run) if os.path.isdir(run) else []
    steps = sorted((int(m[1]), os.path.join(run, f)) for f in files if (m := re.fullmatch(r'ckpt_(\d+)\.pt', f)))
    if not steps and 'ckpt.pt' not in files:
        raise UserError(f"no checkpoints in {run} (expected ckpt.pt or ckpt_<step>.pt written by train.py)")
    paths = [p for _, p in steps] if every else []
    latest = os.path.join(run, 'ckpt.pt') if 'ckpt.pt' in files else steps[-1][1]
    return paths + ([latest] if not paths or not os.path.samefile(latest, paths[-1]) else [])

def build_model(path, task, n_dims, n_pts, dev):
    ckpt = load_checkpoint(path)  # a UserError for a missing, truncated or foreign file
    a = ckpt['model_args']
    if (a.get('n_dims'), a.get('y_dim')) != (n_dims, tasks.y_dim(task, n_dims)):
        raise UserError(f"{path}: the model takes x of dimension {a.get('n_dims')} and y of dimension {a.get('y_dim')}, but "
                        f"these {task} prompts have x of dimension {n_dims} and y of dimension {tasks.y_dim(task, n_dims)}")
    if a.get('pos') == 'learned' and n_pts > a.get('n_positions', n_pts):
        raise UserError(f"{path}: {n_pts} points exceed the model's learned position table (n_positions={a['n_positions']})")
    try:
        model = ICLModel(ModelConfig(**a))
        model.load_state_dict(ckpt['model'])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: cannot rebuild the model (unknown or incompatible architecture?): {str(e).splitlines()[0][:300]}")
    return model.to(dev).eval(), ckpt['step']

def make_prompts(task, variant, n_pts, n_dims, tkw, cfg):
    g, chunks = torch.Generator().manual_seed(cfg['seed']), []
    for s in range(0, cfg['n_prompts'], 64):  # 64 at a time whatever batch_size is: the first k*64 never depend on n_prompts
        b = min(64, cfg['n_prompts'] - s)
        try:  # (xs, ys, xq, yq): the query of prediction i is xq[:, i], its target yq[:, i]
            chunks.append(tasks.sample_ood(variant, b, n_pts, n_dims, g) if variant else 2 * tasks.sample(task, b, n_pts, n_dims, g, **tkw))
        except ValueError as e:
            raise UserError(f"cannot sample {task} prompts with n_dims={n_dims}, n_points={n_pts}: {e}")
    xs, ys, xq, yq = (torch.cat(t) for t in zip(*chunks))
    return xs, ys, (xs if torch.equal(xq, xs) else xq), yq

def run_batched(fn, prompts, task, cfg, desc):  # fn's squared errors, batch_size prompts at a time
    xs, ys, xq, yq = prompts
    bs, dev, out = cfg['batch_size'], cfg['device'], []
    for s in tqdm(range(0, len(xs), bs), desc=desc, leave=False, disable=None):
        out.append(fn(xs[s:s + bs].to(dev), ys[s:s + bs].to(dev), None if xq is xs else xq[s:s + bs].to(dev)).float().cpu())
    return sq_err(torch.cat(out), yq, task)

def sq_err(preds, yq, task):
    e = (preds - yq).pow(2).mean(-1)  # (B, N) mean over y dims
    return e[:, -1:] if task in tasks.PREDICT_LAST else e  # mqar is scored at its query only

def score(err, err0, errb):
    # paper §6: S = sum_i (xi_model - xi_0) / sum_i (xi_base - xi_0), xi = per-position means over the same prompts.
    # As the reference's RegressionScore, S = mean over prompts of mean_i(err - xi_0) / den, so SE = std/sqrt(n)/|den|.
    # One reduction for all three makes S(base) = 1 and S(zero) = 0 exactly.
    m = lambda e: e.double().mean(1)  # per-prompt mean over positions
    num, den = m(err).mean() - m(err0).mean(), m(errb).mean() - m(err0).mean()
    s, se = (num / den).item(), (m(err).std() / math.sqrt(len(err)) / abs(den)).item()
    return dict(score=s, se=se, ci95=[s - 1.96 * se, s + 1.96 * se])

def curve(err):
    return dict(mean=err.double().mean(0).tolist(), se=(err.double().std(0) / math.sqrt(len(err))).tolist())

# -----------------------------------------------------------------------------
# one run

def evaluate_run(run, cfg, cache):
    paths = find_ckpts(run, cfg['all_ckpts'])
    rc = load_checkpoint(paths[-1])['config']
    task = cfg['task'] or rc['task']
    n_dims, n_pts, tkw = rc['n_dims'], rc['n_points'], {k: rc.get(k, v) for k, v in tasks.TASK_DEFAULTS.items()}
    if cfg['variants'] and task != 'linear_regression':
        raise UserError(f"the OOD suite is defined for linear regression; add --task=linear_regression to evaluate this {task} run on it")
    base = cfg['score_vs'] or PAPER_BASELINE[task]
    if base == 'model':
        base = 'model:' + os.path.basename(os.path.normpath(cfg['baseline_run'])) if cfg['baseline_run'] else FALLBACK[task]
        if not cfg['baseline_run']:
            print(f"note: the paper scores {task} against a trained model (pass --baseline_run=out/RUN); using the classical {base} instead")
    names, results = list(dict.fromkeys([base, *PLOT_BASELINES[task], *cfg['extra']])), {}
    for variant in [''] + cfg['variants']:
        key = (task, variant, n_pts, n_dims, tuple(sorted(tkw.items())), cfg['seed'], cfg['n_prompts'])
        if key not in cache:
            cache[key] = dict(prompts=make_prompts(task, variant, n_pts, n_dims, tkw, cfg))
        c = cache[key]
        for name in (n for n in ['zero', *names] if n not in c):
            fn = partial(model_predict, build_model(find_ckpts(cfg['baseline_run'], False)[-1], task, n_dims, n_pts, cfg['device'])[0]) \
                if name.startswith('model:') else BASELINES[name]
            try:
                c[name] = run_batched(fn, c['prompts'], task, cfg, f"{name} {variant or task}")
            except ImportError as e:
                raise UserError(f"baseline {name} needs the optional package {e.name} (pip install {e.name})")
        results[variant] = dict(c=c, ckpts=[])
    for path in paths:  # one model in memory at a time
        model, step = build_model(path, task, n_dims, n_pts, cfg['device'])
        for variant, r in results.items():
            err = run_batched(partial(model_predict, model), r['c']['prompts'], task, cfg, f"step {step} {variant or task}")
            r['ckpts'].append(dict(step=step, file=os.path.basename(path), **curve(err), score=score(err, r['c']['zero'], r['c'][base])))
    rows = []
    for variant, r in results.items():
        c, tag = r['c'], '_'.join(filter(None, [task, variant, cfg['score_vs'] and 'vs_' + base]))
        res = dict(run=run, arch=rc.get('arch', '?'), trained_task=rc['task'], task=task, variant=variant or 'standard',
                   n_prompts=cfg['n_prompts'], n_points=n_pts, n_dims=n_dims, seed=cfg['seed'], score_baseline=base,
                   positions=list(range(n_pts))[-c['zero'].shape[1]:], score=r['ckpts'][-1]['score'], zero=curve(c['zero']),
                   baselines={n: dict(**curve(c[n]), score=score(c[n], c['zero'], c[base])) for n in names}, checkpoints=r['ckpts'])
        with open(os.path.join(run, f'eval_{tag}.json'), 'w') as f:
            json.dump(res, f, indent=1)
        s, last = res['score'], r['ckpts'][-1]
        print(f"{run} | {tag} | step {last['step']} | score vs {base} {s['score']:.3f} ± {1.96 * s['se']:.3f} | error at the last position {last['mean'][-1]:.4g} (zero {res['zero']['mean'][-1]:.4g})")
        if cfg['plot']:
            draw({f"step {k['step']}": k for k in r['ckpts']}, res, os.path.join(run, f'eval_{tag}.png'), f"{res['arch']} on {tag}")
        rows.append(res)
    return rows

# -----------------------------------------------------------------------------
# plots and the table

def draw(curves, res, path, title):
    """squared error vs context length over the zero predictor's (like the paper's plots), 99% CI bands."""
    import matplotlib.pyplot as plt
    plt.switch_backend('agg')  # files only, no display needed
    z = sum(res['zero']['mean']) / len(res['zero']['mean'])  # E[y^2]: the zero predictor sits at 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x, traj = res['positions'], all(k.startswith('step') for k in curves)  # one run's checkpoints get a colour ramp
    styles = [(k, v, dict(color=plt.cm.viridis(i / max(1, len(curves) - 1)) if traj and len(curves) > 1 else f'C{i}', lw=2))
              for i, (k, v) in enumerate(curves.items())]
    styles += [(n, v, dict(color=f'C{(i + (1 if traj else len(curves))) % 10}', ls='--', lw=1.2)) for i, (n, v) in enumerate(res['baselines'].items())]
    for label, v, kw in styles:
        m, se = torch.tensor(v['mean']) / z, torch.tensor(v['se']) / z
        ax.plot(x, m, marker='o' if len(x) == 1 else None, label=label, **kw)
        ax.fill_between(x, m - 2.576 * se, m + 2.576 * se, color=kw['color'], alpha=0.2, lw=0)
    ax.axhline(1.0, color='gray', ls=':', lw=1, label='zero')
    ax.set(xlabel='in-context examples', ylabel='squared error / zero predictor', title=title, ylim=(-0.05, 1.6))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

def write_outputs(rows, prefix, do_plot):
    rows = [r for r in rows if r['variant'] == 'standard']
    label = lambda r: r['arch'] + ('' if r['task'] == r['trained_task'] else f" (trained on {r['trained_task']})")
    if len({(label(r), r['task']) for r in rows}) < len(rows):  # two runs of one architecture: name rows by run
        label = lambda r: os.path.basename(os.path.normpath(r['run']))
    cols = [t for t in COLUMNS if t != 'mqar' or any(r['task'] == t for r in rows)]  # the paper's five (+ MQAR if run)
    table = {}
    for r in rows:
        table.setdefault(label(r), {})[r['task']] = r['score']
    keys = sorted(table, key=lambda k: (ARCH_ORDER.index(k) if k in ARCH_ORDER else len(ARCH_ORDER), k))
    cell = lambda s: '–' if s is None else f"{s['score']:.3f} ± {1.96 * s['se']:.3f}"
    md = ['| model | ' + ' | '.join(COLUMNS[t] for t in cols) + ' |', '|---' * (len(cols) + 1) + '|']
    md += [f'| {k} | ' + ' | '.join(cell(table[k].get(t)) for t in cols) + ' |' for k in keys]
    md += ['', 'ICL regression score (paper eq. 1) ± 95% CI; baselines: ' + ', '.join(sorted({f"{COLUMNS[r['task']]}: {r['score_baseline']}" for r in rows}))]
    csv = ['model,' + ','.join(f'{t},{t}_ci95' for t in cols)]
    csv += [k + ',' + ','.join(f"{table[k][t]['score']:.6f},{1.96 * table[k][t]['se']:.6f}" if t in table[k] else ',' for t in cols) for k in keys]
    os.makedirs(os.path.dirname(prefix) or '.', exist_ok=True)
    for ext, lines in (('.md', md), ('.csv', csv)):
        with open(prefix + ext, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    print(f"wrote {prefix}.md and {prefix}.csv")
    for t in sorted({r['task'] for r in rows}) if do_plot else ():  # one figure per task: every run's last checkpoint
        group = [r for r in rows if r['task'] == t]
        group = [r for r in group if (r['n_points'], r['n_dims']) == (group[0]['n_points'], group[0]['n_dims'])]  # same prompts
        draw({label(r): r['checkpoints'][-1] for r in group}, group[0], f'{prefix}_{t}.png', COLUMNS[t])

def main(argv):
    runs, cfg = parse_args(argv)
    cache = {}  # prompts and baseline errors, shared by the runs evaluated on the same task
    rows = [row for run in runs for row in evaluate_run(run, cfg, cache)]
    if cfg['out']:
        write_outputs(rows, cfg['out'], cfg['plot'])

if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
