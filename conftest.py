"""
What test_all.py and test_reliability.py share: the environment, the `slow` marker, helpers, fixtures.
    python -m pytest -q                   # every test (the README's command, what CI runs)
    python -m pytest -q -m "not slow"     # the quick loop
"""
import os
# set before ssm_scan is imported: the Triton kernel runs on CPU tensors in Triton's interpreter
os.environ.setdefault("TRITON_INTERPRET", "1")
import json
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

# evaluate.py's results cache: one of the test session's own, never the user's (a stale entry there could
# hide a bug; the tests' tiny runs would fill it)
os.environ.setdefault("EVAL_CACHE", tempfile.mkdtemp(prefix="icl-eval-cache-"))
ROOT = os.path.dirname(os.path.abspath(__file__))
# tiny models: one thread is fastest, and never oversubscribes shared cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# a tiny model that trains in a fraction of a second
TINY = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--batch_size=8", "--max_iters=30", "--log_interval=1",
        "--eval_interval=10", "--ckpt_interval=5"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real processes, kills, DDP, Triton's interpreter, whole runs")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_train(out_dir, *args):
    """train.main in this process (the tiny model); returns the final step"""
    import train
    return train.main([*TINY, f"--out_dir={out_dir}", *args])


def default_signals():
    """a child's SIGINT and SIGHUP at their defaults, whatever the suite inherited: `nohup pytest` ignores
    SIGHUP and a background job SIGINT, and a child would inherit that (train.py then rightly keeps them
    ignored)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture
def signals_at_default():
    """this process's SIGINT and SIGHUP at Python's defaults for an in-process test that signals itself"""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield old
    for s, handler in old.items():
        signal.signal(s, handler)


def python(*args, timeout=300, env=None):
    """a real process in the repository: `python train.py ...`, `python evaluate.py ...` or a script"""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=default_signals)


def metrics(out_dir):
    """the logged sequence without the wall-clock fields"""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "steps_per_s")} for line in f]


def state(out_dir, name="ckpt.pt"):
    import train
    return train.load_checkpoint(os.path.join(out_dir, name))


def same_tensors(a, b):
    """bitwise equality of two (nested) state dicts"""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def one_error_line(result):
    """a process that failed as bad input should: exit 2, one line `error: ...` on stderr, no traceback"""
    err = result.stderr.strip()
    return result.returncode == 2 and err.startswith("error: ") and len(err.splitlines()) == 1


def fake_run(path, n_dims=3, n_points=7, task="linear_regression", steps=(0,), init_seed=0, **model_kw):
    """a run directory in train.py's format around an untrained tiny model (no training needed to test
    evaluate)"""
    from model import ICLModel, ModelConfig
    import tasks
    margs = dict(n_dims=n_dims, y_dim=tasks.y_dim(task, n_dims), n_positions=16, n_layer=1, n_embd=16,
                 n_head=2, **model_kw)
    cfg = dict(task=task, n_dims=n_dims, n_points=n_points, arch="gpt2", **tasks.TASK_DEFAULTS)
    os.makedirs(path, exist_ok=True)
    for step in steps:
        torch.manual_seed(init_seed + step)
        m = ICLModel(ModelConfig(**margs))
        ckpt = dict(model=m.state_dict(), optimizer={}, step=step, config=cfg, model_args=margs)
        torch.save(ckpt, os.path.join(path, f"ckpt_{step:07d}.pt"))
        torch.save(ckpt, os.path.join(path, "ckpt.pt"))  # a copy, not a hard link: as after `cp -r`
    return str(path)
