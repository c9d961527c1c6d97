"""
The harness tests: a run survives kills and signals, never mixes with or loses another run, and bad input ends
in one line before anything is written. Many run real processes (marked slow). Helpers are in conftest.py.
    python -m pytest -q test_reliability.py
"""
import contextlib
import errno
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest
import torch

import configurator
import evaluate
import harness
import model
import ssm_scan
import ssm_scan_cpu
import train
from conftest import (ENV, ROOT, TINY, default_signals, fake_run, metrics, one_error_line, python, run_train,
                      same_tensors, state)

slow = pytest.mark.slow

# -----------------------------------------------------------------------------
# kill at any moment: a driver process forks each attempt (a real process, SIGKILLed for real, without paying for
# a new interpreter each time) with one kill point patched in, and reports as JSON

def _arm(kind, n):
    import builtins
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    calls = [0]

    def nth():  # True on this process's n-th call of the patched function
        calls[0] += 1
        return calls[0] == n
    if kind in ("step", "sigterm", "sigint", "sighup"):  # inside step n, after its batch is drawn, before its update
        real_batch = train.get_batch
        sig = dict(sigterm=signal.SIGTERM, sigint=signal.SIGINT, sighup=signal.SIGHUP).get(kind)

        def get_batch(cfg, step, rank, k, gen=None):
            if step == n and gen is None and k == cfg["batch_size"]:
                die() if sig is None else os.kill(os.getpid(), sig)
            return real_batch(cfg, step, rank, k, gen)
        train.get_batch = get_batch
    elif kind == "save":  # halfway through writing the bytes of the n-th checkpoint
        real_save = torch.save

        def save(obj, f):
            if nth():
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
                f.flush()
                die()
            real_save(obj, f)
        torch.save = save
    elif kind in ("replace", "link"):  # a complete .tmp not yet renamed / ckpt.pt renamed, ckpt_<step>.pt not linked
        real = getattr(os, kind)
        setattr(os, kind, lambda *a: die() if nth() else real(*a))
    elif kind == "metrics":  # half of the n-th metrics row written
        class Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.f.close()

            def write(self, s):
                if nth():
                    self.f.write(s[:len(s) // 2])
                    self.f.flush()
                    die()
                self.f.write(s)

        def patched_open(p, m="r", *a):
            f = builtins.open(p, m, *a)
            return Half(f) if str(p).endswith(".jsonl") and m == "a" else f
        harness.open = patched_open


def kill_driver(plan, logs, args):
    """run each (kind, n, out_dir) of plan in a fork with that kill point armed; print a JSON report"""
    import traceback
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal's run has, even under nohup
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    report = []
    for i, (kind, n, out_dir) in enumerate(plan):
        ckpt = os.path.join(out_dir, "ckpt.pt")
        r = {"kind": kind, "n": n}
        r["resume"] = resume = os.path.exists(ckpt)
        if not resume and os.path.exists(out_dir):  # killed before its first checkpoint: what does --resume say?
            try:
                train.main([*args, f"--out_dir={out_dir}", "--resume=True"])
            except train.UserError as e:
                r["resume_error"] = str(e)
        log = os.path.join(logs, f"attempt{i}.txt")
        t0 = time.time()
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 0
            try:
                _arm(kind, n)
                train.main([*args, f"--out_dir={out_dir}", f"--resume={resume}"])
            except train.UserError as e:
                print(f"error: {e}")
                code = 2
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if kind == "random":  # from outside, after n/1000 of the first attempt's duration: wherever the run is
            time.sleep(n / 1000 * report[0]["secs"])
            os.kill(pid, signal.SIGKILL)  # (not yet reaped, so the pid is still ours even if it has just finished)
        status = os.waitpid(pid, 0)[1]
        r["secs"] = time.time() - t0
        r["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        r["code"] = os.waitstatus_to_exitcode(status)
        r["out"] = open(log).read()[-2000:]
        try:
            r["step"] = train.load_checkpoint(ckpt)["step"] if os.path.exists(ckpt) else None
        except train.UserError as e:
            r["step"] = f"unreadable: {e}"
        report.append(r)
    print(json.dumps(report))


# 30 steps, a checkpoint every 5 and at step 0. In step order: SIGKILL while writing the very first checkpoint,
# mid-step, mid metrics row, mid checkpoint write of a resumed run, a complete .tmp not yet renamed, between the
# rename and the hard link, mid-step again, a second metrics row, mid-write of the last checkpoint, the last step;
# and SIGTERM / SIGINT / SIGHUP. Then fresh runs killed once each from outside at a random moment, and resumed
KILL_PLAN = [("save", 1), ("step", 3), ("metrics", 4), ("save", 2), ("sigterm", 9), ("replace", 2), ("link", 1),
             ("step", 17), ("metrics", 6), ("sigint", 22), ("save", 2), ("sighup", 25), ("step", 28), ("step", 29)]
RANDOM_KILLS = [rng.randrange(1000) for rng in [random.Random(6)] for _ in range(6)]  # per mille of a run's time


@slow
def test_kill_at_any_moment(tmp_path):
    """after each kill the run resumes (or restarts, if it died before its first checkpoint); the final weights,
    optimizer state and logged loss sequence equal an uninterrupted run's bit for bit"""
    args = [*TINY, "--keep_last=2", "--keep_every=10"]
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    rand = [str(tmp_path / f"rand{i}") for i in range(len(RANDOM_KILLS))]
    plan = [("none", 0, ref)] + [(k, n, run) for k, n in KILL_PLAN] + [("none", 0, run)]
    plan += [a for n, d in zip(RANDOM_KILLS, rand) for a in (("random", n, d), ("none", 0, d))]
    code = "import json, sys, test_reliability as t; t.kill_driver(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:])"
    p = python("-c", code, json.dumps(plan), str(tmp_path), *args)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    good = -1  # the step of the last complete checkpoint
    for r in report[1:]:
        if r["kind"] == "random":
            assert r["signal"] == signal.SIGKILL or r["code"] == 0, r  # (it may have finished first)
            good = -1  # a fresh run
        elif r["kind"] in ("none", "sigterm", "sigint", "sighup"):
            assert r["code"] == 0 and "error" not in r["out"], r
            stopped = f"stopped at step {r['n'] + 1}" in r["out"] and "--resume=True" in r["out"]
            assert r["kind"] == "none" or stopped, r
        else:
            assert r["signal"] == signal.SIGKILL, r
        assert r["step"] is None or isinstance(r["step"], int) and r["step"] >= good, r  # never partial, never older
        good = r["step"] if r["step"] is not None else good
        if "resume_error" in r:
            assert "no checkpoint at" in r["resume_error"], r
    assert good == 30 and not report[1]["resume"] and "resume_error" in report[2]  # the first kill: before any ckpt
    for other in (run, *rand):
        a, b = state(ref), state(other)
        assert same_tensors(a["model"], b["model"]) and same_tensors(a["optimizer"], b["optimizer"])
        assert metrics(ref) == metrics(other) and len(metrics(ref)) == 30
    # kept: every multiple of keep_every, plus the last keep_last others (the interrupted run also has its stops)
    kept_ref = sorted(f for f in os.listdir(ref) if f.startswith("ckpt_"))
    assert kept_ref == [f"ckpt_{s:07d}.pt" for s in (0, 10, 15, 20, 25, 30)]
    kept = [int(f[5:12]) for f in os.listdir(run) if re.fullmatch(r"ckpt_\d+\.pt", f)]
    assert {0, 10, 20, 30} <= set(kept) and len([s for s in kept if s % 10]) <= 2
    assert all(state(run, f"ckpt_{s:07d}.pt")["step"] == s for s in kept)
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]  # (a SIGKILL mid-write leaves one; the next write
    # reuses it, and the run's last write was complete)

# -----------------------------------------------------------------------------
# signals, in this process

def _signal_in_step(monkeypatch, step, *signals):
    real = train.get_batch

    def get_batch(cfg, s, rank, n, gen=None):
        if s == step and gen is None and n == cfg["batch_size"]:
            for i, sig in enumerate(signals):
                if i:
                    time.sleep(train.StopSignals.SAME_REQUEST_S)  # a second request, not a forwarded copy
                os.kill(os.getpid(), sig)
        return real(cfg, s, rank, n, gen)
    monkeypatch.setattr(train, "get_batch", get_batch)


def test_sighup_stops_gracefully_like_sigterm(tmp_path, monkeypatch, capsys, one_thread, signals_at_default):
    _signal_in_step(monkeypatch, 6, signal.SIGHUP)
    assert run_train(tmp_path / "r") == 7 and state(tmp_path / "r")["step"] == 7
    assert "stopped at step 7" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # the handler it started with is back


def test_copies_of_one_signal_are_one_request(tmp_path, monkeypatch, one_thread, signals_at_default):
    # torchrun forwards a Ctrl-C that the terminal also delivered: two signals at once still stop gracefully
    real = train.get_batch

    def get_batch(cfg, s, rank, n, gen=None):
        if s == 4 and gen is None and n == cfg["batch_size"]:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, s, rank, n, gen)
    monkeypatch.setattr(train, "get_batch", get_batch)
    assert run_train(tmp_path / "r") == 5 and state(tmp_path / "r")["step"] == 5


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, one_thread, signals_at_default):
    real = train.get_batch
    _signal_in_step(monkeypatch, 12, signal.SIGINT, signal.SIGINT)
    with pytest.raises(train.UserError, match=r"a second SIGINT: stopped at once in step 13; the last checkpoint "
                                              r".*ckpt\.pt \(step 10\) is intact"):
        run_train(tmp_path / "r")
    assert state(tmp_path / "r")["step"] == 10 and not [f for f in os.listdir(tmp_path / "r") if f.endswith(".tmp")]
    monkeypatch.setattr(train, "get_batch", real)
    assert run_train(tmp_path / "r", "--resume=True") == 30  # and it resumes from there


def test_nonfinite_loss_stops_keeps_the_last_good_checkpoint_and_says_so_in_the_log(tmp_path):
    run = tmp_path / "nan"
    r = python("train.py", *TINY, "--learning_rate=1e30", "--ckpt_interval=1", f"--out_dir={run}")
    assert one_error_line(r), r.stderr
    m = re.search(r"non-finite loss .* in step (\d+), before its update; the last good checkpoint (\S+) "
                  r"\(step (\d+)\) is intact", r.stderr)
    assert m, r.stderr
    ckpt = train.load_checkpoint(m.group(2))
    assert ckpt["step"] == int(m.group(3)) == int(m.group(1)) - 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert same_tensors(ckpt["model"], state(run, f"ckpt_{ckpt['step']:07d}.pt")["model"])
    assert max(r["step"] for r in metrics(run)) == ckpt["step"]
    assert "stopped: non-finite loss" in (run / "log.txt").read_text()

# -----------------------------------------------------------------------------
# runs are never mixed or lost

def test_a_new_run_refuses_any_directory_that_holds_a_run(tmp_path):
    src = tmp_path / "src"
    run_train(src, "--max_iters=10")
    for name in ("ckpt_0000010.pt", "ckpt.pt", "metrics.jsonl", "log.txt"):
        d = tmp_path / name
        d.mkdir()
        (d / name).write_bytes((src / name).read_bytes())
        before = {f: (d / f).read_bytes() for f in os.listdir(d)}
        with pytest.raises(train.UserError, match=rf"{d} already holds a run \({re.escape(name)}\); continue it "
                                                  r"with --resume=True"):
            run_train(d)
        assert {f: (d / f).read_bytes() for f in os.listdir(d)} == before, name  # untouched: no lock file either
    (tmp_path / "afile").write_text("x")
    with pytest.raises(train.UserError, match="is a file"):
        run_train(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_a_directory_in_use_is_locked(tmp_path, one_thread):
    # another train.py holds the directory: a second one (resume, or a new run) exits 2 naming the holder's pid
    run = tmp_path / "r"
    run_train(run, "--max_iters=2")
    empty = tmp_path / "empty"
    holders = [train.RunDirectory(str(run)), train.RunDirectory(str(empty))]
    for h in holders:
        h.claim()  # as a running train.py would (the lock file holds its pid)
    try:
        for args in ([f"--out_dir={run}", "--resume=True"], [f"--out_dir={empty}"]):
            r = python("train.py", *TINY, *args)
            assert one_error_line(r) and f"in use by another train.py (pid {os.getpid()})" in r.stderr, r.stderr
    finally:
        for h in holders:
            h.release()
    assert run_train(run, "--resume=True", "--max_iters=4") == 4  # released: free again
    assert run_train(empty, "--max_iters=2") == 2


@slow
def test_two_runs_started_at_once_into_one_directory(tmp_path):
    run = tmp_path / "r"
    procs = [subprocess.Popen([sys.executable, "train.py", *TINY, "--max_iters=200", f"--out_dir={run}"], cwd=ROOT,
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    err = next(e for p, (o, e) in zip(procs, results) if p.returncode == 2)
    assert re.fullmatch(r"error: .*(in use by another train\.py \(pid \d+\)|already holds a run).*\n", err), err
    assert state(run)["step"] == 200 and len(metrics(run)) == 200  # one run, whole


def test_resume_when_ckpt_pt_is_missing_takes_the_newest_step_checkpoint(tmp_path, capsys, one_thread):
    run_train(tmp_path / "full")
    run = tmp_path / "cut"
    run_train(run, "--max_iters=20")
    (run / "ckpt.pt").unlink()
    with open(run / "ckpt_0000020.pt", "r+b") as f:  # the newest is damaged: the one before it is taken
        f.truncate(100)
    assert run_train(run, "--resume=True") == 30
    out = capsys.readouterr()
    assert "skipping" in out.err and "ckpt_0000020.pt" in out.err
    assert "resuming from the newest step checkpoint" in out.out and "ckpt_0000015.pt (step 15)" in out.out
    a, b = state(tmp_path / "full"), state(run)
    assert same_tensors(a["model"], b["model"]) and metrics(tmp_path / "full") == metrics(run)


def test_a_checkpoint_saved_before_mamba_init_existed_resumes_as_the_run_it_was(tmp_path, one_thread):
    # the key came with a change of default (then N(0, 0.02), now 'mamba'): a checkpoint without it was
    # trained with the old rule, so it loads as mamba_init='gpt2', resumes without a config change, and a
    # sweep that names 'gpt2' finds the same run, where the new default would be another config
    import sweep
    run = tmp_path / "old"
    run_train(run, "configs/mamba.py", "--mamba_init=gpt2", "--max_iters=10")
    for name in ("ckpt.pt", "ckpt_0000010.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["config"].pop("mamba_init", None)  # (the two may be one file)
        torch.save(ckpt, run / name)
    saved = state(run)["config"]
    assert saved["mamba_init"] == "gpt2" and train.DEFAULTS["mamba_init"] == "mamba"
    assert sweep.mismatch(dict(saved), saved) == []
    assert sweep.mismatch(dict(saved, mamba_init="mamba"), saved) == ["mamba_init"]
    assert run_train(run, "configs/mamba.py", "--resume=True", "--max_iters=20") == 20
    assert state(run)["config"]["mamba_init"] == "gpt2"


def test_resume_refuses_another_number_of_processes(tmp_path, monkeypatch, one_thread):
    run_train(tmp_path / "r", "--max_iters=5")
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(train.UserError, match=r"processes: 1 -> 2 .*--allow_config_change=True"):
        run_train(tmp_path / "r", "--resume=True", "--max_iters=10")


def test_resume_drops_malformed_metrics_lines_and_says_so(tmp_path, one_thread):
    run_train(tmp_path / "full")
    run = tmp_path / "r"
    run_train(run, "--max_iters=20")
    good = (run / "metrics.jsonl").read_bytes()
    junk = b'garbage\n\x00\x00\x00\n{"loss": 1.0}\n\xff\xfe not utf-8\n[1, 2]\n{"step": "7"}\n'
    cut = good.index(b"\n") + 1  # after the first row
    (run / "metrics.jsonl").write_bytes(good[:cut] + junk + good[cut:])
    run_train(run, "--resume=True")
    assert "dropped 6 malformed line(s)" in (run / "log.txt").read_text()
    assert metrics(tmp_path / "full") == metrics(run)


@slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals a process group")
def test_a_graceful_stop_under_torchrun_checkpoints_within_the_step(tmp_path):
    # ~0.3 s steps on 2 processes; Ctrl-C to the whole group (the terminal's way: each worker gets it from the
    # terminal and again from torchrun): every worker stops after the step in progress with a checkpoint.
    # torchrun itself exits 1 with its own SignalException traceback, whatever its workers did (README)
    run = tmp_path / "ddp"
    args = ["--n_layer=4", "--n_embd=256", "--n_head=8", "--max_iters=100000", "--log_interval=1",
            "--ckpt_interval=100000", f"--out_dir={run}"]
    with open(tmp_path / "out.txt", "w") as log:
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "train.py", *args], cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, preexec_fn=default_signals)
    try:
        _wait_for_rows(run, 5, [p])
        steps_before = len(metrics(run))
        os.killpg(p.pid, signal.SIGINT)
        t0 = time.time()
        p.wait(timeout=60)
        took = time.time() - t0
    finally:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)
    log_text = (run / "log.txt").read_text()
    stopped = int(re.search(r"stopped at step (\d+)", log_text)[1])
    assert state(run)["step"] == stopped and steps_before <= stopped <= steps_before + 5, (steps_before, stopped)
    assert took < 20 and p.returncode == 1  # torchrun's own exit code after a signal

# -----------------------------------------------------------------------------
# one line, exit code 2, nothing written

def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, one_thread):
    real = torch.save
    calls = [0]

    def full_disk(obj, f):
        calls[0] += 1
        if calls[0] == 3:  # the third checkpoint (step 10): half the bytes fit
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f)
    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "r"
    with pytest.raises(train.UserError, match=r"cannot write a checkpoint in .* at step 10: No space left on device "
                                              r"\(disk full\?\); the last complete checkpoint .*ckpt\.pt \(step 5\) "
                                              r"is intact") as e:
        run_train(run)
    assert "\n" not in str(e.value) and state(run)["step"] == 5
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


@slow
def test_a_full_disk_for_real(tmp_path):
    # the repro: a 2 MB tmpfs (needs root and mount; skipped elsewhere)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = python("train.py", *TINY, "--n_layer=4", "--n_embd=32", "--max_iters=200", f"--out_dir={mnt / 'r'}")
        assert one_error_line(r) and "No space left on device" in r.stderr, r.stderr
        assert not [f for f in os.listdir(mnt / "r") if f.endswith(".tmp")]
        ckpt = train.load_checkpoint(str(mnt / "r" / "ckpt.pt"))  # intact
        assert f"(step {ckpt['step']}) is intact" in r.stderr
    finally:
        subprocess.run(["umount", str(mnt)])


def test_missing_optional_packages_and_devices_are_refused_before_writing(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(train.UserError, match="wandb_log=True but wandb is not installed"):
        run_train(tmp_path / "w", "--wandb_log=True")
    monkeypatch.setattr(ssm_scan, "INTERPRET", False)
    with pytest.raises(train.UserError, match="scan_backend='triton' needs a CUDA device"):
        run_train(tmp_path / "t", "configs/mamba.py", "--scan_backend=triton")
    with pytest.raises(train.UserError, match="CUDA device"):
        run_train(tmp_path / "c", "--device=cuda")
    assert os.listdir(tmp_path) == []  # nothing written

# -----------------------------------------------------------------------------
# malformed configs and checkpoints

def malformed_cases(tmp):
    """(argv, the message must match) for a few hundred malformed configs: every key with values of the wrong type
    and out of range, unknown names, bad syntax, inconsistent combinations, broken config files"""
    cases = []
    wrong = {bool: ["1", "yes", "true", "'True'", "", "None"],
             int: ["1.5", "abc", "True", "", "[1]", "None", "'3'", "10**3", "1e400", "{}"],
             float: ["abc", "True", "[]", "None", "1j", "'0.1'"], str: []}
    choices = {**configurator.CHOICES, **model.CHOICES}  # train.py's own keys', and the model's
    for key, default in train.DEFAULTS.items():
        if configurator.WORDS.get(key) is str:  # reference_quirks: a bool, or a comma list of its parts ('' is none)
            cases += [([f"--{key}={v}"], f"{key} must be of type|{key}: unknown part") for v in wrong[bool] if v]
            continue
        cases += [([f"--{key}={v}"], f"{key} must be of type") for v in wrong[type(default)]]
        if key in configurator.POSITIVE + configurator.NONNEG:
            low = ["0", "-1"] if key in configurator.POSITIVE else ["-1"]
            high = ([str(configurator.UPPER[key] + 1)] if key in configurator.UPPER
                    else ["9" * 30] if type(default) is int else [])
            extremes = ["-1e400", "1e400"] if type(default) is float else []
            cases += [([f"--{key}={v}"], f"{key} must be") for v in low + high + extremes]
        if key in choices:
            cases += [([f"--{key}={v}"], f"{key}=.* is not one of")
                      for v in ("nonexistent", "", default.upper(), " " + default)]
    cases += [([f"--{k}={v}"], f"{k} must be") for k in ("learning_rate", "ffn_mult") for v in ("0", "-1e-3", "1e400")]
    cases += [([f"--{k}={v}"], f"{k} must be in") for k in ("beta1", "beta2") for v in ("1", "-0.1", "1.5")]
    cases += [([f"--device={v}"], "device=") for v in ("tpu", "cuda:x", "CPU", "", "cpu:0", "cuda:-1")]
    cases += [([a], m) for a, m in (("--n_embd", "--key=value"), ("--=3", "unknown config key ''"),
                                    ("---n_embd=3", "unknown"), ("--unknown_key=1", "unknown config key"),
                                    ("--n_emdb=16", "did you mean 'n_embd'"), ("-n_embd=3", "--key=value"),
                                    ("n_embd=3", "not found"), ("configs/gtp2.py", "not found"),
                                    (str(tmp), "is a directory"))]
    cases += [(a, m) for a, m in (
        (["--n_embd=15", "--n_head=2"], "not divisible"), (["--n_points=142"], "learned position table"),
        (["--batch_size=10", "--micro_batch_size=3"], "split evenly"), (["--micro_batch_size=128"], "split evenly"),
        (["--task=mqar", "--n_points=1"], "n_points must be >= 2"),
        (["--task=sparse_parity", "--parity_k=6"], "parity_k"),
        (["--task=sparse_parity", "--curriculum=True", "--curriculum_dims_start=1"], "parity_k"),
        (["--task=sparse_parity", "--noise_std=0.1"], "noise_std"), (["--task=mqar", "--noise_std=0.1"], "noise_std"),
        (["--pos=rope", "--n_embd=12", "--n_head=4"], "RoPE needs an even head size"),
        (["--layer_pattern=AX"], "layer_pattern"), (["--layer_pattern="], "layer_pattern"),
        (["--n_embd=100000000000000"], "cannot build this model"),
        (["--batch_size=100000000000000"], "cannot build this model or held-out set"),
        (["--n_dims=100000000000000", "--pos=rope"], "config: "), (["--resume=True"], "no checkpoint at"),
        (["--device=cuda:7"], "CUDA device"), (["--keep_every=7"], "multiple of ckpt_interval"),
        (["configs/gpt2.py", "configs/mqar.py", "--curriculum=True", "--curriculum_points_start=1"], "mqar needs"))]
    files = {"syntax.py": ("n_embd = = 3\n", "failed to run: SyntaxError"), "unknown.py": ("n_emb = 3\n", "did you mean"),
             "type.py": ("n_embd = '64'\n", "must be of type int"), "raise.py": ("raise ValueError('boom')\n", "ValueError: boom"),
             "exit.py": ("import sys\nsys.exit(0)\n", "SystemExit"), "list.py": ("n_embd = [64]\n", "must be of type int"),
             "float.py": ("n_embd = 64.0\n", "must be of type int"), "nan.py": ("learning_rate = float('nan')\n", "learning_rate"),
             "inf.py": ("learning_rate = float('inf')\n", "learning_rate"),
             "imp.py": ("import no_such_module_xyz\n", "ModuleNotFound"),
             "task.py": ("task = 'regression'\n", "task='regression' is not one of"), "big.py": ("n_layer = 10**100\n", "n_layer"),
             "neg.py": ("batch_size = -64\n", "batch_size must be"), "bytes.py": (b"\xff\xfe\x00\x81", "failed to run")}
    for name, (text, m) in files.items():
        (tmp / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append(([str(tmp / name)], m))
    return cases


CONFIG_FILES = ["syntax.py", "unknown.py", "type.py", "raise.py", "exit.py", "list.py", "float.py", "nan.py", "inf.py",
                "imp.py", "task.py", "big.py", "neg.py", "bytes.py"]


def test_config_fuzz(tmp_path, monkeypatch):
    """every malformed config ends in one UserError line naming the problem, and nothing is written"""
    monkeypatch.chdir(tmp_path)  # a default out_dir would land here
    (tmp_path / "configs").symlink_to(os.path.join(ROOT, "configs"))
    cases = malformed_cases(tmp_path)
    assert len(cases) > 300
    for i, (argv, pattern) in enumerate(cases):
        with pytest.raises(train.UserError, match=pattern) as e:
            train.main([f"--out_dir=run{i}", "--max_iters=1", *argv])
        assert "\n" not in str(e.value) and len(str(e.value)) < 500
    assert sorted(os.listdir(tmp_path)) == sorted(["configs", *CONFIG_FILES]), os.listdir(tmp_path)  # nothing written


def cli_forks(argvs, tmp):
    """`python train.py ARGS` for each ARGS, each in a fork of one interpreter (the real __main__ block, real exit
    codes); prints [[code, stdout, stderr], ...] as JSON"""
    import runpy
    results = []
    for i, argv in enumerate(argvs):
        out, err = (os.path.join(tmp, f"cli{i}.{s}") for s in ("out", "err"))
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.argv = ["train.py", *argv]
            code = 0
            try:
                runpy.run_path("train.py", run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        results.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), open(out).read(), open(err).read()])
    print(json.dumps(results))


@slow
def test_config_fuzz_through_real_processes(tmp_path):
    # a sample through `python train.py ...`: one line on stderr, exit code 2, nothing on stdout, nothing written
    cases = malformed_cases(tmp_path)
    sample = [[f"--out_dir={tmp_path / f'p{i}'}", *a] for i, (a, _) in enumerate(cases[::len(cases) // 12])]
    sample += [[f"--out_dir={tmp_path / 'big'}", "--n_embd=100000000000000"], [str(tmp_path / "exit.py")]]
    code = "import json, sys, test_reliability as t; t.cli_forks(json.loads(sys.argv[1]), sys.argv[2])"
    p = python("-c", code, json.dumps(sample), str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    for argv, (rc, out, err) in zip(sample, json.loads(p.stdout.strip().splitlines()[-1])):
        assert rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (argv, rc, out, err)
    assert not any(f.startswith("p") or f == "big" for f in os.listdir(tmp_path))


def test_bad_checkpoints(tmp_path, one_thread):
    """truncated, bit-flipped, garbage, empty, foreign and malicious files, another architecture, a config change:
    one clear message each, nothing overwritten, no pickled code run"""
    good = tmp_path / "good"
    run_train(good, "--max_iters=5")
    blob = (good / "ckpt.pt").read_bytes()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))
    import pickle
    with zipfile.ZipFile(good / "ckpt.pt") as z:  # flip one byte inside a tensor's data: the zip CRC catches it
        off = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64).header_offset
    flip = bytearray(blob)
    name_len = int.from_bytes(blob[off + 26:off + 28], "little")
    extra_len = int.from_bytes(blob[off + 28:off + 30], "little")
    flip[off + 30 + name_len + extra_len + 16] ^= 0xFF
    foreign = tmp_path / "foreign.pt"
    variants = {"truncated": (blob[:len(blob) // 2], "truncated or corrupted"), "flipped": (bytes(flip), "checksum mismatch"),
                "garbage": (os.urandom(1000), "truncated or corrupted"), "empty": (b"", "truncated or corrupted"),
                "text": (b"hello", "truncated or corrupted")}
    for name, obj, m in (("tensor", torch.ones(3), "not a checkpoint of this project"),
                         ("state_dict", state(good)["model"], "missing .*optimizer"),
                         ("evil", {"model": Evil()}, "holds pickled code or objects.*not loaded"),
                         ("bad_step", {**state(good), "step": "5"}, "malformed")):
        torch.save(obj, foreign)
        variants[name] = (foreign.read_bytes(), m)
    variants["raw_pickle"] = (pickle.dumps(Evil()), "truncated or corrupted")
    other = tmp_path / "other"
    run_train(other, "--max_iters=1", "--n_embd=32")  # another architecture, and a tampered config that no longer fits it
    variants["other_arch"] = (None, "does not fit this model")
    for name, (data, m) in variants.items():
        d = tmp_path / name
        d.mkdir()
        if data is None:
            ck = state(other)
            torch.save({**ck, "config": {**ck["config"], "n_embd": 16}}, d / "ckpt.pt")
        else:
            (d / "ckpt.pt").write_bytes(data)
        before = (d / "ckpt.pt").read_bytes()
        with pytest.raises(train.UserError, match=m) as e:
            train.main([f"--out_dir={d}", "--resume=True"])
        assert "\n" not in str(e.value) and (d / "ckpt.pt").read_bytes() == before, name
        assert set(os.listdir(d)) <= {"ckpt.pt", harness.LOCK_FILE}, name
    assert not (tmp_path / "PWNED").exists()
    # resuming with a changed model or data key is refused unless asked; the refusal changes nothing
    with pytest.raises(train.UserError, match=r"resume would change the run .*n_embd: 16 -> 32.*allow_config_change"):
        run_train(good, "--resume=True", "--n_embd=32")
    with pytest.raises(train.UserError, match="does not fit this model"):
        run_train(good, "--resume=True", "--n_embd=32", "--allow_config_change=True")
    assert (good / "ckpt.pt").read_bytes() == blob


def _children(pid):
    """pids of the live child processes of pid (Linux /proc)"""
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{d}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _wait_for_rows(run, rows, procs, timeout=120):
    deadline = time.time() + timeout
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= rows):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "the run did not get going"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_out_of_memory_mid_run_is_one_line_and_resumable(tmp_path, monkeypatch, one_thread):
    # running out of memory at step 7 (a longer curriculum stage, a bigger eval): one line, the step-6 checkpoint intact
    real, calls = train.icl_loss, []

    def oom(pred, ys, task):
        calls.append(1)
        if len(calls) == 8:  # steps 0..6 train, then step 7's loss
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pred, ys, task)
    monkeypatch.setattr(train, "icl_loss", oom)
    with pytest.raises(train.UserError, match=r"failed at step 7 \(out of memory: try a smaller micro_batch_size\); "
                                              r"last checkpoint .*ckpt\.pt \(step 6\): CUDA out of memory"):
        run_train(tmp_path / "r", "--ckpt_interval=2", "--eval_interval=1000", "--max_iters=10")
    assert train.load_checkpoint(str(tmp_path / "r" / "ckpt.pt"))["step"] == 6
    monkeypatch.setattr(train, "icl_loss", real)
    assert run_train(tmp_path / "r", "--ckpt_interval=2", "--eval_interval=1000", "--max_iters=10", "--resume=True") == 10


def test_a_bug_in_a_new_module_keeps_its_traceback(tmp_path, monkeypatch):
    # only a failure to allocate reads "too large?": any other error while building the model is raised as it is
    import model

    def broken(self, cfg):
        raise RuntimeError("shape mismatch in my new module")
    monkeypatch.setattr(model.MLP, "__init__", broken)
    with pytest.raises(RuntimeError, match="shape mismatch in my new module"):
        run_train(tmp_path / "r")


@slow
def test_ddp_dead_rank_takes_the_job_down(tmp_path):
    """torchrun, 2 gloo ranks: rank 1 is SIGKILLed mid-run; the job ends (non-zero, with a message) instead of
    hanging, and the last checkpoint is intact"""
    run = tmp_path / "ddp"
    with open(tmp_path / "out.txt", "w") as log:  # its own session, so that a failing test can end all of it
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "train.py", *TINY, "--max_iters=100000", "--ddp_timeout=20", f"--out_dir={run}"],
                             cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_rows(run, 10, [p])
        workers = [c for c in _children(p.pid) if "\0RANK=1\0" in "\0" + open(f"/proc/{c}/environ").read()]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        p.wait(timeout=90)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)  # torchrun's session: whatever of it is left
    out = (tmp_path / "out.txt").read_text()
    assert p.returncode != 0 and ("error: process 0 failed at step" in out or "FAILED" in out), out[-3000:]
    assert state(run)["step"] >= 5


@slow
def test_ddp_hung_rank_times_out(tmp_path):
    """rank 1 stops answering (SIGSTOP) mid-run: rank 0 gives up after ddp_timeout with one line naming the step
    and the last checkpoint, instead of waiting forever (both started the way torchrun starts them)"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run, procs = tmp_path / "ddp", []
    for r in range(2):
        env = {**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        with open(tmp_path / f"err{r}.txt", "w") as err:
            procs.append(subprocess.Popen([sys.executable, "train.py", *TINY, "--max_iters=100000", "--ddp_timeout=5",
                                           f"--out_dir={run}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env))
    try:
        _wait_for_rows(run, 10, procs)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.time()
        assert procs[0].wait(timeout=60) == 2 and time.time() - t0 < 60
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = (tmp_path / "err0.txt").read_text()
    assert re.fullmatch(r"error: process 0 failed at step \d+ .*last checkpoint \S+ \(step \d+\): .*\n", err), err
    assert state(run)["step"] >= 5

# -----------------------------------------------------------------------------
# round 3: no evaluation result destroyed, ignored signals stay ignored, a full disk is one line everywhere

def _tiny_run(path, *args):
    r = python("train.py", *TINY, f"--out_dir={path}", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return str(path)


@contextlib.contextmanager
def _small_disk(tmp_path, size="2m", name="small"):
    mnt = tmp_path / name
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)])


def _fill(mnt, leave_pages=0):
    """fill the tmpfs mounted at mnt, leaving `leave_pages` free pages"""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize - leave_pages * 4096
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(free, 0))


def test_later_evaluations_never_drop_earlier_results(tmp_path):
    # --all_ckpts then a plain call keeps the trajectory; another --baselines adds to it; another --seed or
    # --n_prompts is a file of its own; a checkpoint file alone never writes the run's standard result
    import evaluate
    run = fake_run(tmp_path / "r", steps=(0, 5, 10))  # (in-process: no training needed)
    name = os.path.join(run, "eval_linear_regression_n64.json")
    evaluate.main([run, "--n_prompts=64", "--plot=False", "--all_ckpts=True"])
    evaluate.main([run, "--n_prompts=64", "--plot=False"])
    assert [c["step"] for c in json.load(open(name))["checkpoints"]] == [0, 5, 10]
    evaluate.main([run, "--n_prompts=64", "--plot=False", "--baselines=zero"])
    res = json.load(open(name))
    assert [c["step"] for c in res["checkpoints"]] == [0, 5, 10] and {"least_squares", "zero"} <= set(res["baselines"])
    before = open(name).read()
    evaluate.main([run, "--n_prompts=32", "--plot=False"])
    evaluate.main([run, "--n_prompts=64", "--seed=3", "--plot=False"])
    evaluate.main([os.path.join(run, "ckpt_0000005.pt"), "--n_prompts=64", "--plot=False"])
    assert open(name).read() == before
    for other in ("n32", "n64_seed3", "n64_step5"):
        assert os.path.isfile(os.path.join(run, f"eval_linear_regression_{other}.json")), other


def test_the_results_cache_keeps_settings_apart_and_recomputes_a_changed_checkpoint(tmp_path, monkeypatch):
    import evaluate
    run = fake_run(tmp_path / "r", steps=(0, 5))
    monkeypatch.setenv("EVAL_CACHE", str(tmp_path / "cache"))
    forwards = [0]
    real = evaluate.model_predict

    def counting(model, *a):
        forwards[0] += 1
        return real(model, *a)
    monkeypatch.setattr(evaluate, "model_predict", counting)
    first = evaluate.main([run, "--n_prompts=64", "--plot=False", "--all_ckpts=True"])
    # ckpt_0000000.pt, ckpt_0000005.pt and ckpt.pt (a copy of step 5 in other bytes: a zip names its records
    # after the file), one batch each; the copy's step is reported once
    assert forwards[0] == 3 and [c["step"] for c in first[0]["checkpoints"]] == [0, 5]
    again = evaluate.main([run, "--n_prompts=64", "--plot=False", "--all_ckpts=True"])
    assert forwards[0] == 3 and again[0]["checkpoints"] == first[0]["checkpoints"]  # no model forward at all
    evaluate.main([run, "--n_prompts=96", "--plot=False"])  # other settings: computed, both kept
    assert forwards[0] == 4
    fake_run(tmp_path / "r", steps=(5,), init_seed=7)  # rewritten checkpoints: recomputed, never served stale
    third = evaluate.main([run, "--n_prompts=64", "--plot=False"])
    assert forwards[0] == 5 and third[0]["score"] != first[0]["score"]


@slow
def test_a_full_disk_while_evaluating_is_one_line_and_keeps_the_old_result(tmp_path):
    import shutil
    run = _tiny_run(tmp_path / "r")
    env = {**ENV, "EVAL_CACHE": str(tmp_path / "cache")}
    with _small_disk(tmp_path) as mnt:
        shutil.copytree(run, mnt / "r")
        r = python("evaluate.py", str(mnt / "r"), "--n_prompts=64", env=env)
        assert r.returncode == 0, r.stderr
        old = {f: (mnt / "r" / f).read_bytes() for f in os.listdir(mnt / "r") if f.startswith("eval_")}
        assert old
        _fill(mnt)
        r = python("evaluate.py", str(mnt / "r"), "--n_prompts=64", "--all_ckpts=True",
                   "--baselines=zero,knn,averaging,lasso", env=env)
        assert r.returncode != 0 and one_error_line(r), r.stderr
        assert "No space left on device" in r.stderr and "the scores computed: step" in r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        now = {f: (mnt / "r" / f).read_bytes() for f in os.listdir(mnt / "r") if f.startswith("eval_")}
        assert now == old  # the old JSON and PNG intact, no 0-byte file, no temporary file left
        json.loads(old["eval_linear_regression_n64.json"])


@slow
def test_a_full_disk_in_the_middle_of_a_checkpoint_archive_is_one_line(tmp_path):
    # the probe's repro (--n_layer=4 --n_embd=32): when the disk fills inside a record of the zip, torch's
    # writer raised `RuntimeError: ... unexpected pos` (a traceback) before checkpoints were made in memory
    # (at 60 and 57 pages short of the step-5 checkpoint; at 54 it was an OSError: where a record straddles)
    args = [*TINY, "--n_layer=4", "--n_embd=32", "--max_iters=5"]
    probe = _tiny_run(tmp_path / "probe", *args[len(TINY):])
    sizes = [os.path.getsize(os.path.join(probe, f"ckpt_{s:07d}.pt")) for s in (0, 5)]
    pages = [-(-n // 4096) for n in sizes]
    for short in (60, 57):
        with _small_disk(tmp_path, name=f"d{short}") as mnt:
            # the lock, the step-0 checkpoint, log.txt and metrics.jsonl fit; the step-5 checkpoint does not
            _fill(mnt, leave_pages=1 + pages[0] + 1 + 1 + pages[1] - short)
            r = python("train.py", *args, f"--out_dir={mnt / 'r'}")
            assert one_error_line(r), (short, r.stderr[-2000:])
            assert "cannot write a checkpoint" in r.stderr and "(step 0) is intact" in r.stderr
            assert not [f for f in os.listdir(mnt / "r") if f.endswith(".tmp")]
            assert train.load_checkpoint(str(mnt / "r" / "ckpt.pt"))["step"] == 0
            r = python("train.py", *args, f"--out_dir={mnt / 'r'}", "--resume=True")  # the same again
            assert one_error_line(r) and "(step 0) is intact" in r.stderr, (short, r.stderr[-2000:])


def _ignoring(*signals):
    def preexec():
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
    return preexec


@slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_a_signal_ignored_at_start_stays_ignored(tmp_path, sig):
    # `nohup python train.py ... &` then a closed terminal; a script's background job (SIGINT ignored): the run
    # goes on to its end. SIGTERM still stops it gracefully
    run = tmp_path / "r"
    args = [sys.executable, "train.py", *TINY, "--max_iters=100000", "--ckpt_interval=1000", f"--out_dir={run}"]
    out = open(tmp_path / "out.txt", "w")  # a file, not a pipe nobody reads: a full pipe would stall the run
    p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=_ignoring(sig))
    try:
        _wait_for_rows(run, 3, [p])
        p.send_signal(sig)
        time.sleep(2)
        assert p.poll() is None  # still training
        _wait_for_rows(run, len(metrics(run)) + 3, [p])  # (raises if the run ends instead)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        out.close()
    assert p.returncode == 0 and "stopped at step" in (tmp_path / "out.txt").read_text()


def test_stop_signals_leave_an_ignored_disposition_alone(monkeypatch):
    for sig in (signal.SIGHUP, signal.SIGINT):
        monkeypatch.setattr(signal, "getsignal", lambda s, real=signal.getsignal: signal.SIG_IGN if s == sig
                            else real(s))
        with train.StopSignals() as stop:
            assert sig not in stop.old and signal.SIGTERM in stop.old
    monkeypatch.undo()


def test_a_config_file_sees_the_config_so_far(tmp_path):
    arch = tmp_path / "arch.py"
    arch.write_text("n_layer = 2\nn_embd = 8 * n_layer\n")
    task = tmp_path / "task.py"
    task.write_text("task = 'decision_tree'\nn_dims = 6\ncurriculum_points_start = 2 * n_dims + 1\n"
                    "n_points = [n_dims * k for k in (3,)][0]\n")
    cfg, explicit = train.load_config([str(task), str(arch), "--n_head=4"])
    assert (cfg["n_embd"], cfg["curriculum_points_start"], cfg["n_points"]) == (16, 13, 18)
    assert {"n_layer", "n_embd", "task", "n_dims", "curriculum_points_start", "n_points", "n_head"} == explicit
    (tmp_path / "bad.py").write_text("n_layer = n_lyer + 1\n")
    with pytest.raises(train.UserError, match="NameError.*sees the defaults and the keys of the files"):
        train.load_config([str(tmp_path / "bad.py")])


def test_a_checkpoint_holding_code_is_refused_without_advice_to_disable_the_check(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save(dict(model=Evil()), tmp_path / "evil.pt")
    with pytest.raises(train.UserError) as e:
        train.load_checkpoint(str(tmp_path / "evil.pt"))
    assert "holds pickled code or objects" in str(e.value) and "not loaded" in str(e.value)
    assert "weights_only" not in str(e.value) and "False" not in str(e.value)


def test_a_table_row_without_init_rules_is_one_line(tmp_path, monkeypatch):
    import model

    class Attention2(model.CausalSelfAttention):  # a new module whose row has no init rules yet
        pass
    monkeypatch.setitem(model.MIXERS, "X", model.Kind(Attention2, "attention", 1e-6, None, None, uses_heads=True))
    with pytest.raises(train.UserError, match=r"no init rule covers parameter 'h\.0\.mixer\.c_attn\.weight'") as e:
        run_train(tmp_path / "r", "--layer_pattern=X")
    assert "\n" not in str(e.value)


@slow
def test_the_log_says_which_scan_backend_a_run_used(tmp_path):
    # a fallback to the slow torch backend is in log.txt, not only on stderr
    env = {**ENV, "CXX": "/nonexistent-compiler", "SSM_SCAN_CACHE": str(tmp_path / "empty-cache")}
    run = tmp_path / "m"
    r = python("train.py", *TINY, "--layer_pattern=M", "--ffn=none", "--pos=none", "--norm=rmsnorm",
               "--max_iters=3", f"--out_dir={run}", env=env)
    assert r.returncode == 0, r.stderr
    log = (run / "log.txt").read_text()
    assert "selective scan: the cpu backend" in log
    assert "note: the cpu scan failed" in log and "uses the torch backend" in log


@slow
def test_evaluate_says_what_it_computes_before_a_long_silence(tmp_path):
    run = fake_run(tmp_path / "r", steps=(0, 5))
    r = python("evaluate.py", run, "--n_prompts=128", "--all_ckpts=True", "--plot=False",
               env={**ENV, "EVAL_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert re.search(r"\d+ of \d+ error curves to compute on 128 prompts", r.stdout)


# -----------------------------------------------------------------------------
# the repository keeps its promises: the README's quick start, the study scripts, the paper sweep (the
# docs and results it cites: test_lint.py)

@slow
def test_readme_quickstart_runs(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = re.search(r"## Quick start(.*?)\n## ", readme, re.S).group(1)
    line = next(l for l in section.splitlines() if l.startswith("python train.py"))
    assert line.count("out/quickstart") == 2  # trains into the directory it then evaluates
    line = line.replace("out/quickstart", str(tmp_path / "qs"))
    line = line.replace("python train.py", f"{sys.executable} train.py --max_iters=20 --eval_interval=10 --log_interval=10")
    line = line.replace("python evaluate.py", f"{sys.executable} evaluate.py --n_prompts=64")
    r = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    files = os.listdir(tmp_path / "qs")
    assert "ckpt.pt" in files and any(f.endswith(".png") for f in files)
    assert any(f.startswith("eval_") and f.endswith(".json") for f in files)
    assert re.search(r"score vs \w+ -?\d", r.stdout + r.stderr)
    commands = re.findall(r"^(python[^\n]*)$", section, re.M)
    assert "python -m pytest -q" in commands  # the README's test command runs both test files


def test_study_specs_name_every_run_once_and_the_study_script_trains_each_spec_once():
    # RESULTS.md promises every run of the study is reproducible from configs/study/<experiment>.py, and
    # results/study.sh trains every spec once. Part 3's specs reuse runs of parts 1-2 (and of each other):
    # a directory named by two specs must be the same run, config for config (the Mamba keys aside where the
    # model has no Mamba: parts 1-2 name the Mamba init their runs had, part 3 leaves the default)
    import configurator
    import sweep
    from model import ICLModel, ModelConfig
    specs = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs", "study")) if f.endswith(".py"))
    by_dir = {}
    for s in specs:
        for r in sweep.plan(sweep.load_spec([f"configs/study/{s}.py"])):
            assert r["cfg"]["out_dir"] == r["dir"] and r["dir"].startswith("out/study/")
            mamba = ModelConfig.from_dict(r["cfg"]).uses_mamba()
            cfg = {k: v for k, v in r["cfg"].items() if mamba or k not in configurator.MAMBA_KEYS}
            if r["dir"] in by_dir:
                assert by_dir[r["dir"]] == cfg, f"{r['dir']} is two different runs"
                continue
            by_dir[r["dir"]] = cfg
            ICLModel(train.validate(r["cfg"]))  # valid, and the small sizes build
    assert len(by_dir) > 75  # parts 1-2 (75 runs) and part 3's new ones
    script = open(os.path.join(ROOT, "results", "study.sh")).read()
    trained = re.findall(r"^\s+train ([\w ]+?)\s*(?:#.*)?$", script, re.M)
    assert sorted(" ".join(trained).split()) == specs


def test_paper_sweep_dry_run_lists_every_paper_architecture_on_every_paper_task():
    # the paper's architectures (Table 3's rows, evaluate.ARCH_ORDER, less Park's MambaFormer) and its tasks
    # (Table 3's columns, evaluate.COLUMNS; not tasks.TASKS: a task added to this code is not in the paper)
    paper_archs = [a for a in evaluate.ARCH_ORDER if a != "mambaformer"]
    paper_tasks = set(evaluate.COLUMNS)
    r = subprocess.run(["bash", "results/paper.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and r.stderr == "" and len(lines) == len(paper_archs) * len(paper_tasks)
    pairs = set()
    for line in lines:
        m = re.fullmatch(r"python train.py configs/(\w+)\.py configs/(\w+)\.py --out_dir=out/paper/\1-\2"
                         r" --resume=auto", line)
        assert m, line
        pairs.add(m.groups())
    assert pairs == {(a, t) for a in paper_archs for t in paper_tasks}
    for arch, task in sorted(pairs)[::7]:  # a sample: each command is a valid config
        train.validate(train.load_config([f"configs/{arch}.py", f"configs/{task}.py"])[0])
    r = subprocess.run(["bash", "results/paper.sh", "--dry-run", "--archs=llama", "--max_iters=2", "--device=cpu"],
                       cwd=ROOT, capture_output=True, text=True)
    assert len(r.stdout.splitlines()) == len(paper_tasks)
    assert all(l.endswith(" --max_iters=2 --device=cpu") for l in r.stdout.splitlines())
    r = subprocess.run(["bash", "results/paper.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:")


@slow
def test_paper_sweep_trains_resumes_and_evaluates_a_subset_on_cpu(tmp_path):
    env = {**ENV, "PAPER_OUT": str(tmp_path / "paper"), "PAPER_TABLE": str(tmp_path / "table3"),
           "EVAL_ARGS": "--n_prompts=64"}
    args = ["--archs=gpt2,mamba", "--tasks=linear_regression,decision_tree", "--max_iters=2", "--device=cpu",
            "--n_layer=1", "--n_embd=16", "--n_head=2", "--eval_interval=1"]
    r = subprocess.run(["bash", "results/paper.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    runs = sorted(os.listdir(tmp_path / "paper"))
    assert {"gpt2-linear_regression", "gpt2-decision_tree", "mamba-linear_regression",
            "mamba-decision_tree"} <= set(runs)
    assert all(state(tmp_path / "paper" / f"{a}-{t}")["step"] == 2 for a in ("gpt2", "mamba")
               for t in ("linear_regression", "decision_tree"))
    table = (tmp_path / "table3.md").read_text()
    assert "| gpt2 |" in table and "| mamba |" in table and "Decision Tree: model:gpt2-decision_tree" in table
    assert "Decision Tree: knn" in (tmp_path / "table3_classical.md").read_text()
    r = subprocess.run(["bash", "results/paper.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)  # again: every run resumes to nothing
    assert r.returncode == 0 and r.stdout.count("done:") == 4, r.stdout
    assert ("finished at step 2 (max_iters 2); nothing to do"  # --resume=auto: a finished run is left alone
            in (tmp_path / "paper" / "gpt2-linear_regression.log").read_text())
    r = subprocess.run(["bash", "results/paper.sh", "--slurm", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    sbatch = (tmp_path / "paper" / "sweep.sbatch").read_text()
    assert r.returncode == 0 and "#SBATCH --array=0-3" in sbatch and "--max_iters=2" in sbatch
    assert subprocess.run(["bash", "-n", str(tmp_path / "paper" / "sweep.sbatch")]).returncode == 0
    r = subprocess.run(["bash", "results/paper.sh", "--cost", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "not measured (no GPU run)" in r.stdout

# -----------------------------------------------------------------------------
# the cached C++ scan library: a damaged file is rebuilt, never mapped (it died of SIGBUS); CXX is a command line

MAMBA = ["--layer_pattern=M", "--ffn=none", "--pos=none", "--norm=rmsnorm", "--n_layer=1", "--n_embd=16", "--n_head=2",
         "--batch_size=8", "--max_iters=3", "--log_interval=1"]
FALLBACK = "using the torch backend"
# the cpu backend against the torch one in a fresh process; prints the file name of the library it loaded
SCAN_CHECK = """
import os, torch, ssm_scan, ssm_scan_cpu
g = torch.Generator().manual_seed(0)
u, delta, z = (torch.randn(2, 8, 20, generator=g) for _ in range(3))
B, C = (torch.randn(2, 4, 20, generator=g) for _ in range(2))
kw = dict(D=torch.randn(8, generator=g), z=z, delta_softplus=True)
A = -torch.rand(8, 4, generator=g) - 0.5
out = ssm_scan.selective_scan(u, delta, A, B, C, **kw, backend="cpu")
ref = ssm_scan.selective_scan(u, delta, A, B, C, **kw, backend="torch")
assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
print(os.path.basename(ssm_scan_cpu._cpu_library()._name))
"""


def _scan_env(cache, **env):
    return {**{k: v for k, v in ENV.items() if k != "CXX"}, "SSM_SCAN_CACHE": str(cache), **env}


def _mamba_train(out_dir, cache, **env):
    return python("train.py", *MAMBA, f"--out_dir={out_dir}", env=_scan_env(cache, **env))


def _logging_cxx(tmp_path):  # a compiler that appends a line to a log on every call: builds can be counted
    import shutil
    cxx = tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\necho build >> "{tmp_path}/builds"\nexec "{shutil.which("c++")}" "$@"\n')
    cxx.chmod(0o755)
    return cxx


def _builds(tmp_path):
    return len((tmp_path / "builds").read_text().splitlines())


def _loads_in_a_child(lib):
    r = python("-c", f"import ctypes; ctypes.CDLL({str(lib)!r}).forward_f32")
    return r.returncode == 0


@slow
def test_a_damaged_cached_scan_library_is_rebuilt_not_mapped(tmp_path):
    cache = tmp_path / "cache"
    r = _mamba_train(tmp_path / "first", cache)
    assert r.returncode == 0 and FALLBACK not in r.stderr, r.stderr[-2000:]
    lib, = cache.glob("*.so")
    good = lib.read_bytes()
    damages = dict(half=good[:len(good) // 2], empty=b"", random=random.Random(0).randbytes(len(good)))
    for name, damaged in damages.items():
        lib.write_bytes(damaged)  # in place, as a full disk or a copy cut short leaves it
        r = _mamba_train(tmp_path / name, cache)
        assert r.returncode == 0, (name, r.returncode, r.stderr[-2000:])
        assert "Bus error" not in r.stderr and FALLBACK not in r.stderr, (name, r.stderr[-2000:])
        assert list(cache.glob("*.so")) == [lib] and lib.read_bytes() != damaged, name
        assert len(lib.read_bytes()) == len(good) and _loads_in_a_child(lib), name  # rebuilt whole


@slow
def test_a_damaged_scan_library_that_cannot_be_rebuilt_falls_back_in_one_line(tmp_path):
    cxx = _logging_cxx(tmp_path)
    cache = tmp_path / "cache"
    r = _mamba_train(tmp_path / "first", cache, CXX=str(cxx))
    assert r.returncode == 0 and FALLBACK not in r.stderr, r.stderr[-2000:]
    lib, = cache.glob("*.so")
    lib.write_bytes(lib.read_bytes()[:lib.stat().st_size // 2])
    cxx.unlink()  # the same CXX, so the same cache file, but no compiler to rebuild it with
    r = _mamba_train(tmp_path / "second", cache, CXX=str(cxx))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert len(err) == 1 and FALLBACK in err[0] and lib.name in err[0] and "not found" in err[0], err


@slow
def test_processes_healing_one_damaged_scan_library_at_once_build_it_once(tmp_path):
    cxx = _logging_cxx(tmp_path)
    cache = tmp_path / "cache"
    r = python("-c", SCAN_CHECK, env=_scan_env(cache, CXX=str(cxx)))
    assert r.returncode == 0 and _builds(tmp_path) == 1, r.stderr[-2000:]
    lib, = cache.glob("*.so")
    lib.write_bytes(lib.read_bytes()[:lib.stat().st_size // 2])
    procs = [subprocess.Popen([sys.executable, "-c", SCAN_CHECK], cwd=ROOT, env=_scan_env(cache, CXX=str(cxx)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert all(rc == 0 and out.strip() == lib.name for rc, out, _ in results), results
    assert _builds(tmp_path) == 2 and _loads_in_a_child(lib)  # one of them rebuilt it, the others waited for it


@slow
def test_cxx_is_a_command_line_and_part_of_the_cache_key(tmp_path):
    cache = tmp_path / "cache"
    r = python("-c", SCAN_CHECK, env=_scan_env(cache, CXX="c++ -fno-strict-aliasing"))
    assert r.returncode == 0, r.stderr[-2000:]
    with_flags = r.stdout.strip()
    r = python("-c", SCAN_CHECK, env=_scan_env(cache))  # the default compiler: its own build, not the other's
    assert r.returncode == 0 and r.stdout.strip() != with_flags, r.stderr[-2000:]
    assert sorted(p.name for p in cache.glob("*.so")) == sorted([with_flags, r.stdout.strip()])


def test_cxx_whose_first_word_is_missing_is_named_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SSM_SCAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ssm_scan_cpu, "_cpu_lib", None)
    monkeypatch.setenv("CXX", "no-such-cxx -O2")
    with pytest.raises(ssm_scan_cpu.CPUBuildError) as e:
        ssm_scan_cpu._cpu_library()
    assert str(e.value) == "no C++ compiler ('no-such-cxx' not found; set CXX)"
    monkeypatch.setenv("CXX", "c++ '-O2")
    with pytest.raises(ssm_scan_cpu.CPUBuildError, match="not a command line") as e:
        ssm_scan_cpu._cpu_library()
    assert len(str(e.value).splitlines()) == 1


# -----------------------------------------------------------------------------
# results/paper.sh, stops and edges: a run a signal stopped is reported as stopped and stops the sweep, only
# finished runs are scored, the SLURM task passes SLURM's TERM on and requeues itself, PAPER_OUT may hold a
# space, and bad lists, overrides and --cost without runs end in one line

PAPER_TINY = ["--device=cpu", "--n_layer=1", "--n_embd=16", "--n_head=2"]


def _paper_env(tmp_path, out="paper", **extra):
    env = {k: v for k, v in ENV.items() if k not in ("GPUS", "PAPER_OUT", "PAPER_TABLE", "EVAL_ARGS")}
    return {**env, "PAPER_OUT": str(tmp_path / out), "PAPER_TABLE": str(tmp_path / "table3"), **extra}


def _paper(env, *args, timeout=120):
    return subprocess.run(["bash", "results/paper.sh", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _popen_group(argv, env, cwd=ROOT):
    """a process in a session of its own (so that a test can signal or clean up all it started), with
    Ctrl-C's SIGINT at its default, as a terminal's foreground job has it"""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _kill_group(p):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.communicate()


def _wait_for_metrics(run, p, deadline=120):
    """until the run has logged a metrics row (it is in its training loop)"""
    end = time.time() + deadline
    while not (os.path.isfile(run / "metrics.jsonl") and os.path.getsize(run / "metrics.jsonl")):
        assert p.poll() is None, p.communicate()
        assert time.time() < end, "the run logged nothing"
        time.sleep(0.05)


def test_paper_sweep_refuses_empty_unknown_lists_and_per_run_overrides_in_one_line(tmp_path):
    env = _paper_env(tmp_path)
    for bad in (["--archs="], ["--tasks="], ["--archs=nope"], ["--archs=linear_regression"], ["--tasks=gpt2"],
                ["--archs=gpt2,,mamba"], ["--archs=gpt2,gpt2"], ["--out_dir=somewhere"], ["--resume=True"]):
        for mode in (["--slurm"], ["--dry-run"], []):
            r = _paper(env, *mode, *bad, "--max_iters=2")
            assert one_error_line(r) and r.stdout == "", (mode, bad, r.stdout, r.stderr)
            assert not (tmp_path / "paper").exists(), (mode, bad)  # nothing written, nothing started
    r = _paper(env, "--slurm", "--archs=gpt2")
    assert r.returncode == 0 and "#SBATCH --array=0-5" in (tmp_path / "paper" / "sweep.sbatch").read_text()


def test_paper_sweep_quotes_a_paper_out_with_a_space(tmp_path):
    import shlex
    env = _paper_env(tmp_path, out="my paper")
    r = _paper(env, "--dry-run", "--archs=gpt2", "--tasks=mqar", "--max_iters=2")
    assert r.returncode == 0
    assert shlex.split(r.stdout) == ["python", "train.py", "configs/gpt2.py", "configs/mqar.py",
                                     f"--out_dir={tmp_path}/my paper/gpt2-mqar", "--resume=auto",
                                     "--max_iters=2"]
    r = _paper(env, "--slurm", "--archs=gpt2", "--tasks=mqar,decision_tree", "--max_iters=2")
    script = tmp_path / "my paper" / "sweep.sbatch"
    assert r.returncode == 0 and shlex.split(r.stdout.split(": ", 1)[1]) == ["sbatch", str(script)]
    text = script.read_text()
    assert f'#SBATCH --output="{tmp_path}/my paper/slurm-%A_%a.log"' in text.splitlines()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = _paper(_paper_env(tmp_path, out='a"b'), "--slurm")  # an #SBATCH line cannot quote this one
    assert one_error_line(r) and not (tmp_path / 'a"b').exists()


def test_paper_cost_without_runs_and_with_garbage_metrics_lines(tmp_path):
    for out in ("missing", "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        r = _paper(_paper_env(tmp_path, out=out), "--cost")
        assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "no runs in" in r.stderr and "--max_iters=" in r.stderr and "--cost" in r.stderr
    run = tmp_path / "paper" / "gpt2-linear_regression"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(f"new run in {run} | 1 process(es) on cuda:0 | torch 2 | git x\n")
    # train.py tolerates (and drops) what is not a row: garbage, JSON that is no object, bad bytes, a bad
    # rate, the half-written last line of a killed run
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "steps_per_s": 100.0}\nnot json\n[1, 2]\n\xff\xfe\n'
                                        b'{"step": 2, "steps_per_s": "fast"}\n'
                                        b'{"step": 3, "steps_per_s": 100.0}\n'
                                        b'{"step": 4, "steps_per_s": 100.0}\n{"step": 5, "steps_p')
    r = _paper(_paper_env(tmp_path), "--cost", "--archs=gpt2", "--tasks=linear_regression")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "| gpt2-linear_regression | cuda:0 | 100.0 | 1.4 |" in r.stdout, r.stdout


@slow
@pytest.mark.parametrize("target", ["train.py", "the sweep", "Ctrl-C"])
def test_paper_sweep_reports_a_stopped_run_and_starts_no_other(tmp_path, target):
    # SIGTERM to the train.py (a person, a preemption), SIGTERM to the sweep's own process, or Ctrl-C
    # (SIGINT to the terminal's whole foreground group): the run checkpoints, the sweep says so and stops
    env = _paper_env(tmp_path, GPUS="cpu")  # one lane: the second run would start only after the first
    first, second = tmp_path / "paper" / "gpt2-linear_regression", tmp_path / "paper" / "gpt2-decision_tree"
    p = _popen_group(["bash", "results/paper.sh", "--archs=gpt2", "--tasks=linear_regression,decision_tree",
                      "--max_iters=100000", "--log_interval=1", *PAPER_TINY], env)
    try:
        _wait_for_metrics(first, p)
        if target == "train.py":
            os.kill(int((first / "train.lock").read_text()), signal.SIGTERM)
        elif target == "the sweep":
            os.kill(p.pid, signal.SIGTERM)
        else:
            os.killpg(p.pid, signal.SIGINT)
        end = time.time() + 120
        while p.poll() is None:
            assert not second.exists(), "the sweep started the next run after a stop"
            assert time.time() < end
            time.sleep(0.1)
        out, err = p.communicate(timeout=30)  # (nothing the sweep started outlives it, holding its output)
    finally:
        _kill_group(p)
    status = train.run_status(str(first))
    assert status["state"] == "unfinished" and status["step"] >= 1
    stopped = f"stopped: gpt2-linear_regression at step {status['step']} of 100000\n"
    assert p.returncode == 1 and out == stopped, (p.returncode, out, err)
    assert "run the same command again" in err
    assert f"stopped at step {status['step']}" in (first / "log.txt").read_text()
    assert not second.exists() and not (tmp_path / "table3.md").exists()  # nothing else started or scored


@slow
def test_paper_eval_scores_finished_runs_only_and_names_the_unfinished(tmp_path):
    env = _paper_env(tmp_path, EVAL_ARGS="--n_prompts=64")
    done, stopped = (tmp_path / "paper" / f"{arch}-linear_regression" for arch in ("gpt2", "llama"))
    r = python("train.py", "configs/gpt2.py", "configs/linear_regression.py", f"--out_dir={done}",
               "--max_iters=2", *PAPER_TINY)
    assert r.returncode == 0, r.stderr
    p = _popen_group([sys.executable, "train.py", "configs/llama.py", "configs/linear_regression.py",
                      f"--out_dir={stopped}", "--max_iters=100000", "--log_interval=1", *PAPER_TINY], ENV)
    try:
        _wait_for_metrics(stopped, p)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    finally:
        _kill_group(p)
    step = train.run_status(str(stopped))["step"]
    assert p.returncode == 0 and train.run_status(str(stopped))["state"] == "unfinished"
    r = _paper(env, "--eval", "--archs=gpt2,llama", "--tasks=linear_regression", timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"left out: llama-linear_regression (unfinished: step {step} of 100000)" in r.stdout.splitlines()
    for table in ("table3.md", "table3_classical.md"):
        text = (tmp_path / table).read_text()
        assert "| gpt2 |" in text and "llama" not in text, text


@slow
def test_paper_slurm_task_passes_term_on_requeues_then_finishes(tmp_path):
    import shlex
    out = tmp_path / "my paper"  # a space: every path in the script is quoted
    env = _paper_env(tmp_path, out="my paper")
    r = _paper(env, "--slurm", "--archs=gpt2", "--tasks=linear_regression", "--max_iters=1500",
               "--batch_size=8", "--log_interval=10", *PAPER_TINY)
    script = out / "sweep.sbatch"
    assert r.returncode == 0 and subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # a fake scontrol, first on PATH, records what it is asked; SLURM's variables for array task 0 of job 4242
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "SLURM_ARRAY_JOB_ID": "4242",
             "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "4243", "SLURM_SUBMIT_DIR": ROOT}
    run = out / "gpt2-linear_regression"
    p = _popen_group(["bash", str(script)], slurm, cwd=tmp_path)  # (it goes to SLURM_SUBMIT_DIR itself)
    try:
        _wait_for_metrics(run, p)
        os.kill(p.pid, signal.SIGTERM)  # --signal=B:TERM@300: to the batch shell only
        stdout, stderr = p.communicate(timeout=120)
    finally:
        _kill_group(p)
    status = train.run_status(str(run))
    assert p.returncode == 0 and status["state"] == "unfinished", (p.returncode, stdout, stderr[-2000:])
    assert f"stopped: gpt2-linear_regression at step {status['step']} of 1500; requeued" in stdout, stdout
    assert f"stopped at step {status['step']}" in (run / "log.txt").read_text()  # train.py checkpointed
    assert calls.read_text() == "requeue 4242_0\n"
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, env=slurm, capture_output=True, text=True,
                       timeout=600)  # the requeued task: continues to the end, and is not requeued again
    # (train.py's own lines come first: a task's output is its SLURM log)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "done: gpt2-linear_regression", r.stderr[-2000:]
    assert train.run_status(str(run)) == dict(state="finished", step=1500, max_iters=1500)
    assert f"resuming at step {status['step']}" in (run / "log.txt").read_text()
    assert calls.read_text() == "requeue 4242_0\n"
    # a failing train.py: the task exits with its code, and is not requeued
    r = _paper(_paper_env(tmp_path, out="bad"), "--slurm", "--archs=gpt2", "--tasks=mqar", "--no_such_key=1")
    assert r.returncode == 0
    r = subprocess.run(["bash", str(tmp_path / "bad" / "sweep.sbatch")], cwd=tmp_path, env=slurm,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout.splitlines()[-1] == "FAILED: gpt2-mqar (exit 2)", (r.stdout, r.stderr)
    assert "error: " in r.stderr
    assert calls.read_text() == "requeue 4242_0\n"

# -----------------------------------------------------------------------------
# a finished torchrun run exits 0 every time: no worker tears the gloo group down in interpreter finalization

# the workers' sitecustomize: finalization drops its sys.modules entry before it collects torch's modules, so it
# notes the threads alive when the interpreter starts to finalize
_FINALIZATION_PROBE = '''
import os
import sys


class _Probe:
    def __del__(self):
        names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
        with open(os.environ["FINALIZATION_PROBE"], "a") as f:
            f.write(f"rank {os.environ['RANK']} finalizing, threads: {' '.join(names)}\\n")


if "RANK" in os.environ:  # a worker, not torchrun's agent
    sys.modules["_finalization_probe"] = _Probe()
'''


@slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_a_finished_torchrun_run_exits_0_every_time(tmp_path):
    """finding 10: 8 finished 2-process runs (fresh; resumed; resumed right after rank 1 was SIGKILLed mid-run) each
    exit 0 without a `terminate called` abort, and no worker reaches interpreter finalization with gloo's threads
    alive (torch.distributed.nn holds the group past destroy_process_group; tearing it down there could abort)"""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_FINALIZATION_PROBE)
    probe = tmp_path / "finalizing.txt"
    env = {**ENV, "FINALIZATION_PROBE": str(probe),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"), ENV.get("PYTHONPATH")]))}

    def torchrun(run, *args):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *TINY,
                f"--out_dir={run}", *args]

    def finish(run, steps, *args):
        probe.unlink(missing_ok=True)
        r = subprocess.run(torchrun(run, f"--max_iters={steps}", *args), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=180)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "terminate called" not in out, out[-3000:]
        assert f"done at step {steps} " in (run / "log.txt").read_text() and state(run)["step"] == steps
        assert not probe.exists(), probe.read_text()

    def kill_rank_1_mid_run(run):
        rows = len(metrics(run))
        p = subprocess.Popen(torchrun(run, "--resume=True", "--max_iters=100000", "--ddp_timeout=20"), cwd=ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        workers = []
        try:
            _wait_for_rows(run, rows + 5, [p])
            workers = _children(p.pid)
            rank_1 = [c for c in workers if "\0RANK=1\0" in "\0" + open(f"/proc/{c}/environ").read()]
            os.kill(rank_1[0], signal.SIGKILL)
            assert p.wait(timeout=90) != 0
        finally:
            if p.poll() is None:
                p.kill()
            for pid in workers:  # (not in torchrun's process group; a reaped pid may be another process's now)
                with contextlib.suppress(OSError):
                    if str(run) in open(f"/proc/{pid}/cmdline").read():
                        os.kill(pid, signal.SIGKILL)
        return state(run)["step"]

    for i in range(4):  # 8 finished runs and 2 killed ones: a minute or two on 2 cores
        run = tmp_path / f"run{i}"
        finish(run, 20)
        if i % 2 == 0:
            finish(run, kill_rank_1_mid_run(run) + 20, "--resume=True")
        else:
            finish(run, 40, "--resume=True")
