"""
The armour around a run: what keeps it from losing or mixing work, and what turns bad input into one line.
train.py's loop calls these; evaluate.py and sweep.py share them. Nothing here changes what is trained.
    checkpoints  written in memory, then a temporary file, fsync and rename; loaded without unpickling code
    run files    a directory holds one run: the lock that keeps a second train.py out, metrics truncation
    signals      SIGINT / SIGTERM / SIGHUP stop after the step in progress (a second one at once)
    exits        a finished torchrun worker leaves without racing gloo's threads in interpreter shutdown
"""
import atexit
import contextlib
import fcntl
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile

import torch
import torch.distributed as dist


class UserError(Exception):
    """bad input or a failed run: printed as one line `error: ...` (exit code 2), no traceback."""


def short(value, limit=60):
    """a value for an error message: its repr, cut to `limit` characters with its length said"""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text):,} characters)"


def oneline(e):  # an exception as one short line (load_state_dict and gloo errors span several)
    return ' '.join(str(e).split())[:300] or type(e).__name__


def check_device(dev, auto=False, present=True):
    """the device `dev` names, after checking the name (cpu, cuda, cuda:N; and auto, where allowed) and, if
    `present`, that this machine has it ('auto' is then cuda if there is one, else cpu)"""
    if not re.fullmatch(r'auto|cpu|cuda(:\d+)?' if auto else r'cpu|cuda(:\d+)?', dev):
        raise UserError(f"device={short(dev)} is not one of {'auto, ' * auto}cpu, cuda, cuda:N")
    if not present:
        return dev
    if dev == 'auto':
        dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev.startswith('cuda') and (torch.device(dev).index or 0) >= torch.cuda.device_count():
        raise UserError(f"device={dev!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


# a directory holding any of these holds a run
RUN_FILES = re.compile(r'ckpt\.pt|ckpt_\d+\.pt|metrics\.jsonl|log\.txt')
LOCK_FILE = 'train.lock'

# -----------------------------------------------------------------------------
# checkpoints: written atomically, loaded safely

# keys added after checkpoints were first written, with the value a checkpoint that lacks one was trained with
# (mamba_init came with a change of default: runs saved before it had the N(0, 0.02) rule, now 'gpt2')
FORMER_DEFAULTS = dict(mamba_init='gpt2')


def load_checkpoint(path):
    """a checkpoint dict, or a UserError saying what is wrong with the file. Never unpickles code."""
    path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path} (a run killed before writing one has nothing to resume: "
                        "start it anew)")
    try:
        with zipfile.ZipFile(path) as z, warnings.catch_warnings():
            warnings.simplefilter('ignore')
            # torch.load does not check the CRCs: a flipped bit in a tensor would load silently
            bad = z.testzip()
            # weights_only: never runs pickled code
            ckpt = None if bad else torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        if 'weights_only' in str(e) or 'Unsupported global' in str(e):
            # torch's message advises turning the check off: never repeat that for a file we cannot vouch for
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            held = f" ({found[1]})" if found else ''
            raise UserError(f"{path} holds pickled code or objects{held}, not only tensors: it was not "
                            "loaded (not a checkpoint written by this project's train.py?)")
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupted?): {oneline(e)}")
    if bad:
        raise UserError(f"{path} is corrupted: checksum mismatch in {bad}")
    keys = ('model', 'optimizer', 'step', 'config', 'model_args')
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing or not isinstance(ckpt['config'], dict) or type(ckpt['step']) is not int:
        raise UserError(f"{path} is not a checkpoint of this project (missing or malformed: "
                        f"{', '.join(missing) or 'config, step'})")
    # a checkpoint saved before a key existed was trained with the behaviour the key's first default names
    ckpt['config'] = {**FORMER_DEFAULTS, **ckpt['config']}
    return ckpt


def step_checkpoints(out_dir):
    """[(step, path)] of the ckpt_<step>.pt files in out_dir, by step (numerically: past 10^7 too)"""
    found = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = re.fullmatch(r'ckpt_(\d+)\.pt', name)
        if m:
            found.append((int(m[1]), os.path.join(out_dir, name)))
    return sorted(found)


def run_status(out_dir):
    """where the run in out_dir stands: dict(state='new' | 'unfinished' | 'finished', step, max_iters).
    'new': the directory holds no run; otherwise its resume checkpoint's step against its config's max_iters.
    A UserError when it holds run files but no readable checkpoint."""
    if not RunDirectory(out_dir).run_files():
        return dict(state='new', step=None, max_iters=None)
    _, ckpt = resume_checkpoint(out_dir, quiet=True)
    max_iters = ckpt['config'].get('max_iters')
    state = 'finished' if max_iters is not None and ckpt['step'] >= max_iters else 'unfinished'
    return dict(state=state, step=ckpt['step'], max_iters=max_iters)


def resume_checkpoint(out_dir, quiet=False):
    """(path, checkpoint) to resume from: ckpt.pt, or, when it is missing, the newest readable step
    checkpoint"""
    latest = os.path.join(out_dir, 'ckpt.pt')
    if os.path.exists(latest) or not step_checkpoints(out_dir):
        return latest, load_checkpoint(latest)
    for step, path in reversed(step_checkpoints(out_dir)):
        try:
            ckpt = load_checkpoint(path)
        except UserError as e:
            if not quiet:
                print(f"note: skipping {path}: {e}", file=sys.stderr)
            continue
        if not quiet:
            print(f"note: {latest} is missing; resuming from the newest step checkpoint {path} (step {step})")
        return path, ckpt
    raise UserError(f"no readable checkpoint in {out_dir} (ckpt.pt is missing and no ckpt_<step>.pt loads)")


def serialize(state):
    """a checkpoint's bytes, made in memory: the file write is then one write that either fits or raises
    OSError (torch's zip writer, writing to a full disk, fails mid-archive with a RuntimeError instead)"""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


UMASK = os.umask(0)
os.umask(UMASK)  # (read once: mkstemp's files are private, the files we write keep the usual permissions)


def atomic_write(path, data):
    """write `data` (bytes or text) to `path` through a temporary file in the same directory, fsynced and
    renamed: a crash, a full disk or a second Ctrl-C leaves the old file or the new one, never a part of one,
    and removes the temporary file (a SIGKILL can leave one behind: RunDirectory.claim clears the run's)"""
    if isinstance(data, str):
        data = data.encode()
    folder, name = os.path.split(path)
    # a unique name: two writers of one file at once (two evaluations) never share a temporary file
    fd, tmp = tempfile.mkstemp(dir=folder or '.', prefix=name + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), 0o666 & ~UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def save_checkpoint(run, state, keep_last, keep_every, good_step):
    """state as run.ckpt atomically, then ckpt_<step>.pt as a hard link to it (the same bytes, no second
    write; the next os.replace gives ckpt.pt a new inode); the step checkpoints not kept are dropped. A failed
    write (a full disk) is one UserError naming the last complete checkpoint, which is intact."""
    step = state['step']
    named = os.path.join(run.dir, f'ckpt_{step:07d}.pt')
    try:
        data = serialize(state)
        atomic_write(run.ckpt, data)
        with contextlib.suppress(FileNotFoundError):
            os.remove(named)  # a stale one from before a crash
        try:
            os.link(run.ckpt, named)
        except OSError:
            atomic_write(named, data)
        kept = [s for s, _ in step_checkpoints(run.dir) if not (keep_every and s % keep_every == 0)]
        for s in kept[:-keep_last]:
            os.remove(os.path.join(run.dir, f'ckpt_{s:07d}.pt'))
    except OSError as e:
        raise UserError(f"cannot write a checkpoint in {run.dir} at step {step}: "
                        f"{e.strerror or oneline(e)} (disk full?); "
                        f"the last complete checkpoint {run.ckpt} (step {good_step}) is intact")


def save_figure(fig, path, dpi=110):
    """a matplotlib figure as a PNG through atomic_write: a full disk leaves the old figure, not an empty
    one"""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    atomic_write(path, buffer.getvalue())


def truncate_metrics(path, step):
    """drop the rows past the resumed checkpoint, a half-written last line and malformed lines, so the resumed
    metrics equal an uninterrupted run's. Returns how many malformed lines were dropped."""
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path, 'rb') as f:
        for line in f:
            if not line.endswith(b'\n'):
                continue  # a row the killed run was writing
            try:
                row = json.loads(line.decode('utf-8'))
                row_step = row['step'] if isinstance(row, dict) and type(row['step']) is int else None
            except (ValueError, KeyError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
                row_step = None
            if row_step is None:
                dropped += 1
            elif row_step <= step:
                keep.append(line)
    atomic_write(path, b''.join(keep))
    return dropped


class RunDirectory:
    """the files of one run, and the lock that keeps a second train.py out of it while it runs"""

    def __init__(self, out_dir):
        self.dir = out_dir
        self.ckpt = os.path.join(out_dir, 'ckpt.pt')
        self.metrics = os.path.join(out_dir, 'metrics.jsonl')
        self.log = os.path.join(out_dir, 'log.txt')
        self.lock_fd = None

    def run_files(self):
        return (sorted(f for f in os.listdir(self.dir) if RUN_FILES.fullmatch(f))
                if os.path.isdir(self.dir) else [])

    def check_new(self):
        """a new run needs a directory that holds no run (and is not a file)"""
        if os.path.exists(self.dir) and not os.path.isdir(self.dir):
            raise UserError(f"out_dir {self.dir} is a file; choose another --out_dir")
        held = self.run_files()
        if held:
            shown = ', '.join(held[:4]) + (f' and {len(held) - 4} more' if len(held) > 4 else '')
            raise UserError(f"{self.dir} already holds a run ({shown}); continue it with --resume=True or "
                            "choose another --out_dir")

    def claim(self):
        """hold an exclusive lock on the directory for this process's life (released at exit or by
        release())"""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors='replace').strip() or '?'
            os.close(fd)
            raise UserError(f"{self.dir} is in use by another train.py (pid {holder}); wait for it to finish "
                            "or choose another --out_dir")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd
        # what a SIGKILLed writer of this run left (evaluation outputs are not ours to clear)
        for name in os.listdir(self.dir):
            if re.fullmatch(r'(ckpt(_\d+)?\.pt|metrics\.jsonl)\..+\.tmp', name):
                os.remove(os.path.join(self.dir, name))

    def release(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing the descriptor releases the flock
            self.lock_fd = None

    def claim_for_all(self, new, master, ddp, device):
        """rank 0 claims the directory (the lock, and for a new run a re-check under it: two new runs started
        at once); every rank learns whether it did before anything is written"""
        error = None
        if master:
            try:
                self.claim()
                if new:
                    self.check_new()
            except UserError as e:
                self.release()
                error = e
        if ddp:
            claimed = torch.tensor([0.0 if error else 1.0], device=device)
            dist.all_reduce(claimed, op=dist.ReduceOp.MIN)
            if claimed.item() == 0 and not error:
                error = UserError(f"process 0 could not claim {self.dir}; see its message")
        if error:
            raise error

    def append(self, path, text):
        try:
            with open(path, 'a') as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e} (disk full?)")

# -----------------------------------------------------------------------------
# signals and exits

class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (Ctrl-C, a scheduler's preemption, a closed terminal) ask the run to stop
    after the current step with a checkpoint; another one a second or more later stops it at once. (Copies
    within a second are the same request: under torchrun a Ctrl-C reaches each worker twice, from the
    terminal and forwarded by torchrun.) SIGINT and SIGHUP are left alone when they were ignored at start
    (`nohup`, a script's background job); SIGTERM always stops. The old handlers come back on exit."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    SAME_REQUEST_S = 1.0

    def __init__(self):
        self.count = 0
        self.first = None

    def _handle(self, signum, frame):
        now = time.monotonic()
        self.count += 1
        if self.first is None:
            self.first = now
        elif now - self.first >= self.SAME_REQUEST_S:
            raise KeyboardInterrupt(f"a second {signal.Signals(signum).name}")

    def __enter__(self):
        self.old = {}
        for s in self.SIGNALS:
            # SIGINT or SIGHUP ignored at start (nohup, a background job) stays ignored, as POSIX tools do
            if s != signal.SIGTERM and signal.getsignal(s) is signal.SIG_IGN:
                continue
            self.old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)


def git_rev():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cwd = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=cwd, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        return rev or 'unknown'
    return 'unknown'


def exit_finished_worker(code=0):
    """exit with `code` from a torchrun worker whose run ended (finished: files written, lock released, group
    destroyed; or failed, its one error line printed), skipping the interpreter's finalization:
    torch.distributed.nn, which DDP imports, keeps the gloo group alive past destroy_process_group, and
    tearing it down there can meet a gloo thread waiting for the GIL: SIGABRT, `terminate called without an
    active exception`, after a clean finish or instead of the error's exit code 2"""
    atexit._run_exitfuncs()  # what a normal exit runs first (wandb's finish, tqdm's monitor)
    with contextlib.suppress(OSError):  # a reader that left loses nothing
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run_command(main, catch=(UserError,)):
    """`main(sys.argv[1:])` as a command: an error of the kinds `catch` is one line `error: ...` and exit
    code 2 (from a torchrun worker too); a reader that left (`--help | head`) is no error"""
    torchrun = int(os.environ.get('RANK', -1)) != -1
    try:
        main(sys.argv[1:])
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except catch as e:
        print('error: ' + ' '.join(str(e).splitlines()), file=sys.stderr)
        if torchrun:  # a failed torchrun worker: exit 2, not a gloo SIGABRT
            exit_finished_worker(2)
        sys.exit(2)
    if torchrun:
        exit_finished_worker()

# -----------------------------------------------------------------------------
# a one-off conversion

def convert_checkpoint(path):
    """rewrite a checkpoint written before model.py's MIXERS / FFNS tables in today's layout, in place: a
    Mamba FFN was h.<i>.ffn.norm and h.<i>.ffn.mixer, today h.<i>.ln_2 and h.<i>.ffn (the same tensors and
    math). Returns how many keys moved; with none the file is left as it was."""
    path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
    ckpt = load_checkpoint(path)
    renamed = {}
    for key, value in ckpt['model'].items():
        m = re.fullmatch(r"(h\.\d+)\.ffn\.(norm|mixer)\.(.+)", key)
        if m:
            key = f"{m[1]}.{'ln_2' if m[2] == 'norm' else 'ffn'}.{m[3]}"
        renamed[key] = value
    moved = sum(old != new for old, new in zip(ckpt['model'], renamed))
    if moved:
        ckpt['model'] = renamed
        atomic_write(path, serialize(ckpt))
    return moved


def convert_command(argv):
    if argv[:1] != ['convert'] or len(argv) < 2:
        raise UserError("usage: python harness.py convert CKPT [CKPT ...] (checkpoints from before "
                        "model.py's MIXERS / FFNS tables; a run directory means its ckpt.pt)")
    for path in argv[1:]:
        print(f"{path}: {convert_checkpoint(path)} key(s) renamed")


if __name__ == '__main__':
    run_command(convert_command)
