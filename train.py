"""
Train an ICL model. Single process:
    python train.py                                              # small GPT-2 on linear regression, CPU-sized
    python train.py configs/llama_mamba.py configs/linear_regression.py --max_iters=1000
Multi-GPU / multi-node (the global batch does not depend on the number of processes):
    torchrun --standalone --nproc_per_node=8 train.py configs/llama.py configs/sparse_parity.py

Config: the defaults below, then each config file in order (plain Python assignments), then
--key=value overrides. Unknown keys, wrong types and bad values stop with one clear message before
anything is written. Architecture configs set the model, task configs the paper's task settings:
give the architecture first, the task second (the MQAR task config shrinks the model).
"""
import ast
import builtins
import hashlib
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.nn.functional as F

import tasks
from model import ICLModel, ModelConfig, NORMS, POSITIONS, ATTNS, FFNS

# -----------------------------------------------------------------------------
# default config values: a small GPT-2 on 5-d linear regression that learns in a few CPU minutes
# I/O
out_dir = ''                 # run directory; '' -> out/<arch>-<task>
ckpt_interval = 500          # write ckpt.pt (the resume point) every this many steps, and at the end
keep_last = 3                # rolling step checkpoints ckpt_<step>.pt kept besides ckpt.pt
keep_every = 0               # also keep every checkpoint whose step is a multiple of this forever (paper: 50000)
eval_interval = 250          # held-out loss at the final curriculum, on a fixed set of prompts
eval_batches = 4             # batches of batch_size prompts in that held-out set
log_interval = 50            # one log line / metrics row every this many steps
resume = False               # continue the run in out_dir from its ckpt.pt
allow_config_change = False  # on resume, accept changed model/data keys (you own the consequences)
wandb_log = False            # off by default; imported lazily on rank 0
wandb_project = 'icl'
# task (tasks.py); the task configs in configs/ hold the paper's settings
task = 'linear_regression'
n_dims = 5                   # x dimension; the model is built for it (the curriculum's end value)
n_points = 11                # points per prompt at the end of the curriculum (2d + 1: enough to solve it)
curriculum = False           # Garg's curriculum: dims and points grow every curriculum_interval steps
curriculum_dims_start = 5
curriculum_dims_inc = 1
curriculum_points_start = 11
curriculum_points_inc = 2
curriculum_interval = 2000
sparsity = 3                 # sparse_linear_regression: non-zero weights
mlp_hidden = 100             # relu2nn_regression: hidden width
mlp_normalize = False        # relu2nn_regression: Garg's sqrt(2/h) scaling (the paper leaves it off)
tree_depth = 4               # decision_tree
parity_k = 2                 # sparse_parity: size of the hidden subset
noise_std = 0.0              # training noise on y
# model (model.ModelConfig; the presets in configs/ set these)
arch = 'gpt2'                # a label for run names and score tables
n_layer = 4
n_embd = 64
n_head = 4
n_positions = 141            # learned position table holds 2 * n_positions tokens
norm = 'layernorm'
pos = 'learned'
attn = 'gpt2'
ffn = 'gelu'
ffn_mult = 4.0
mamba_embed = False
layer_pattern = 'A'
d_state = 16
d_conv = 4
expand = 4
dt_rank = 0
scan_backend = 'auto'
reference_quirks = False     # residual doubling and init of the reference package (docs/paper.md §3.4)
# optimizer: Adam as in the paper (no decay, no schedule, no clipping unless asked)
batch_size = 64              # prompts per optimizer step, summed over all processes
micro_batch_size = 0         # prompts per forward pass per process; 0 -> batch_size / world_size
learning_rate = 1e-3         # the paper uses 1e-4 (parity 4e-4, MQAR 2e-4) at full size: see configs/
max_iters = 5000
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 0.0              # clip the global grad norm to this; 0 = off
lr_schedule = 'constant'     # constant | cosine (linear warmup, then cosine to min_lr at max_iters)
warmup_iters = 0
min_lr = 0.0
# system
seed = 1337
device = 'auto'              # auto | cpu | cuda | cuda:N
dtype = 'float32'            # float32 | bfloat16 (autocast; the scan and the loss stay fp32)
compile = False              # torch.compile the model
ddp_timeout = 600            # seconds a process waits for the others before the job fails
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and type(v) in (int, float, bool, str)}
CHOICES = dict(task=tasks.TASK_NAMES, norm=NORMS, pos=POSITIONS, attn=ATTNS, ffn=FFNS,
               lr_schedule=('constant', 'cosine'), dtype=('float32', 'bfloat16'), scan_backend=('auto', 'torch', 'triton'))
# keys that may differ between a checkpoint and the resumed run without changing what is trained
RESUME_FREE = {'out_dir', 'resume', 'allow_config_change', 'max_iters', 'ckpt_interval', 'keep_last', 'keep_every',
               'eval_interval', 'eval_batches', 'log_interval', 'wandb_log', 'wandb_project', 'device', 'compile',
               'scan_backend', 'ddp_timeout'}


class UserError(Exception):
    """bad input from the user: printed as one line, no traceback."""

# -----------------------------------------------------------------------------
# config


def parse_value(key, raw, default):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as --task=mqar
    return coerce(key, value, default, f"--{key}")


def coerce(key, value, default, where):
    if type(value) is int and type(default) is float:
        value = float(value)  # --learning_rate=1 means 1.0
    if type(value) is not type(default):
        raise UserError(f"{where}: {key} must be a {type(default).__name__} (like {default!r}), got {value!r}")
    return value


def load_config(argv):
    """defaults <- config files <- --key=value. Returns (cfg, keys the user set explicitly)."""
    cfg, explicit = dict(DEFAULTS), set()
    for arg in argv:
        if arg.startswith('--'):
            key, eq, raw = arg[2:].partition('=')
            if not eq:
                raise UserError(f"{arg}: overrides are written --key=value")
            if key not in cfg:
                raise UserError(f"unknown config key {key!r} in {arg}{_suggest(key)}")
            cfg[key] = parse_value(key, raw, DEFAULTS[key])
            explicit.add(key)
        else:
            if not os.path.isfile(arg):
                avail = ', '.join(sorted(f for f in os.listdir('configs') if f.endswith('.py'))) if os.path.isdir('configs') else ''
                raise UserError(f"config file {arg!r} not found" + (f"; configs/ has: {avail}" if avail else ''))
            ns = {}
            try:
                exec(builtins.compile(open(arg).read(), arg, 'exec'), {}, ns)  # the config key 'compile' shadows the builtin
            except Exception as e:
                raise UserError(f"config file {arg} failed to run: {type(e).__name__}: {e}")
            for key, value in ns.items():
                if key.startswith('_') or inspect.ismodule(value) or callable(value):
                    continue  # `import math` or a helper function in a config is fine
                if key not in cfg:
                    raise UserError(f"unknown config key {key!r} in {arg}{_suggest(key)}")
                cfg[key] = coerce(key, value, DEFAULTS[key], arg)
                explicit.add(key)
    if not cfg['out_dir']:
        cfg['out_dir'] = os.path.join('out', f"{cfg['arch']}-{cfg['task']}")
    return cfg, explicit


def _suggest(key):
    import difflib
    close = difflib.get_close_matches(key, DEFAULTS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ''


def validate(cfg, world_size=1):
    """range and consistency checks; returns the ModelConfig. Raises UserError naming the problem."""
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise UserError(f"{key}={cfg[key]!r} is not one of {', '.join(allowed)}")
    positive = ('batch_size', 'n_dims', 'n_points', 'ckpt_interval', 'keep_last', 'eval_interval', 'eval_batches',
                'log_interval', 'curriculum_interval', 'mlp_hidden', 'tree_depth', 'parity_k', 'sparsity', 'ddp_timeout')
    nonneg = ('max_iters', 'keep_every', 'micro_batch_size', 'warmup_iters', 'seed', 'grad_clip', 'weight_decay', 'min_lr', 'noise_std')
    for key in positive + nonneg:
        if not (cfg[key] >= (1 if key in positive else 0)) or not math.isfinite(cfg[key]):
            raise UserError(f"{key} must be {'>= 1' if key in positive else '>= 0'}, got {cfg[key]!r}")
    if not (0 < cfg['learning_rate'] < math.inf):
        raise UserError(f"learning_rate must be positive and finite, got {cfg['learning_rate']!r}")
    for key in ('beta1', 'beta2'):
        if not 0 <= cfg[key] < 1:
            raise UserError(f"{key} must be in [0, 1), got {cfg[key]!r}")
    if cfg['device'] not in ('auto', 'cpu', 'cuda') and not cfg['device'].startswith('cuda:'):
        raise UserError(f"device={cfg['device']!r} is not one of auto, cpu, cuda, cuda:N")
    if cfg['batch_size'] % world_size:
        raise UserError(f"batch_size={cfg['batch_size']} is not divisible by the {world_size} processes")
    per_rank = cfg['batch_size'] // world_size
    micro = cfg['micro_batch_size'] or per_rank
    if per_rank % micro:
        raise UserError(f"batch_size per process ({per_rank}) is not divisible by micro_batch_size={micro}")
    if cfg['curriculum']:
        for what, end in (('dims', cfg['n_dims']), ('points', cfg['n_points'])):
            if not 1 <= cfg[f'curriculum_{what}_start'] <= end or cfg[f'curriculum_{what}_inc'] < 1:
                raise UserError(f"curriculum_{what}_start must be in [1, {end}] (n_{what}) and curriculum_{what}_inc >= 1")
    if cfg['task'] == 'sparse_linear_regression':
        smallest = cfg['curriculum_dims_start'] if cfg['curriculum'] else cfg['n_dims']
        if cfg['sparsity'] > smallest:
            raise UserError(f"sparsity={cfg['sparsity']} exceeds the {smallest} active dimensions")
    if cfg['task'] == 'sparse_parity' and cfg['parity_k'] > cfg['n_dims']:
        raise UserError(f"parity_k={cfg['parity_k']} exceeds n_dims={cfg['n_dims']}")
    if cfg['task'] == 'mqar' and cfg['n_points'] < 2:
        raise UserError("mqar needs n_points >= 2 (key-value pairs plus one query)")
    if cfg['pos'] == 'learned' and cfg['n_points'] > cfg['n_positions']:
        raise UserError(f"n_points={cfg['n_points']} exceeds the learned position table (n_positions={cfg['n_positions']})")
    try:
        return ModelConfig.from_dict({**cfg, 'y_dim': tasks.y_dim(cfg['task'], cfg['n_dims'])})
    except ValueError as e:
        raise UserError(f"model config: {e}")

# -----------------------------------------------------------------------------
# checkpoints: written atomically, loaded safely


def load_checkpoint(path):
    """a checkpoint dict, or a UserError saying what is wrong with the file. Never unpickles code."""
    if os.path.isdir(path):
        path = os.path.join(path, 'ckpt.pt')
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if 'weights_only' in str(e) or 'Unsupported global' in str(e):
            raise UserError(f"{path} holds objects that safe loading refuses (not a checkpoint of this project?): {reason}")
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupted?): {reason}")
    missing = [k for k in ('model', 'optimizer', 'step', 'config', 'model_args') if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)})")
    return ckpt


def _fsync_write(path, write):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a crash leaves either the old file or the new one, never half of one


def save_checkpoint(state, out_dir, keep_last, keep_every):
    step = state['step']
    latest = os.path.join(out_dir, 'ckpt.pt')
    _fsync_write(latest, lambda f: torch.save(state, f))
    named = os.path.join(out_dir, f'ckpt_{step:07d}.pt')
    if os.path.exists(named):
        os.remove(named)
    try:
        os.link(latest, named)  # same bytes, no second write
    except OSError:
        _fsync_write(named, lambda f: torch.save(state, f))
    rolling = sorted(f for f in os.listdir(out_dir) if f.startswith('ckpt_') and f.endswith('.pt'))
    rolling = [f for f in rolling if not (keep_every and int(f[5:12]) % keep_every == 0)]
    for f in rolling[:-keep_last]:
        os.remove(os.path.join(out_dir, f))
    return latest


def truncate_metrics(path, step):
    # after a crash the metrics file may hold rows past the checkpoint we resume from: drop them,
    # so the resumed log is exactly the uninterrupted run's
    if os.path.exists(path):
        rows = [line for line in open(path) if line.strip() and json.loads(line)['step'] <= step]
        _fsync_write(path, lambda f: f.write(''.join(rows).encode()))

# -----------------------------------------------------------------------------
# data and schedule


def batch_generator(seed, step, rank):
    """the data of (seed, step, rank) is a pure function of those three: resume needs no RNG replay,
    and ranks never share a stream."""
    digest = hashlib.blake2b(f'{seed}/{step}/{rank}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') >> 1)


def get_batch(cfg, step, rank, n_prompts, gen=None):
    n_dims_active, n_points = tasks.curriculum(step, cfg)
    gen = gen or batch_generator(cfg['seed'], step, rank)
    kw = {k: cfg[k] for k in tasks.TASK_DEFAULTS}
    return tasks.sample(cfg['task'], n_prompts, n_points, cfg['n_dims'], gen, n_dims_active=n_dims_active, **kw)


def get_lr(it, cfg):
    lr = cfg['learning_rate']
    if it < cfg['warmup_iters']:
        return lr * (it + 1) / cfg['warmup_iters']
    if cfg['lr_schedule'] == 'constant':
        return lr
    progress = min(1.0, (it - cfg['warmup_iters']) / max(1, cfg['max_iters'] - cfg['warmup_iters']))
    return cfg['min_lr'] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - cfg['min_lr'])


def icl_loss(pred, ys, task):
    if task in tasks.PREDICT_LAST:
        return F.mse_loss(pred[:, -1].float(), ys[:, -1])  # MQAR: only the query counts
    return F.mse_loss(pred.float(), ys)  # mean over prompts, positions and y dims, as the paper

# -----------------------------------------------------------------------------
# the run


def main(argv):
    cfg, explicit = load_config(argv)
    ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
    rank, world = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])) if ddp else (0, 1)
    master = rank == 0
    out_dir = cfg['out_dir']
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    ckpt = None
    if cfg['resume']:
        ckpt = load_checkpoint(ckpt_path)
        saved = ckpt['config']
        changed = {k: (saved.get(k), cfg[k]) for k in explicit - RESUME_FREE if saved.get(k) != cfg[k]}
        if changed and not cfg['allow_config_change']:
            diff = '; '.join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            raise UserError(f"resume would change the run in {out_dir} ({diff}); pass --allow_config_change=True to do it anyway")
        cfg = {**DEFAULTS, **saved, **{k: cfg[k] for k in explicit}}  # the run's own config, plus what you just set
    elif any(os.path.exists(os.path.join(out_dir, f)) for f in ('ckpt.pt', 'metrics.jsonl', 'log.txt')):
        raise UserError(f"{out_dir} already holds a run; continue it with --resume=True or choose another --out_dir")
    mcfg = validate(cfg, world)

    # --- processes and devices
    dev = cfg['device']
    if dev == 'auto':
        dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device={dev!r} but CUDA is not available here")
    if ddp:
        import datetime
        import torch.distributed as dist
        backend = 'nccl' if dev.startswith('cuda') else 'gloo'
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg['ddp_timeout']))
        if dev.startswith('cuda'):
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
    device = torch.device(dev)
    per_rank = cfg['batch_size'] // world
    micro = cfg['micro_batch_size'] or per_rank
    accum = per_rank // micro
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg['dtype'] == 'bfloat16' else nullcontext()

    # --- model and optimizer (same init on every rank: the seed is global)
    torch.manual_seed(cfg['seed'])
    raw_model = ICLModel(mcfg).to(device)
    opt_cls = torch.optim.AdamW if cfg['weight_decay'] > 0 else torch.optim.Adam  # the paper: plain Adam
    optimizer = opt_cls(raw_model.optim_groups(cfg['weight_decay']), lr=cfg['learning_rate'], betas=(cfg['beta1'], cfg['beta2']))
    step = 0
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt['model'])
            optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{ckpt_path} does not fit this model/optimizer: {str(e).splitlines()[0][:300]}")
        step = ckpt['step']
        torch.set_rng_state(ckpt['rng']['torch'])
    model = torch.compile(raw_model) if cfg['compile'] else raw_model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
    counts = raw_model.param_counts()

    # --- run directory, log, metrics (rank 0 writes; nothing is written before the config is valid)
    metrics_path, log_path = os.path.join(out_dir, 'metrics.jsonl'), os.path.join(out_dir, 'log.txt')
    def log(msg):
        if master:
            print(msg, flush=True) if bar is None else bar.write(msg)
            with open(log_path, 'a') as f:
                f.write(msg + '\n')
    bar = None
    if master:
        os.makedirs(out_dir, exist_ok=True)
        for f in os.listdir(out_dir):
            if f.endswith('.tmp'):
                os.remove(os.path.join(out_dir, f))  # half-written leftovers of a killed run
        if ckpt is not None:
            truncate_metrics(metrics_path, step)
        log(f"{'resuming at step ' + str(step) if ckpt else 'new run'} in {out_dir} | {world} process(es) on {device} | "
            f"torch {torch.__version__} | git {_git_rev()}")
        log('config: ' + json.dumps(cfg, sort_keys=True))
        log('params: ' + ', '.join(f'{k} {v:,}' for k, v in counts.items()) +
            f" | blocks: {'M+' if mcfg.mamba_embed else ''}{(mcfg.layer_pattern * mcfg.n_layer)[:mcfg.n_layer]}")
    wandb = None
    if cfg['wandb_log'] and master:
        import wandb
        wandb.init(project=cfg['wandb_project'], name=os.path.basename(out_dir), config=cfg,
                   id=ckpt['config'].get('wandb_id') if ckpt else None, resume='allow')

    # --- graceful stop: finish the step, checkpoint, exit
    stop = {'requested': False}
    def request_stop(signum, frame):
        stop['requested'] = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)

    def checkpoint():
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, config=cfg,
                     model_args=asdict(mcfg), param_counts=counts, rng=dict(torch=torch.get_rng_state()),
                     curriculum=dict(zip(('n_dims_active', 'n_points'), tasks.curriculum(step, cfg))))
        return save_checkpoint(state, out_dir, cfg['keep_last'], cfg['keep_every'])

    # fixed held-out prompts at the end of the curriculum (their own seed stream: never trained on)
    val_cfg = {**cfg, 'curriculum': False}
    val = [get_batch(val_cfg, 0, 0, cfg['batch_size'], gen=batch_generator(cfg['seed'], -1 - i, 0))
           for i in range(cfg['eval_batches'])] if master else []

    from tqdm import tqdm
    if master:
        bar = tqdm(total=cfg['max_iters'], initial=step, dynamic_ncols=True, disable=None, desc=os.path.basename(out_dir))
    last_good = ckpt_path if ckpt is not None else None
    t0, t_last, s_last = time.time(), time.time(), step
    while step < cfg['max_iters']:
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group['lr'] = lr
        xs, ys = get_batch(cfg, step, rank, per_rank)
        xs, ys = xs.to(device), ys.to(device)
        loss_sum = torch.zeros((), device=device)
        for m in range(accum):
            sl = slice(m * micro, (m + 1) * micro)
            sync = nullcontext() if (not ddp or m == accum - 1) else model.no_sync()  # all-reduce once per step
            with sync:
                with autocast:
                    loss = icl_loss(model(xs[sl], ys[sl]), ys[sl], cfg['task'])
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        flags = torch.stack([loss_sum, torch.tensor(float(stop['requested']), device=device)])
        if ddp:
            dist.all_reduce(flags)  # the true mean loss over ranks, and whether any rank was asked to stop
            flags[0] /= world
        loss_val, stop_any = flags[0].item(), flags[1].item() > 0
        if not math.isfinite(loss_val):  # before the optimizer step: the weights stay as they were
            raise UserError(f"non-finite loss ({loss_val}) at step {step}; last good checkpoint: "
                            f"{last_good or 'none written yet'} (untouched). Lower learning_rate or set grad_clip.")
        if cfg['grad_clip'] > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last = step == cfg['max_iters']
        if master:
            bar.update(1)
            bar.set_postfix(loss=f'{loss_val:.4f}', refresh=False)
            row = None
            if step % cfg['log_interval'] == 0 or last:
                sps = (step - s_last) / max(time.time() - t_last, 1e-9)
                t_last, s_last = time.time(), step
                d_act, n_pts = tasks.curriculum(step - 1, cfg)
                row = dict(step=step, loss=loss_val, lr=lr, n_dims=d_act, n_points=n_pts, steps_per_s=round(sps, 3),
                           time=round(time.time() - t0, 2))
            if step % cfg['eval_interval'] == 0 or last:
                raw_model.eval()
                with torch.no_grad(), autocast:
                    v = sum(icl_loss(raw_model(x.to(device), y.to(device)), y.to(device), cfg['task']).item() for x, y in val)
                raw_model.train()
                row = {**(row or dict(step=step)), 'val_loss': v / len(val)}
            if row is not None:
                with open(metrics_path, 'a') as f:
                    f.write(json.dumps(row) + '\n')
                if 'loss' in row:
                    log(f"step {step:>7} | loss {loss_val:.4f} | lr {lr:.2e} | dims {row['n_dims']} points {row['n_points']}"
                        f" | {row['steps_per_s']:.1f} steps/s" + (f" | val {row['val_loss']:.4f}" if 'val_loss' in row else ''))
                if wandb:
                    wandb.log(row, step=step)
            if step % cfg['ckpt_interval'] == 0 or last or stop_any:
                last_good = checkpoint()
        if stop_any:
            if ddp:
                dist.barrier()
            log(f"stopped at step {step}; checkpoint in {ckpt_path}. Resume with: python train.py --out_dir={out_dir} --resume=True")
            break
    if master:
        bar.close()
        if step == cfg['max_iters'] and (ckpt is None or ckpt['step'] < step):
            log(f"done: {step} steps in {time.time() - t0:.1f}s; checkpoint {ckpt_path}")
        elif ckpt is not None and ckpt['step'] >= cfg['max_iters']:
            log(f"nothing to do: the checkpoint is at step {ckpt['step']} >= max_iters={cfg['max_iters']}")
    if ddp:
        dist.destroy_process_group()
    return step


def _git_rev():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here, capture_output=True, text=True, timeout=5)
        return (rev.stdout.strip() or 'unknown') + ('+dirty' if dirty.stdout.strip() else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
