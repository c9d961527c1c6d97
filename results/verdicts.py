"""
Reads saved per-checkpoint scores (the PREFIX_by_step.csv files results/seeds.py writes: arm, run, step,
score; or the score table evaluate.py --out writes, one run a row)
by the verdict rule of RESULTS.md part 3, with sweep.py's own statistics: per arm the mean over seeds with its
95% CI, failures to learn as k of n with the exact interval of the rate, the trend over the last three
checkpoints; per comparison the difference with its 95% CI (paired by seed when both arms ran the same seeds,
else Welch) and the verdict (different / level within +-margin / undecided). Parts 1 and 2 were trained before
the rule was written; this is how their saved scores are read by it without retraining.
    python results/verdicts.py results/tree_vs_gpt2_by_step.csv --compare=tree_gpt2_rms_quirks-tree_gpt2_rms
    python results/verdicts.py results/mlp_vs_gdmlp_by_step.csv --step=3000 --constant=1
    python results/verdicts.py --help
A run's seed is its name's _s<seed> suffix (a run without one is seed 1337, train.py's default).
--step=N scores every run at its step-N checkpoint (default: each run's last; the trend then uses the
checkpoints up to N); --arms=a,b keeps those arms in that order; --compare=a-b,c-d (a minus b; default every
arm against the first); --constant=X also compares each arm with the constant X (a paper's number, or 1 = the
baseline) by a one-sample t over seeds; --margin and --fail_below as sweep.py's (0.05 and 0.1).
"""
import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root
import sweep  # noqa: E402 -- one implementation of the statistics and the rule

OPTIONS = dict(step=None, arms='', compare='', constant=None, margin=0.05, fail_below=0.1)


def fail(message):  # bad input: one line, exit status 2, as the project's other scripts
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def parse(argv):
    opts, files = dict(OPTIONS), []
    for arg in argv:
        if not arg.startswith('--'):
            files.append(arg)
            continue
        key, eq, raw = arg[2:].partition('=')
        if key not in OPTIONS or not eq:
            fail(f"{arg}: the options are {', '.join(f'--{k}=' for k in OPTIONS)} (--help)")
        try:
            opts[key] = raw if key in ('arms', 'compare') else (int(raw) if key == 'step' else float(raw))
        except ValueError:
            fail(f"{arg}: not a number")
    if len(files) != 1:
        fail("give one PREFIX_by_step.csv file")
    return files[0], opts


def read_runs(path, opts):
    """the runs of the file as sweep.summarize takes them: arm, seed, score at the step, the curve to it"""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    curves = {}
    if rows and 'model' in rows[0]:  # evaluate.py's score table: one run a row, its last checkpoint only
        task = next(k for k in rows[0] if k != 'model' and not k.endswith('_ci95'))
        for r in rows:
            curves[(re.sub(r'_s\d+$', '', r['model']), r['model'])] = [(None, float(r[task]))]
    elif rows and {'arm', 'run', 'step', 'score'} <= set(rows[0]):
        for r in rows:
            curves.setdefault((r['arm'], r['run']), []).append((int(r['step']), float(r['score'])))
    else:
        fail(f"{path} has neither arm, run, step, score columns nor evaluate.py's model column")
    runs = []
    for (arm, run), curve in curves.items():
        curve = [p for p in curve if opts['step'] is None or p[0] is None or p[0] <= opts['step']]
        curve.sort(key=lambda p: -1 if p[0] is None else p[0])
        if not curve or (opts['step'] is not None and curve[-1][0] != opts['step']):
            print(f"note: {run} has no step-{opts['step']} checkpoint; left out")
            continue
        seed = re.search(r'_s(\d+)$', run)
        runs.append(dict(arm=arm, seed=int(seed.group(1)) if seed else 1337, score=curve[-1][1], curve=curve,
                         eval_step=curve[-1][0], outcome='done', cfg=dict(task='-'), label=run,
                         baseline='-', task='-', n_prompts=0))
    return runs


def main(argv):
    if any(a in ('-h', '--help') for a in argv):
        print(__doc__.strip())
        return 0
    path, opts = parse(argv)
    runs = read_runs(path, opts)
    names = opts['arms'].split(',') if opts['arms'] else sorted({r['arm'] for r in runs})
    missing = [a for a in names if not any(r['arm'] == a for r in runs)]
    if missing or not names:
        fail(f"no runs of arm(s) {', '.join(missing) or '(none)'} in {path}")
    pairs = []
    for item in filter(None, opts['compare'].split(',')):
        a, sep, b = item.partition('-')
        if not sep or a not in names or b not in names:
            fail(f"--compare {item}: write A-B with two arms of {', '.join(names)}")
        pairs.append((a, b))
    at = f"the step-{opts['step']:,} checkpoint" if opts['step'] is not None else "each run's last checkpoint"
    spec = dict(arms={a: None for a in names}, reference=names[0], compare=pairs or None,
                margin=opts['margin'], fail_below=opts['fail_below'], scored_at=at)
    runs = [r for r in runs if r['arm'] in spec['arms']]
    summary = sweep.summarize(spec, runs)
    md, _, _ = sweep.table_text(spec, runs, summary)
    print(f"{path}, read by the verdict rule\n")
    print('\n'.join(line for line in md if not line.startswith(('Not finished', 'Score: '))))
    if opts['constant'] is not None:
        c = opts['constant']
        print(f"\n| arm − {c:g} | Δ (95% CI) | verdict (margin ±{opts['margin']:g}) |\n|---|---|---|")
        for row in summary[0]:
            d = sweep.mean_ci([v - c for v in row['scores'].values()])
            delta, _ = sweep.diff_text(dict(d, test='one seed: no CI'))
            print(f"| {row['arm']} − {c:g} | {delta} | {sweep.verdict(d, opts['margin'])} |")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
