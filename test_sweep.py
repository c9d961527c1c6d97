"""
sweep.py through real processes (tiny runs): a 2 x 2 sweep and its table, kills and reruns that end bit-identical
to an uninterrupted sweep, a failing arm, bad input, --dry-run, --slurm, --cost; the statistics against
hand-computed values; the study's and the paper's specs.
    python -m pytest -q test_sweep.py
"""
import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

import harness
import sweep
import train
from conftest import ENV, ROOT, TINY, one_error_line, python, same_tensors, state

slow = pytest.mark.slow
# the tiny model of conftest, trained long enough (150 steps, a checkpoint every 5) to be stopped mid-way
RUN = [a for a in TINY if not a.startswith("--max_iters")] + ["--max_iters=150"]
GRID = ["--vary=norm=layernorm,rmsnorm", "--seeds=1,2", "--jobs=2", "--threads=1", "--evaluate.n_prompts=64"]
RUNS = ["layernorm/s1", "rmsnorm/s1", "layernorm/s2", "rmsnorm/s2"]


def run_sweep(*args, timeout=600):
    return python("sweep.py", *args, timeout=timeout)


def start_sweep(*args):
    return subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_step(run_dir, step, timeout=300):
    """until the run in run_dir has logged `step` (a training process mid-way)"""
    path = os.path.join(run_dir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.exists(path):
            lines = [l for l in open(path).read().splitlines() if l.strip()]
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} never reached step {step}")


def snapshot(folder):
    """every file under folder with its size and mtime: 'nothing written' is this staying equal"""
    found = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            found[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns)
    return found


def same_final_weights(out_a, out_b):
    for run in RUNS:
        a, b = state(os.path.join(out_a, run)), state(os.path.join(out_b, run))
        assert a["step"] == b["step"] == 150, run
        assert same_tensors(a["model"], b["model"]), f"{run}: weights differ"
        assert same_tensors(a["optimizer"], b["optimizer"]), f"{run}: Adam state differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """an uninterrupted 2 x 2 sweep (arms layernorm, rmsnorm; seeds 1, 2), two runs at a time"""
    out = str(tmp_path_factory.mktemp("sweep") / "ref")
    r = run_sweep(*RUN, *GRID, f"--out={out}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out, r

# -----------------------------------------------------------------------------
# the statistics, against values computed by hand


def test_t_quantiles_floor_the_degrees_of_freedom():
    assert sweep.t95(1) == 12.706 and sweep.t95(2) == 4.303 and sweep.t95(30) == 2.042
    assert sweep.t95(3.9) == 3.182  # Welch's fractional df: floored
    assert sweep.t95(35) == 2.042 and sweep.t95(1000) == 1.980  # between entries: the one below (wider)
    with pytest.raises(ValueError):
        sweep.t95(0.5)


def test_paired_and_welch_differences_match_hand_computed_values():
    # paired: differences 0.4, 0.2, 0.3 -> mean 0.3, sd 0.1, se 0.1 / sqrt(3) = 0.057735, t(2) = 4.303
    a, b = {1: 0.9, 2: 0.8, 3: 0.7}, {1: 0.5, 2: 0.6, 3: 0.4}
    d = sweep.difference(a, b)
    assert d["test"] == "paired" and d["n"] == 3 and d["df"] == 2
    assert d["mean"] == pytest.approx(0.3) and d["hi"] - d["mean"] == pytest.approx(0.248434, abs=1e-5)
    # Welch: a = 1..4 (mean 2.5, var 5/3), b = 2, 4, 6 (mean 4, var 4): se^2 = 5/12 + 4/3 = 1.75,
    # df = 1.75^2 / ((5/12)^2 / 3 + (4/3)^2 / 2) = 3.2347 -> 3, t(3) = 3.182, half-width 3.182 * 1.322876
    d = sweep.difference({1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}, {5: 2.0, 6: 4.0, 7: 6.0})
    assert d["test"] == "Welch" and d["df"] == pytest.approx(3.2347, abs=1e-4)
    assert d["mean"] == pytest.approx(-1.5) and d["hi"] - d["mean"] == pytest.approx(4.209391, abs=1e-5)
    assert sweep.diff_text(d)[1] == "Welch, 4 and 3 seeds"  # the table names both arms' seeds
    # the same seeds paired, other seeds Welch; one seed on a side: the difference without a CI
    assert sweep.difference({1: 1.0, 2: 2.0}, {1: 0.5, 3: 1.0})["test"] == "Welch"
    one = sweep.difference({1: 0.9}, {1: 0.5, 2: 0.7})
    assert one["mean"] == pytest.approx(0.3) and one["lo"] is None
    # the per-arm mean: 0.8, 0.9 -> sd 0.070711, se 0.05, t(1) = 12.706
    m = sweep.mean_ci([0.8, 0.9])
    assert m["mean"] == pytest.approx(0.85) and m["hi"] - m["mean"] == pytest.approx(0.6353)
    assert sweep.mean_ci([0.8])["lo"] is None


def test_mamba_keys_are_free_for_a_model_without_mamba():
    # a GPT-2 run saved with another mamba_init (or d_state) is the same model: no mismatch; a Mamba run is not
    gpt2 = dict(train.DEFAULTS, mamba_init="gpt2", d_state=8)
    assert sweep.mismatch(dict(train.DEFAULTS), gpt2) == []
    mamba = dict(train.DEFAULTS, layer_pattern="M", ffn="none", pos="none")
    assert sweep.mismatch(mamba, dict(mamba, mamba_init="gpt2")) == ["mamba_init"]
    hybrid = dict(train.DEFAULTS, ffn="mamba")
    assert sweep.mismatch(hybrid, dict(hybrid, d_state=8)) == ["d_state"]


def test_a_trained_baseline_that_is_a_run_of_the_sweep_is_not_scored_against_itself(monkeypatch, tmp_path):
    # the paper's secondary baseline (a trained GPT-2) is one of the sweep's runs: the evaluate call against
    # it scores the other runs only, the first call every run
    import evaluate
    calls = []
    monkeypatch.setattr(evaluate, "main", lambda argv: calls.append([a for a in argv if a[:2] != "--"]) or [])
    monkeypatch.setattr(sweep, "usable_baselines", lambda value: value)
    runs = [dict(dir=f"{tmp_path}/{name}", outcome="done") for name in ("a", "base")]
    spec = dict(out=str(tmp_path), evaluate=[dict(), dict(baseline_run=f"{tmp_path}/base/", plot=False)])
    sweep.score_runs(spec, runs)
    assert calls == [[f"{tmp_path}/a", f"{tmp_path}/base"], [f"{tmp_path}/a"]]


def test_failure_rates_verdicts_and_trends_follow_their_stated_rules():
    # exact (Clopper-Pearson) intervals: 0 of n -> [0, 1 - 0.025^(1/n)], 1 of 3 and 2 of 5 from the beta quantiles
    assert sweep.rate_ci(0, 3) == (0.0, pytest.approx(1 - 0.025 ** (1 / 3)))
    assert sweep.rate_ci(0, 5)[1] == pytest.approx(0.521824, abs=1e-6)
    assert sweep.rate_ci(1, 3) == (pytest.approx(0.008404, abs=1e-6), pytest.approx(0.905700, abs=1e-6))
    assert sweep.rate_ci(2, 5) == (pytest.approx(0.052745, abs=1e-6), pytest.approx(0.853367, abs=1e-6))
    assert sweep.rate_ci(3, 3) == (pytest.approx(1 - sweep.rate_ci(0, 3)[1]), 1.0)
    # the verdict: CI excluding 0 -> different; within the margin -> level; else undecided; one seed: none
    v = lambda lo, hi: sweep.verdict(dict(mean=(lo + hi) / 2, lo=lo, hi=hi), 0.05)  # noqa: E731
    assert (v(0.01, 0.2), v(-0.2, -0.06), v(-0.04, 0.05), v(-0.06, 0.03)) == (
        "different", "different", "level", "undecided")
    assert sweep.verdict(dict(mean=0.1, lo=None, hi=None), 0.05) == "no CI (one seed)"
    # the trend over the last 3 checkpoints: slopes 0.1 and 0.15 per 1k steps -> mean 0.125, t(1) CI
    rising = [[(0, 0.0), (1000, 0.5), (2000, 0.6), (3000, 0.7)], [(1000, 0.4), (2000, 0.55), (3000, 0.7)]]
    t = sweep.trend(rising)
    assert t["mean"] == pytest.approx(0.125) and t["hi"] - t["mean"] == pytest.approx(12.706 * 0.025)
    assert t["word"] == "flat"  # two runs this different: the CI still holds 0
    t = sweep.trend([[(1000, 0.5), (2000, 0.6), (3000, 0.7)], [(1000, 0.41), (2000, 0.52), (3000, 0.63)]])
    assert t["word"] == "rising" and sweep.trend(rising[:1]) is None and sweep.trend([[(1, 0.1)]] * 2) is None

# -----------------------------------------------------------------------------
# a sweep, its table, a rerun, kills


@slow
def test_a_2x2_sweep_trains_four_runs_and_writes_the_table(reference):
    out, r = reference
    for run in RUNS:
        assert train.run_status(os.path.join(out, run))["state"] == "finished", run
        first = open(os.path.join(out, run, "train.out")).readline()
        assert first.startswith("$ python train.py ") and f"--out_dir={out}/{run}" in first
    table = open(os.path.join(out, "table.md")).read()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) == {"arm", "layernorm", "rmsnorm", "comparison", "rmsnorm − layernorm"}
    assert re.search(r"\| 2 \| −?\d\.\d{3} ± \d\.\d{3} \|", rows["rmsnorm"])  # 2 seeds: mean ± CI
    assert re.search(r"\| [012] of 2 \[\d\.\d\d, \d\.\d\d\] \|", rows["rmsnorm"])  # failures, the rate's CI
    # the comparison: paired over the 2 seeds, read by the verdict rule
    assert re.search(r"\| paired, 2 seeds \| (different|level|undecided) \|$", rows["rmsnorm − layernorm"])
    assert "fail_below = 0.1" in table and "Welch" in table and "within ±0.05" in table
    csv = open(os.path.join(out, "table.csv")).read().splitlines()
    assert csv[0].startswith("arm,task,seeds,mean,ci95_low") and len(csv) == 3
    compare = open(os.path.join(out, "compare.csv")).read().splitlines()
    assert compare[0].startswith("arm,minus,diff") and compare[1].startswith("rmsnorm,layernorm,")
    assert os.path.getsize(os.path.join(out, "table.png")) > 0
    manifest = json.load(open(os.path.join(out, "sweep.json")))
    assert sorted(manifest["runs"]) == sorted(os.path.join(out, run) for run in RUNS)
    assert "4 of 4 runs finished" in r.stdout


@slow
def test_a_rerun_of_a_finished_sweep_trains_nothing(reference):
    out, _ = reference
    ckpts = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "*", "s*", "ckpt*.pt"))}
    t0 = time.time()
    r = run_sweep(*RUN, *GRID, f"--out={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.time() - t0 < 60
    assert "4 finished, 0 to resume, 0 new; nothing to train" in r.stdout and "start " not in r.stdout
    assert ckpts == {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "*", "s*", "ckpt*.pt"))}
    # one arm only, evaluated only: its table has that arm alone
    r = run_sweep(*RUN, *GRID, f"--out={out}", "--arms=rms*", "--eval-only")
    assert r.returncode == 0 and "| rmsnorm | 2 |" in r.stdout and "| layernorm |" not in r.stdout, r.stdout
    assert ckpts == {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "*", "s*", "ckpt*.pt"))}


@slow
def test_eval_only_scores_the_finished_runs_beside_a_sweep_that_holds_the_lock(reference, capsys, monkeypatch):
    import fcntl
    monkeypatch.chdir(ROOT)
    out, _ = reference
    manifest = os.path.join(out, "sweep.json")
    before = open(manifest).read()
    os.remove(os.path.join(out, "table.md"))
    fd = os.open(os.path.join(out, "sweep.lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a training sweep of this --out holds it
    try:
        bad([*RUN, *GRID, f"--out={out}"], "is in use by another sweep.py", out)  # training: refused
        assert sweep.main([*RUN, *GRID, f"--out={out}", "--eval-only"]) == 0
    finally:
        os.close(fd)
    printed = capsys.readouterr().out
    assert "evaluating the runs finished so far beside it" in printed and "| rmsnorm | 2 |" in printed
    assert "| layernorm | 2 |" in open(os.path.join(out, "table.md")).read()
    assert open(manifest).read() == before  # sweep.json stays the training sweep's to write


@slow
def test_sigterm_to_the_sweep_stops_every_run_and_the_same_command_continues_it_exactly(reference, tmp_path):
    out = str(tmp_path / "sweep")
    p = start_sweep(*RUN, *GRID, f"--out={out}")
    wait_for_step(os.path.join(out, "layernorm", "s1"), 20)
    p.send_signal(signal.SIGTERM)
    output = p.communicate(timeout=300)[0]
    assert p.returncode == 128 + signal.SIGTERM, output
    assert "sweep stopped by SIGTERM" in output and "continue with the same command" in output
    # stopped mid-way with a checkpoint, and said to be stopped, not done
    assert train.run_status(os.path.join(out, "layernorm", "s1"))["state"] == "unfinished"
    assert "stopped layernorm/s1 at step" in output and "done    layernorm/s1" not in output
    # evaluated as it stands: the unfinished runs are marked in the table, not scored as if finished
    r = run_sweep(*RUN, *GRID, f"--out={out}", "--eval-only")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"layernorm/s1 unfinished at step \d+", open(os.path.join(out, "table.md")).read())
    r = run_sweep(*RUN, *GRID, f"--out={out}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "resuming at step" in r.stdout
    same_final_weights(out, reference[0])


@slow
def test_a_killed_training_process_is_reported_failed_and_resumed_exactly_on_rerun(reference, tmp_path):
    out = str(tmp_path / "sweep")
    p = start_sweep(*RUN, *GRID, f"--out={out}")
    victim = os.path.join(out, "rmsnorm", "s1")
    wait_for_step(victim, 20)
    pid = int(open(os.path.join(victim, "train.lock")).read())
    os.kill(pid, signal.SIGKILL)
    output = p.communicate(timeout=600)[0]
    assert p.returncode == 1, output
    assert "FAILED rmsnorm/s1: killed by SIGKILL" in output and "train.out ends:" in output
    assert "3 of 4 runs finished, 1 failed" in output  # the others went on
    assert train.run_status(victim)["state"] == "unfinished"
    r = run_sweep(*RUN, *GRID, f"--out={out}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert re.search(r"start +rmsnorm/s1 \(resuming at step \d+", r.stdout)
    same_final_weights(out, reference[0])


@slow
def test_an_arm_that_fails_is_reported_with_its_exit_status_and_the_other_finishes(tmp_path):
    out = str(tmp_path / "sweep")
    r = run_sweep(*TINY, "--vary=learning_rate=1e-3,1e30", "--jobs=2", "--threads=1", "--evaluate.n_prompts=64",
                  f"--out={out}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED learning_rate=1e30/s1337: exit status 2" in r.stdout
    assert "non-finite loss" in r.stdout  # the log tail
    assert train.run_status(os.path.join(out, "learning_rate=1e-3", "s1337"))["state"] == "finished"
    table = open(os.path.join(out, "table.md")).read()
    assert re.search(r"\| learning_rate=1e30 \| 0 \| – \|.*\| 1 \|$", table, re.M), table
    assert re.search(r"learning_rate=1e30/s1337 failed at step \d+ \(exit status 2\)", table), table

# -----------------------------------------------------------------------------
# bad input: one line, exit status 2, nothing written or started


def bad(argv, message, *folders):
    """sweep.main refuses argv with one line holding message, and writes nothing under the folders"""
    before = [snapshot(f) for f in folders]
    with pytest.raises(train.UserError) as e:
        sweep.main(argv)
    assert message in str(e.value) and "\n" not in str(e.value), (argv, str(e.value))
    assert [snapshot(f) for f in folders] == before, argv


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    fresh = str(tmp_path / "fresh")
    base = [*RUN, "--evaluate.n_prompts=64", f"--out={fresh}"]
    arms = "arms = dict(ln=dict(norm='layernorm'), rms=dict(norm='rmsnorm'))\n"
    (tmp_path / "compare.py").write_text(arms + "compare = [('rms', 'nope')]\n")
    (tmp_path / "margin.py").write_text(arms + "margin = 0\n")
    (tmp_path / "twins.py").write_text("arms = dict(a=dict(norm='rmsnorm'), b=dict(norm='rmsnorm'))\n")
    cases = [
        ([*base, "--vary=nrom=layernorm,rmsnorm"], "unknown config key 'nrom' in --vary (did you mean 'norm'?)"),
        ([*base, "--vary=n_layer=two,4"], "n_layer must be of type int"),
        ([*base, "--vary=norm=layernorm,bogus"], "norm='bogus' is not one of"),
        ([*base, "--vary=norm="], "empty grid"),
        ([*base, "--vary=norm"], "--vary=KEY=V1,V2"),
        ([*base, "--seeds=1,x"], "seeds must be integers"),
        ([*base, "--seeds=1.5"], "seeds must be integers"),
        ([*base, "--seeds=1,1"], "repeat a seed"),
        (["configs/nope.py", *base], "'configs/nope.py' not found"),
        (["configs/gpt2.py", "configs/study/nope.py", *base], "'configs/study/nope.py' not found"),
        ([*base, "--jobs=-1"], "--jobs must be >= 0"),
        ([*base, "--bogus=1"], "unknown config key 'bogus'"),
        ([*base, "--out_dir=x"], "--out_dir: the sweep sets it"),
        ([*base, "--evaluate.bogus=1"], "unknown evaluate.py option(s) bogus"),
        ([*base, "--ref=nope"], "reference arm 'nope' is not an arm"),
        ([str(tmp_path / "compare.py"), *base], "compare ('rms', 'nope') must name two different arms"),
        ([str(tmp_path / "margin.py"), *base], "margin must be positive"),
        ([str(tmp_path / "twins.py"), *base], "resolve to the same config: the arms do not differ"),
        ([*base, "--vary=norm=layernorm,rmsnorm", "--arms=layernorm,rms"], "--arms: 'rms' matches no arm"),
        ([*RUN, "--vary=norm=layernorm,rmsnorm"], "no --out"),
        ([*base, "--vary=norm=layernorm,rmsnorm", "--dry-run", "--slurm"], "give one of them"),
    ]
    for argv, message in cases:
        bad(argv, message, str(tmp_path))
        assert not os.path.exists(fresh), argv
    # and through real processes: one stderr line `error: ...`, exit status 2, nothing written
    for argv, _ in (cases[0], cases[3], cases[5], cases[8]):
        r = run_sweep(*argv)
        assert one_error_line(r) and r.stdout == "", (argv, r.stderr)
    assert not os.path.exists(fresh)


@slow
def test_an_out_holding_other_runs_or_other_configs_is_refused_before_anything_starts(reference, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = reference[0]
    base = [*RUN, "--evaluate.n_prompts=64"]
    # the runs of the reference sweep, trained with n_embd 16: never mixed with runs of n_embd 32
    bad([*base, *GRID, "--n_embd=32", f"--out={out}"], "holds a run of another config (n_embd: 16 -> 32)", out)
    # another base (configs/gpt2_rms.py) under new arm names: another sweep's runs
    bad(["configs/gpt2_rms.py", *base, "--vary=pos=learned,rope", f"--out={out}"],
        "holds another sweep's runs (configs (none) -> configs/gpt2_rms.py)", out)
    # a run directory of the reference sweep is not a sweep's directory
    bad([*base, *GRID, f"--out={out}/layernorm"], "holds runs that are not this sweep's", out)
    before = snapshot(out)
    r = run_sweep(*base, *GRID, "--n_embd=32", f"--out={out}")
    assert one_error_line(r) and "n_embd: 16 -> 32" in r.stderr and snapshot(out) == before
    # while adding a seed and an arm to the same sweep is the same sweep: dry-run lists them as new
    r = run_sweep(*RUN, "--vary=norm=layernorm,rmsnorm", "--seeds=1,2,3", f"--out={out}", "--dry-run")
    assert r.returncode == 0 and r.stdout.count("(new)") == 2 and r.stdout.count("(finished at step 150)") == 4


def test_arms_left_out_by_arms_may_equal_a_kept_one_after_seeds_replaces_their_seeds(tmp_path, monkeypatch):
    # a trained-baseline arm holds one seed of the reference arm's config (tree_level's gpt2_baseline,
    # seed 1336): --seeds gives every arm the same seeds, which makes the two arms' runs one config, yet with
    # --arms keeping only other arms nothing is run twice, so the sweep must not refuse
    monkeypatch.chdir(ROOT)
    spec = tmp_path / "spec.py"
    spec.write_text("arms = dict(ln=dict(norm='layernorm'), rms=dict(norm='rmsnorm'),\n"
                    "            ln_baseline=dict(norm='layernorm', seeds=[9]))\n"
                    "seeds = [1, 2]\n")
    out = str(tmp_path / "sweep")
    args = [str(spec), *RUN, f"--out={out}", "--dry-run"]
    bad([*args, "--seeds=3"], "the arms do not differ", str(tmp_path))
    bad([*args, "--seeds=3", "--arms=ln*"], "the arms do not differ", str(tmp_path))
    kept = sweep.load_spec([*args, "--seeds=3,4", "--arms=rms,ln"])
    runs = sweep.select(kept, sweep.plan(kept))
    assert [(r["arm"], r["seed"]) for r in runs] == [("ln", 3), ("rms", 3), ("ln", 4), ("rms", 4)]
    assert sweep.main([*args, "--seeds=3,4", "--arms=rms,ln"]) == 0 and not os.path.exists(out)


def test_help_prints_every_option_with_its_default():
    r = run_sweep("--help")
    assert r.returncode == 0 and r.stderr == ""
    for key, default in sweep.OPTIONS.items():
        assert f"--{key}={default!r}" in r.stdout, key
    assert "python sweep.py configs/gpt2.py configs/linear_regression.py --vary=norm=layernorm,rmsnorm" in r.stdout

# -----------------------------------------------------------------------------
# --dry-run, --slurm, --cost


@slow
def test_dry_run_lists_the_runs_and_each_command_trains_its_run_alone(tmp_path):
    out = str(tmp_path / "sweep")
    args = [*TINY, "--vary=norm=layernorm,rmsnorm", "--seeds=1,2", f"--out={out}"]
    r = run_sweep(*args, "--dry-run")
    assert r.returncode == 0 and not os.path.exists(out), r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sweep {out}: 4 runs (2 arms): 4 new" and len(lines) == 5
    commands = {}
    for line in lines[1:]:
        m = re.fullmatch(r"(\S+) \(new\): (python train\.py .*)", line)
        assert m and m[2].endswith(f"--out_dir={out}/{m[1]} --resume=auto"), line
        commands[m[1]] = m[2]
    assert sorted(commands) == sorted(RUNS)
    # one command alone trains that run; the sweep then sees it finished, and its config as its own
    cmd = commands["rmsnorm/s2"].replace("python ", f"{sys.executable} ", 1)
    done = subprocess.run(cmd, shell=True, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    r = run_sweep(*args, "--dry-run")
    assert "rmsnorm/s2 (finished at step 30): python train.py" in r.stdout
    r = run_sweep(*args, "--cost")  # a CPU run: its steps/s say nothing about a GPU
    assert r.returncode == 0 and "| rmsnorm/s2 | cpu |" in r.stdout and "not measured (no GPU run)" in r.stdout


def test_cost_without_runs_prints_the_pilot_command_and_projects_logged_gpu_rates(tmp_path):
    out = str(tmp_path / "sweep")
    args = [*TINY, "--max_iters=36000", "--seeds=1,2", f"--out={out}"]
    r = run_sweep(*args, "--cost")
    assert r.returncode == 0 and "has trained yet" in r.stdout, r.stderr
    pilot = [l.strip() for l in r.stdout.splitlines() if l.startswith("    python sweep.py")]
    assert pilot[0].endswith(f"--max_iters={sweep.PILOT_STEPS} --evaluate=False") and pilot[1].endswith("--cost")
    assert not os.path.exists(out)
    # a run that logged 10 steps/s on a GPU: 36,000 steps are 1 GPU-hour (the median of the second half)
    run = tmp_path / "sweep" / "base" / "s1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(f"new run in {run} | 1 process(es) on cuda | torch 2\n")
    rates = [1.0, 1.0, 10.0, 10.0, 10.0]
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(step=10 * i, steps_per_s=v)) + "\n"
                                               for i, v in enumerate(rates, 1)))
    r = run_sweep(*args, "--cost")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\| base/s1 \| cuda \| 10\.0 \| .* \| 36,000 \| 1\.0 \|", r.stdout), r.stdout
    assert "| base/s2 | - |" in r.stdout and "1 of 2 runs measured on a GPU: 1.0 GPU-hours" in r.stdout


@slow
def test_slurm_script_trains_its_run_and_requeues_it_when_stopped(tmp_path):
    out = str(tmp_path / "sweep")
    args = [*RUN, "--vary=norm=layernorm,rmsnorm", f"--out={out}"]
    r = run_sweep(*args, "--slurm")
    script = os.path.join(out, "sweep.sbatch")
    assert r.returncode == 0 and os.path.isfile(script), r.stderr
    text = open(script).read()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --signal=B:TERM@300" in text
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert not glob.glob(os.path.join(out, "*", "*", "ckpt.pt"))  # written, nothing started
    # a fake scontrol that records its arguments, and the array task's environment
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "scontrol.calls"
    (fake / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (fake / "scontrol").chmod(stat.S_IRWXU)
    os.symlink(sys.executable, fake / "python")
    env = {**ENV, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1",
           "SLURM_SUBMIT_DIR": ROOT}
    run_dir = os.path.join(out, "rmsnorm", "s1337")
    p = subprocess.Popen(["bash", script], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 20)
    p.send_signal(signal.SIGTERM)  # what SLURM sends the batch shell 5 minutes before the time limit
    output = p.communicate(timeout=300)[0]
    assert p.returncode == 0, output
    assert train.run_status(run_dir)["state"] == "unfinished"
    assert calls.read_text() == "requeue 77_1\n"
    p = subprocess.run(["bash", script], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert train.run_status(run_dir) == dict(state="finished", step=150, max_iters=150)
    assert calls.read_text() == "requeue 77_1\n"  # finished: not requeued again

# -----------------------------------------------------------------------------
# the study and the paper as sweep specs

STUDY = ["ablation", "followups", "linear", "linear_part2", "mlp", "mqar", "parity", "sparse", "tree"]
PART3 = ["ablation_parts", "mamba_init", "parity_d6", "sparse_init", "tree26", "tree_init", "tree_level"]  # (they reuse some of the runs above)


def test_the_study_specs_resolve_every_run_to_its_config_of_before(monkeypatch):
    # results/study_configs.json: train.load_config of each of the 75 per-run files configs/study/ held before
    # they became these specs; every run must resolve to exactly that config, key by key (values and types;
    # a key added to train.py since then must keep its default)
    monkeypatch.chdir(ROOT)
    fixture = json.load(open(os.path.join(ROOT, "results", "study_configs.json")))
    specs = sorted(glob.glob("configs/study/*.py"))
    assert sorted(os.path.basename(p)[:-3] for p in specs) == sorted(STUDY + PART3)
    specs = [f"configs/study/{name}.py" for name in STUDY]
    resolved = {}
    for path in specs:
        for r in sweep.plan(sweep.load_spec([path])):
            name = os.path.basename(r["dir"])
            assert name not in resolved, f"{name} is in two specs"
            assert r["dir"] == f"out/study/{name}"  # the run directories of before are the same directories
            resolved[name] = r["cfg"]
    assert len(fixture) == 75 and sorted(resolved) == sorted(fixture)
    for name, cfg in resolved.items():
        want = fixture[name]
        for key in want:
            assert (type(cfg[key]), cfg[key]) == (type(want[key]), want[key]), f"{name}: {key}"
        for key in set(cfg) - set(want) - train.resume_free(cfg):  # a key train.py gained since: what those
            assert cfg[key] == harness.FORMER_DEFAULTS.get(key, train.DEFAULTS[key]), f"{name}: {key}"  # runs had
    # results/study.sh trains each spec once, through sweep.py
    script = open(os.path.join(ROOT, "results", "study.sh")).read()
    trained = re.findall(r"^\s+train ([\w ]+?)\s*(?:#.*)?$", script, re.M)
    assert sorted(" ".join(trained).split()) == sorted(STUDY + PART3)
    assert 'python sweep.py "configs/study/$experiment.py"' in script


def test_the_paper_spec_lists_its_72_runs_and_writes_their_slurm_array(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = str(tmp_path / "paper")
    r = run_sweep("configs/sweeps/paper.py", f"--out={out}", "--dry-run")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == f"sweep {out}: 72 runs (72 arms): 72 new" and len(lines) == 73
    pairs = set()
    for line in lines[1:]:
        m = re.fullmatch(rf"(\w+)-(\w+) \(new\): python train\.py configs/\1\.py configs/\2\.py "
                         rf"--out_dir={out}/\1-\2 --resume=auto", line)
        assert m, line
        pairs.add(m.groups())
    assert len(pairs) == 72 and {t for _, t in pairs} == set(train.tasks.TASKS)
    # each run resolves to what train.py makes of its two presets alone
    for run in sweep.plan(sweep.load_spec(["configs/sweeps/paper.py"])):
        arch, task = run["arm"].split("-")
        want = train.load_config([f"configs/{arch}.py", f"configs/{task}.py", f"--out_dir=out/paper/{arch}-{task}"])
        assert run["cfg"] == want[0], run["arm"]
    r = run_sweep("configs/sweeps/paper.py", f"--out={out}", "--cost")
    assert r.returncode == 0 and "--max_iters=500 --evaluate=False" in r.stdout  # the pilot to run first
    r = run_sweep("configs/sweeps/paper.py", f"--out={out}", "--slurm")
    script = os.path.join(out, "sweep.sbatch")
    assert r.returncode == 0 and "#SBATCH --array=0-71" in open(script).read() and "--gres=gpu:1" in open(script).read()
    assert subprocess.run(["bash", "-n", script]).returncode == 0
