"""Train an ICL model, in one process or many with torchrun (the global batch does not depend on it):
    python train.py configs/llama_mamba.py configs/linear_regression.py --max_iters=1000
    torchrun --standalone --nproc_per_node=8 train.py configs/llama.py configs/sparse_parity.py
Config: the defaults below <- each config file in order (architecture first, then task: MQAR shrinks the model) <-
--key=value. Bad input stops with one line `error: ...` (exit code 2) before anything is written."""
import ast, builtins, contextlib, datetime, difflib, hashlib, importlib, inspect, json, math, os, re
import signal, subprocess, sys, time, warnings, zipfile
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
import tasks
from model import ICLModel, ModelConfig, NORMS, POSITIONS, ATTNS, FFNS

# -----------------------------------------------------------------------------
# default config values: a small GPT-2 on 5-d linear regression that learns in a few CPU minutes
# I/O
out_dir = ''                 # run directory; '' -> out/<arch>-<task>
ckpt_interval = 500          # write ckpt.pt (the resume point) every this many steps, and at the end
keep_last, keep_every = 3, 0  # step checkpoints ckpt_<step>.pt kept besides ckpt.pt: the last few, and multiples of keep_every
eval_interval, eval_batches = 250, 4  # held-out loss every eval_interval steps on eval_batches x batch_size fixed prompts
log_interval = 50            # one log line / metrics row every this many steps
resume = False               # continue the run in out_dir from its ckpt.pt
allow_config_change = False  # on resume, accept changed model/data keys (you own the consequences)
wandb_log, wandb_project = False, 'icl'  # off by default; imported lazily on rank 0
# task (tasks.py); the task configs in configs/ hold the paper's settings
task = 'linear_regression'
n_dims = 5                   # x dimension; the model is built for it (the curriculum's end value)
n_points = 11                # points per prompt at the end of the curriculum (2d + 1: enough to solve it)
curriculum, curriculum_interval = False, 2000  # Garg's curriculum: dims and points grow every curriculum_interval steps
curriculum_dims_start, curriculum_dims_inc = 5, 1
curriculum_points_start, curriculum_points_inc = 11, 2
sparsity = 3                 # sparse_linear_regression: non-zero weights
mlp_hidden, mlp_normalize = 100, False  # relu2nn_regression: hidden width; Garg's sqrt(2/h) scaling (the paper: off)
tree_depth, parity_k = 4, 2  # decision_tree depth; sparse_parity: size of the hidden subset
noise_std = 0.0              # training noise on y (regression tasks)
# model (model.ModelConfig documents each field; the presets in configs/ set these)
arch = 'gpt2'                # a label for run names and score tables
n_layer, n_embd, n_head = 4, 64, 4
n_positions = 141            # learned position table holds 2 * n_positions tokens
norm, pos, attn, ffn = 'layernorm', 'learned', 'gpt2', 'gelu'
ffn_mult, mamba_embed = 4.0, False
layer_pattern = 'A'          # mixer per block, tiled: A = attention, M = Mamba
d_state, d_conv, expand, dt_rank = 16, 4, 4, 0  # Mamba; expand 4 as the paper (sizes like the transformers'); dt_rank 0 -> ceil(C/16)
scan_backend = 'auto'        # ssm_scan.selective_scan backend: auto | torch | triton
reference_quirks = False     # residual doubling and init of the reference package (docs/paper.md §3.4)
# optimizer: Adam as in the paper (no decay, no schedule, no clipping unless asked)
batch_size = 64              # prompts per optimizer step, summed over all processes
micro_batch_size = 0         # prompts per forward pass per process; 0 -> batch_size / world_size
learning_rate = 1e-3         # the paper uses 1e-4 (parity 4e-4, MQAR 2e-4) at full size: see configs/
max_iters = 5000
weight_decay, beta1, beta2 = 0.0, 0.9, 0.999
grad_clip = 0.0              # clip the global grad norm to this; 0 = off
lr_schedule = 'constant'     # constant | cosine (linear warmup, then cosine to min_lr at max_iters)
warmup_iters, min_lr = 0, 0.0
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
# number keys that must be >= 1 (POSITIVE) or >= 0 (NONNEG); ints <= 2**62 (tensor sizes) or the UPPER bound
POSITIVE = ('batch_size n_dims n_points n_layer n_embd n_head n_positions d_state d_conv expand ckpt_interval keep_last eval_interval '
            'eval_batches log_interval curriculum_interval curriculum_dims_start curriculum_dims_inc curriculum_points_start '
            'curriculum_points_inc mlp_hidden tree_depth parity_k sparsity ddp_timeout').split()  # curriculum: min(start + inc*k, end)
NONNEG = 'max_iters keep_every micro_batch_size warmup_iters seed dt_rank grad_clip weight_decay min_lr noise_std'.split()
UPPER = dict(seed=2**63 - 1, tree_depth=20, n_layer=1024, eval_batches=1000, ddp_timeout=10**7)  # manual_seed, memory, timedelta
# keys that may differ between a checkpoint and the resumed run without changing what is trained
RESUME_FREE = set(('out_dir resume allow_config_change max_iters ckpt_interval keep_last keep_every eval_interval eval_batches '
                   'log_interval wandb_log wandb_project device compile scan_backend ddp_timeout').split())

class UserError(Exception):
    """bad input or a failed run: printed as one line `error: ...` (exit code 2), no traceback."""

# -----------------------------------------------------------------------------
# config

def coerce(key, value, default, where):
    if type(value) is int and type(default) is float:
        value = float(value)  # --learning_rate=1 means 1.0
    if type(value) is not type(default):
        raise UserError(f"{where}: {key} must be of type {type(default).__name__} (like {default!r}), got {value!r:.80}")
    return value

def load_config(argv):
    """defaults <- config files <- --key=value. Returns (cfg, keys the user set explicitly)."""
    cfg, explicit = dict(DEFAULTS), set()
    for arg in argv:
        if arg.startswith('--'):
            key, eq, raw = arg[2:].partition('=')
            if not eq:
                raise UserError(f"{arg}: overrides are written --key=value")
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                value = raw  # a bare string such as --task=mqar
            items = {key: raw if type(DEFAULTS.get(key)) is str else value}  # --out_dir=runs/1 is a string as typed
        elif not os.path.isfile(arg):
            raise UserError(f"config file {arg!r} not found (the presets are in configs/)")
        else:
            ns = {}
            try:
                with open(arg) as f:
                    exec(builtins.compile(f.read(), arg, 'exec'), {}, ns)  # the config key 'compile' shadows the builtin
            except (Exception, SystemExit) as e:
                raise UserError(f"config file {arg} failed to run: {type(e).__name__}: {_oneline(e)}")
            # `import math` or a helper function in a config is fine
            items = {k: v for k, v in ns.items() if not (k.startswith('_') or inspect.ismodule(v) or callable(v))}
        for key, value in items.items():
            if key not in cfg:
                close = difflib.get_close_matches(key, DEFAULTS, n=1)
                raise UserError(f"unknown config key {key!r} in {arg}" + (f" (did you mean {close[0]!r}?)" if close else ''))
            cfg[key] = coerce(key, value, DEFAULTS[key], arg)
            explicit.add(key)
    cfg['out_dir'] = cfg['out_dir'] or os.path.join('out', f"{cfg['arch']}-{cfg['task']}")
    return cfg, explicit

def _oneline(e):  # an exception as one short line (load_state_dict and gloo errors span several)
    return ' '.join(str(e).split())[:300] or type(e).__name__

def validate(cfg, world_size=1):
    """range and consistency checks; returns the ModelConfig. Raises UserError naming the problem."""
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise UserError(f"{key}={cfg[key]!r} is not one of {', '.join(allowed)}")
    for key in POSITIVE + NONNEG:
        lo, hi = int(key in POSITIVE), UPPER.get(key, math.inf if type(cfg[key]) is float else 2**62)  # ints: tensor sizes
        if not (lo <= cfg[key] <= hi and cfg[key] < math.inf):  # also false for nan; no float() of huge ints
            bound = f'in [{lo}, {hi}]' if key in UPPER else f'>= {lo}' + (' (and <= 2**62)' if hi < math.inf else '')
            raise UserError(f"{key} must be {bound}, got {cfg[key]!r:.80}")
    for key, ok, what in (('learning_rate', 0 < cfg['learning_rate'] < math.inf, 'positive and finite'),
                          ('ffn_mult', 0 < cfg['ffn_mult'] < math.inf, 'positive and finite'),
                          ('beta1', 0 <= cfg['beta1'] < 1, 'in [0, 1)'), ('beta2', 0 <= cfg['beta2'] < 1, 'in [0, 1)')):
        if not ok:
            raise UserError(f"{key} must be {what}, got {cfg[key]!r}")
    if not re.fullmatch(r'auto|cpu|cuda(:\d+)?', cfg['device']):
        raise UserError(f"device={cfg['device']!r} is not one of auto, cpu, cuda, cuda:N")
    per_rank = cfg['batch_size'] // world_size
    if cfg['batch_size'] % world_size or per_rank % (cfg['micro_batch_size'] or per_rank):
        raise UserError(f"batch_size={cfg['batch_size']} must split evenly over {world_size} process(es) and then into "
                        f"micro-batches of micro_batch_size={cfg['micro_batch_size']}")
    if cfg['pos'] == 'learned' and cfg['n_points'] > cfg['n_positions']:
        raise UserError(f"n_points={cfg['n_points']} exceeds the learned position table (n_positions={cfg['n_positions']})")
    try:  # one prompt at step 0 (the run's smallest) runs the sampler's own checks: parity_k, mqar points, noise_std
        get_batch(cfg, 0, 0, 1)
        return ModelConfig.from_dict({**cfg, 'y_dim': tasks.y_dim(cfg['task'], cfg['n_dims'])})
    except (ValueError, RuntimeError) as e:  # RuntimeError: a prompt too large to allocate
        raise UserError(f"config: {_oneline(e)}")

# -----------------------------------------------------------------------------
# checkpoints: written atomically, loaded safely

def load_checkpoint(path):
    """a checkpoint dict, or a UserError saying what is wrong with the file. Never unpickles code."""
    path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path} (a run killed before writing one has nothing to resume: start it anew)")
    try:
        with zipfile.ZipFile(path) as z, warnings.catch_warnings():
            warnings.simplefilter('ignore')
            bad = z.testzip()  # torch.load does not check the CRCs: a flipped bit in a tensor would load silently
            ckpt = None if bad else torch.load(path, map_location='cpu', weights_only=True)  # never runs pickled code
    except Exception as e:
        refused = 'weights_only' in str(e) or 'Unsupported global' in str(e)
        raise UserError(f"{path} " + ("holds objects that safe loading refuses (not a checkpoint of this project?)" if refused
                                      else "is not a readable checkpoint (truncated or corrupted?)") + f": {_oneline(e)}")
    if bad:
        raise UserError(f"{path} is corrupted: checksum mismatch in {bad}")
    missing = [k for k in ('model', 'optimizer', 'step', 'config', 'model_args') if not isinstance(ckpt, dict) or k not in ckpt]
    if missing or not isinstance(ckpt['config'], dict) or type(ckpt['step']) is not int:
        raise UserError(f"{path} is not a checkpoint of this project (missing or malformed: {', '.join(missing) or 'config, step'})")
    return ckpt

def _fsync_write(path, write):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one (and a stale .tmp the next write reuses)

def truncate_metrics(path, step):
    # rows past the resumed checkpoint and a half-written last line go: the resumed metrics equal an uninterrupted run's
    if os.path.exists(path):
        rows = [line for line in open(path) if line.endswith('\n') and json.loads(line)['step'] <= step]
        _fsync_write(path, lambda f: f.write(''.join(rows).encode()))

# -----------------------------------------------------------------------------
# data and schedule

def batch_generator(seed, step, rank):
    """the data of (seed, step, rank) is a pure function of them: resume replays no RNG, ranks never share a stream."""
    digest = hashlib.blake2b(f'{seed}/{step}/{rank}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') >> 1)

def get_batch(cfg, step, rank, n_prompts, gen=None):
    n_dims_active, n_points = tasks.curriculum(step, cfg)
    return tasks.sample(cfg['task'], n_prompts, n_points, cfg['n_dims'], gen or batch_generator(cfg['seed'], step, rank),
                        n_dims_active=n_dims_active, **{k: cfg[k] for k in tasks.TASK_DEFAULTS})

def get_lr(it, cfg):
    lr, warm = cfg['learning_rate'], cfg['warmup_iters']
    if it < warm or cfg['lr_schedule'] == 'constant':
        return lr * min(1.0, (it + 1) / warm) if warm else lr  # linear warmup
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
    master, out_dir = rank == 0, cfg['out_dir']
    ckpt_path, metrics_path, log_path = (os.path.join(out_dir, f) for f in ('ckpt.pt', 'metrics.jsonl', 'log.txt'))
    ckpt = load_checkpoint(ckpt_path) if cfg['resume'] else None
    if ckpt:
        saved = {k: coerce(k, v, DEFAULTS[k], ckpt_path) for k, v in ckpt['config'].items() if k in DEFAULTS}
        free = RESUME_FREE - ({'max_iters'} if saved.get('lr_schedule') == 'cosine' else set())  # cosine decays to max_iters
        changed = sorted(f"{k}: {saved.get(k)!r} -> {cfg[k]!r}" for k in explicit - free if saved.get(k) != cfg[k])
        if changed and not cfg['allow_config_change']:
            raise UserError(f"resume would change the run in {out_dir} ({'; '.join(changed)}); --allow_config_change=True does it")
        cfg = {**DEFAULTS, **saved, **{k: cfg[k] for k in explicit}, 'out_dir': out_dir}  # out_dir: where it is now
    elif os.path.exists(out_dir) and not os.path.isdir(out_dir) or any(map(os.path.exists, (ckpt_path, metrics_path, log_path))):
        raise UserError(f"{out_dir} already holds a run (or a file); continue it with --resume=True or choose another --out_dir")
    mcfg = validate(cfg, world)

    # --- processes and devices
    dev = cfg['device'] if cfg['device'] != 'auto' else 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev.startswith('cuda') and (torch.device(dev).index or 0) >= torch.cuda.device_count():
        raise UserError(f"device={dev!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if ddp:
        if dev.startswith('cuda'):
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
        dist.init_process_group('nccl' if dev.startswith('cuda') else 'gloo', timeout=datetime.timedelta(seconds=cfg['ddp_timeout']))
        dist.barrier()  # every rank has passed the checks above before rank 0 writes anything
    device = torch.device(dev)
    per_rank = cfg['batch_size'] // world
    micro = cfg['micro_batch_size'] or per_rank  # validate() checked that it divides per_rank
    accum = per_rank // micro
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = device.type == 'cuda'  # (no-op on CPU)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg['dtype'] == 'bfloat16' else contextlib.nullcontext()

    # --- model and optimizer (same init on every rank: the seed is global)
    torch.manual_seed(cfg['seed'])
    try:  # fixed held-out prompts at the end of the curriculum, on their own seed stream (never trained on)
        val = [[t.to(device) for t in get_batch({**cfg, 'curriculum': False}, 0, 0, cfg['batch_size'],
                                                batch_generator(cfg['seed'], -1 - i, 0))] for i in range(cfg['eval_batches'])]
        raw_model = ICLModel(mcfg).to(device)
    except (RuntimeError, OverflowError, MemoryError) as e:
        raise UserError(f"cannot build this model or held-out set here (too large?): {_oneline(e)}")
    groups = raw_model.optim_groups(cfg['weight_decay'])
    opt_cls = torch.optim.AdamW if cfg['weight_decay'] > 0 else torch.optim.Adam  # the paper: plain Adam
    optimizer = opt_cls(groups, lr=cfg['learning_rate'], betas=(cfg['beta1'], cfg['beta2']))
    step = 0
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt['model'])
            optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{ckpt_path} does not fit this model/optimizer (another architecture?): {_oneline(e)}")
        for g, fresh in zip(optimizer.param_groups, groups):  # the saved groups would override betas/decay set on resume
            g.update(betas=(cfg['beta1'], cfg['beta2']), weight_decay=fresh['weight_decay'])
        step = ckpt['step']
        torch.set_rng_state(ckpt['rng']['torch'])
    model = torch.compile(raw_model) if cfg['compile'] else raw_model
    model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None) if ddp else model
    counts = raw_model.param_counts()
    wandb_id = ckpt.get('wandb_id') if ckpt else os.urandom(4).hex()  # one wandb run across resumes

    def checkpoint():  # ckpt.pt atomically, then ckpt_<step>.pt as a hard link to it; drop the old ones we don't keep
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, config=cfg,
                     model_args=asdict(mcfg), param_counts=counts, rng=dict(torch=torch.get_rng_state()), wandb_id=wandb_id,
                     curriculum=dict(zip(('n_dims_active', 'n_points'), tasks.curriculum(step, cfg))))
        _fsync_write(ckpt_path, lambda f: torch.save(state, f))
        named = os.path.join(out_dir, f'ckpt_{step:07d}.pt')
        with contextlib.suppress(FileNotFoundError):
            os.remove(named)  # a stale one from before a crash
        try:
            os.link(ckpt_path, named)  # same bytes, no second write; the next os.replace gives ckpt.pt a new inode
        except OSError:
            _fsync_write(named, lambda f: torch.save(state, f))
        steps = sorted(int(f[5:-3]) for f in os.listdir(out_dir) if re.fullmatch(r'ckpt_\d+\.pt', f))  # numeric: past 10^7 too
        for s in [s for s in steps if not (cfg['keep_every'] and s % cfg['keep_every'] == 0)][:-cfg['keep_last']]:
            os.remove(os.path.join(out_dir, f'ckpt_{s:07d}.pt'))

    # --- run directory, log, metrics (rank 0 writes; nothing is written before the config is valid)
    bar = tqdm(total=cfg['max_iters'], initial=step, dynamic_ncols=True, disable=None if master else True, desc=os.path.basename(out_dir))
    def log(msg):
        if master:
            bar.write(msg)
            with open(log_path, 'a') as f:
                f.write(msg + '\n')
    if master:
        os.makedirs(out_dir, exist_ok=True)
        if ckpt is None:
            checkpoint()  # step 0 first: from here on a killed run can always be resumed
        truncate_metrics(metrics_path, step)
        log(f"{'resuming at step ' + str(step) if ckpt else 'new run'} in {out_dir} | {world} process(es) on {device} | "
            f"torch {torch.__version__} | git {_git_rev()}\nconfig: {json.dumps(cfg, sort_keys=True)}\nparams: " +
            ', '.join(f'{k} {v:,}' for k, v in counts.items()) +
            f" | blocks: {'M+' if mcfg.mamba_embed else ''}{(mcfg.layer_pattern * mcfg.n_layer)[:mcfg.n_layer]}")
    wandb = importlib.import_module('wandb') if cfg['wandb_log'] and master else None  # optional: imported only when used
    if wandb:
        wandb.init(project=cfg['wandb_project'], name=os.path.basename(out_dir), config=cfg, id=wandb_id, resume='allow')

    # graceful stop: SIGINT/SIGTERM finish the step, checkpoint, exit (the old handlers come back for in-process callers)
    stop = []
    old_handlers = {s: signal.signal(s, lambda *_: stop.append(1)) for s in (signal.SIGINT, signal.SIGTERM)}
    start = good_step = s_last = step
    stop_any, t0, t_last = False, time.time(), time.time()
    try:
        while step < cfg['max_iters'] and not stop_any:
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group['lr'] = lr
            xs, ys = (t.to(device) for t in get_batch(cfg, step, rank, per_rank))
            flags = torch.tensor([0.0, float(len(stop))], device=device)  # summed loss, and whether this rank was asked to stop
            for m in range(accum):
                sl = slice(m * micro, (m + 1) * micro)
                with contextlib.nullcontext() if (not ddp or m == accum - 1) else model.no_sync():  # all-reduce once per step
                    with autocast:
                        loss = icl_loss(model(xs[sl], ys[sl]), ys[sl], cfg['task'])
                    (loss / accum).backward()
                flags[0] += loss.detach() / accum
            if ddp:
                dist.all_reduce(flags)  # the true mean loss over ranks, and whether any rank was asked to stop
            loss_val, stop_any = flags[0].item() / world, flags[1].item() > 0
            # the grads are all-reduced, so every rank sees the same norm; grad_clip=0 computes it without clipping
            gnorm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg['grad_clip'] or math.inf).item()
            if not (math.isfinite(loss_val) and math.isfinite(gnorm)):  # before the optimizer step: weights untouched
                raise UserError(f"non-finite loss ({loss_val}) or grad norm ({gnorm}) in step {step + 1}, before its update; the last "
                                f"good checkpoint {ckpt_path} (step {good_step}) is intact. Lower learning_rate or set grad_clip, "
                                "and continue from it with --resume=True --allow_config_change=True")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            save = (last := step == cfg['max_iters']) or stop_any or step % cfg['ckpt_interval'] == 0
            good_step = step if save else good_step
            if not master:
                continue
            bar.update(1)
            bar.set_postfix(loss=f'{loss_val:.4f}', refresh=False)
            row = dict(step=step)
            if step % cfg['log_interval'] == 0 or last:
                row.update(loss=loss_val, grad_norm=gnorm, lr=lr, **dict(zip(('n_dims', 'n_points'), tasks.curriculum(step - 1, cfg))),
                           steps_per_s=round((step - s_last) / max(time.time() - t_last, 1e-9), 3), time=round(time.time() - t0, 2))
                t_last, s_last = time.time(), step
            if step % cfg['eval_interval'] == 0 or last:  # (no dropout or batch norm: no train/eval mode to switch)
                with torch.no_grad(), autocast:
                    row['val_loss'] = sum(icl_loss(raw_model(x, y), y, cfg['task']).item() for x, y in val) / len(val)
            if len(row) > 1:
                with open(metrics_path, 'a') as f:
                    f.write(json.dumps(row) + '\n')
                log(' | '.join(f'{k} {v:.4g}' if type(v) is float else f'{k} {v}' for k, v in row.items() if k != 'time'))
                if wandb:
                    wandb.log(row, step=step)
            if save:
                checkpoint()
    except (RuntimeError if ddp else torch.OutOfMemoryError) as e:  # OOM mid-run; DDP: a peer died or hung past ddp_timeout
        why = 'out of memory: try a smaller micro_batch_size' if isinstance(e, torch.OutOfMemoryError) else 'did another process die or hang? see its output'
        raise UserError(f"process {rank} failed at step {step} ({why}); last checkpoint {ckpt_path} (step {good_step}): {_oneline(e)}")
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        bar.close()
    log(f"{'stopped' if stop_any else 'done'} at step {step} ({step - start} steps in {time.time() - t0:.1f}s); checkpoint "
        f"{ckpt_path}" + (f". Resume with: {'torchrun --nproc_per_node=' + str(world) if ddp else 'python'} train.py "
                          f"--out_dir={out_dir} --resume=True" if stop_any else ''))
    if ddp:
        dist.barrier()  # rank 0 has written the last checkpoint before anyone leaves
        dist.destroy_process_group()
    return step

def _git_rev():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=os.path.dirname(os.path.abspath(__file__)),
                              capture_output=True, text=True, timeout=5).stdout.strip() or 'unknown'
    return 'unknown'

if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (UserError, OSError) as e:  # OSError: disk full, permissions, an out_dir that is a file
        print('error: ' + ' '.join(str(e).splitlines()), file=sys.stderr)
        sys.exit(2)
