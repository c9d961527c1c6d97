"""
The scores of several training seeds per arm, from evaluate.py's JSON files: per arm the mean over seeds with
a 95% confidence interval over seeds (Student's t), each seed's score with its interval over prompts, and the
score-by-step curves (mean over seeds per arm, each seed a thin line beneath it).
    python results/seeds.py 'out/study/sparse_*/eval_sparse_linear_regression.json' --out=results/sparse
    python results/seeds.py out/study/sparse_*/eval_sparse_linear_regression.json      # (unquoted: the files)
    python results/seeds.py --help
An arm is a run name without its `_s<seed>` suffix (sparse_gpt2_s1337, sparse_gpt2_s1338 -> sparse_gpt2).
--out=PREFIX writes PREFIX.md (the table), PREFIX.csv, PREFIX_by_step.png and PREFIX_by_step.csv (every run's
every checkpoint); --title names the figure;
--arms=a,b keeps those arms, in that order (default: all, sorted). --positions=0-8 adds the squared error at
those context lengths (mean over seeds, last checkpoint) next to the baselines' (PREFIX_curves.md and
PREFIX_curves.png): which scheme a model follows where the baselines differ. --step=N scores every run at its
step-N checkpoint instead of its last (needs evaluate.py --all_ckpts=True): arms trained for different numbers
of steps compared at equal steps; a run without that checkpoint is left out, and the table says so.
"""
import glob
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root
from harness import atomic_write, save_figure  # noqa: E402 -- a full disk leaves the old file, never a part
from sweep import t95  # noqa: E402 -- Student's t, one table for the project

OPTIONS = ('out', 'title', 'arms', 'positions', 'step')


def fail(message):  # bad input: one line, exit status 2, as train.py and evaluate.py
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)



def arm_of(run):
    return re.sub(r'_s\d+$', '', os.path.basename(os.path.normpath(run)))


def label_of(arm, runs):
    return f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"


def pyplot():
    import matplotlib
    matplotlib.use('agg')
    import matplotlib.pyplot as plt
    return plt


def over_seeds(values):
    """(mean, half-width of the 95% CI over seeds or None for one seed)"""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t95(n - 1) * sd / math.sqrt(n)


def load(patterns):
    """the results of the eval JSON files named (or matched by quoted globs), by arm"""
    arms = {}
    paths = sorted({p for pattern in patterns for p in (glob.glob(pattern) or [pattern])})
    for path in paths:
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            fail(f'cannot read {path}: {e}')
        arms.setdefault(arm_of(res['run']), []).append(res)
    return arms


def at_step(arms, step):
    # each run's result with its step-`step` checkpoint's score in place of the last one's
    kept = {}
    for arm, runs in arms.items():
        for r in runs:
            match = [c for c in r.get('checkpoints', []) if c['step'] == step]
            if match:
                kept.setdefault(arm, []).append(dict(r, score=match[0]['score']))
            else:
                print(f'note: {r["run"]} has no step-{step} checkpoint in its JSON; left out',
                      file=sys.stderr)
    return kept


def table(arms, baseline):
    header = (f'| arm | seeds | mean score vs {baseline} ± 95% CI over seeds '
              f'| each seed (± 95% CI, prompts) |')
    lines = [header,
             '|---|---|---|---|']
    most = max(len(runs) for runs in arms.values())
    csv = ['arm,seeds,mean,ci95_seeds,' + ','.join(f'seed{i}' for i in range(1, max(most, 3) + 1))]
    for arm, runs in arms.items():
        scores = [r['score']['score'] for r in runs]
        mean, half = over_seeds(scores)
        each = ', '.join(f"{r['score']['score']:.3f} ± {1.96 * r['score']['se']:.3f}" for r in runs)
        spread = f'{mean:.3f} ± {half:.3f}' if half is not None else f'{mean:.3f} (one seed)'
        lines.append(f'| {arm} | {len(runs)} | {spread} | {each} |')
        csv.append(f"{arm},{len(runs)},{mean:.6f},{'' if half is None else f'{half:.6f}'}," +
                   ','.join(f'{s:.6f}' for s in scores))
    return lines, csv


def by_step(arms, path, title, ylabel):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for arm, runs in arms.items():
        steps = sorted(set.intersection(*({c['step'] for c in r['checkpoints']} for r in runs)))
        fewer = [r['run'] for r in runs if len(r['checkpoints']) > len(steps)]
        if fewer:  # the curve is drawn at the steps every seed has: say what that leaves out
            print(f"note: {arm}: drawn at the {len(steps)} step(s) every seed has; {', '.join(fewer)} "
                  "hold more (evaluate the others with --all_ckpts=True)", file=sys.stderr)
        means, halves = [], []
        for step in steps:
            values = [next(c['score']['score'] for c in r['checkpoints'] if c['step'] == step) for r in runs]
            mean, half = over_seeds(values)
            means.append(mean)
            halves.append(half or 0.0)
        line = ax.errorbar(steps, means, halves, marker='o', ms=3, capsize=2, label=label_of(arm, runs))
        if len(runs) > 1:  # each seed thin beneath its mean: a split between failed and learned seeds shows
            for r in runs:
                xs = [c['step'] for c in r['checkpoints']]
                ys = [c['score']['score'] for c in r['checkpoints']]
                ax.plot(xs, ys, color=line.lines[0].get_color(), lw=0.8, alpha=0.35)
        print(arm.ljust(32), '  '.join(f'{s}: {m:.3f}' for s, m in zip(steps, means)))
    ax.axhline(1, color='gray', ls=':', lw=1)
    ax.set(xlabel='training step', ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def curves(arms, positions, prefix, title):
    """error by context length at `positions`: each arm's last checkpoint (mean over seeds), the baselines"""
    plt = pyplot()
    first = next(iter(arms.values()))[0]
    rows = {}
    for arm, runs in arms.items():
        means = [sum(r['checkpoints'][-1]['mean'][i] for r in runs) / len(runs) for i in positions]
        rows[label_of(arm, runs)] = means
    lines = ['| context length | ' + ' | '.join(str(i) for i in positions) + ' |',
             '|---' * (len(positions) + 1) + '|']
    baseline_rows = {f'`{name}`': [b['mean'][i] for i in positions] for name, b in first['baselines'].items()}
    baseline_rows['`zero`'] = [first['zero']['mean'][i] for i in positions]
    for label, values in {**rows, **baseline_rows}.items():
        lines.append(f'| {label} | ' + ' | '.join(f'{v:.3f}' for v in values) + ' |')
    atomic_write(prefix + '_curves.md', '\n'.join(lines) + '\n')
    print('\n'.join(lines))
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for label, values in rows.items():
        ax.plot(positions, values, marker='o', ms=3, label=label)
    for label, values in baseline_rows.items():
        ax.plot(positions, values, ls='--', lw=1.5, label=label.strip('`'))
    ax.set(xlabel='in-context examples', ylabel='squared error (mean over seeds)', title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, prefix + '_curves.png')
    plt.close(fig)


def main(argv):
    if any(a in ('-h', '--help') for a in argv):
        print(__doc__.strip())
        return
    patterns = [a for a in argv if not a.startswith('--')]
    opts = {}
    for a in (a for a in argv if a.startswith('--')):
        key, eq, value = a[2:].partition('=')
        if key not in OPTIONS or not eq:
            fail(f"unknown option {a!r}; seeds.py takes eval JSON files (or quoted globs) and "
                     f"--{'=, --'.join(OPTIONS)}= (python results/seeds.py --help)")
        opts[key] = value
    if not patterns:
        fail('no eval JSON given (python results/seeds.py --help)')
    arms = load(patterns)
    if not arms:
        fail(f'no eval JSON matches {" ".join(patterns)}')
    if 'arms' in opts:
        arms = {a: arms[a] for a in opts['arms'].split(',') if a in arms}
    else:
        arms = dict(sorted(arms.items()))
    if 'step' in opts and 'positions' in opts:
        fail('--positions reads the last checkpoint\'s errors; it cannot be combined with --step')
    if 'step' in opts:
        arms = at_step(arms, int(opts['step']))
        if not arms:
            fail(f'no run in {" ".join(patterns)} has a step-{opts["step"]} checkpoint')
    baseline = next(iter(arms.values()))[0]['score_baseline']
    lines, csv = table(arms, baseline)
    if 'step' in opts:
        lines.insert(0, f'Every run at its step-{opts["step"]} checkpoint.\n')
    print('\n'.join(lines))
    if 'out' in opts:
        prefix = opts['out']
        atomic_write(prefix + '.md', '\n'.join(lines) + '\n')
        atomic_write(prefix + '.csv', '\n'.join(csv) + '\n')
        title = opts.get('title', os.path.basename(prefix))
        by_step(arms, prefix + '_by_step.png', title, f'ICL score vs {baseline} (mean, 95% CI; thin: seeds)')
        rows = ['arm,run,step,score,ci95_prompts']  # every run's every checkpoint, behind the figure
        for arm, runs in arms.items():
            for r in runs:
                for c in r['checkpoints']:
                    value = c['score']['score']
                    half = 1.96 * c['score']['se']
                    rows.append(f"{arm},{r['run']},{c['step']},{value:.6f},{half:.6f}")
        atomic_write(prefix + '_by_step.csv', '\n'.join(rows) + '\n')
        print(f'wrote {prefix}.md, {prefix}.csv, {prefix}_by_step.png and {prefix}_by_step.csv')
        if 'positions' in opts:
            lo, _, hi = opts['positions'].partition('-')
            curves(arms, list(range(int(lo), int(hi or lo) + 1)), prefix, title)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # `--help | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
