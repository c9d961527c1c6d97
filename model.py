"""
In-context-learning sequence models: GPT-2, Llama, Mamba and their hybrids, as ONE configurable
stack. A hybrid is a ModelConfig, not a class.

References
- Garg et al. 2022 (dtsip/in-context-learning): the ICL wrapper (interleave x and zero-padded y,
  linear read-in, backbone, linear read-out at the x tokens).
- Campbell et al. 2024, arXiv 2411.03945 (in-context-learning-2024/in-context): the 12 GPT-2 /
  Llama / Mamba architectures and the quirks of its hybrid engine (`reference_quirks`, docs/paper.md §3).
- Park et al. 2024 (MambaFormer): a leading Mamba block instead of positional encoding,
  attention and Mamba alternating, no MLPs.
- Gu & Dao 2023 (mamba_simple.py) for the Mamba mixer; nanoGPT for names (c_attn, c_proj, ln_1).

The stack: read_in -> [+ learned positions] -> [leading Mamba block] -> n_layer Blocks -> ln_f -> read_out.
A Block is  x = x + mixer(ln_1(x));  x = x + ffn(ln_2(x)),  the mixer chosen per block by a letter of
`layer_pattern` (the MIXERS table) and the ffn by `ffn` (the FFNS table). Adding a mixer or an FFN is one
class and one table row: the block, the config checks, the parameter counts and the init read the tables.

glossary: B batch, N points per prompt, T = 2N tokens, d x dimension, C = n_embd,
          H heads, hs head size, di = d_inner = expand * C, ds = d_state, R = dt_rank
"""
import functools
import math
from dataclasses import dataclass, fields
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ssm_scan import selective_scan, BACKENDS

Tensor = torch.Tensor
Rope = Optional[Tuple[Tensor, Tensor]]  # (cos, sin), each (T, hs), or None without RoPE

# -----------------------------------------------------------------------------
# norms

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalised in fp32 at least (bf16 autocast hands us bf16 activations), as HF's LlamaRMSNorm; for
        # fp32 and fp64 input the cast is a no-op, so full-precision results are those of the plain formula
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


# norm name -> constructor(dim, rms_eps). LayerNorm's eps is 1e-5 everywhere in the reference; RMSNorm's
# depends on what it sits in front of (each MIXERS / FFNS row says: Llama's 1e-6, HF Mamba's 1e-5)
NORMS = {
    "layernorm": lambda dim, rms_eps: nn.LayerNorm(dim, eps=1e-5),
    "rmsnorm": lambda dim, rms_eps: RMSNorm(dim, eps=rms_eps),
}
POSITIONS = ("learned", "rope", "none")
ATTNS = ("gpt2", "llama")  # gpt2: biased fused qkv and proj | llama: no biases
MAMBA_INITS = ("gpt2", "mamba")  # init_mamba's two rules

# -----------------------------------------------------------------------------
# attention

def rope_cache(T: int, hs: int, device: torch.device, base: float = 1e4) -> Tuple[Tensor, Tensor]:
    # rotate-half RoPE over the 2N interleaved tokens (x and y tokens get their own positions)
    inv_freq = 1.0 / base ** (torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs)
    ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq  # (T, hs/2)
    ang = torch.cat((ang, ang), dim=-1)                                             # (T, hs)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        bias = cfg.attn == "gpt2"  # the Llama flavour has no biases; "GPT-2 RoPE" swaps in the Llama module
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)

    def forward(self, x: Tensor, rope: Rope = None) -> Tensor:
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        q = rearrange(q, "b t (h s) -> b h t s", h=self.n_head)  # (B, H, T, hs)
        k = rearrange(k, "b t (h s) -> b h t s", h=self.n_head)
        v = rearrange(v, "b t (h s) -> b h t s", h=self.n_head)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(rearrange(y, "b h t s -> b t (h s)"))

# -----------------------------------------------------------------------------
# feed-forward

class MLP(nn.Module):
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        hidden = int(cfg.ffn_mult * cfg.n_embd)
        self.c_fc = nn.Linear(cfg.n_embd, hidden)
        self.c_proj = nn.Linear(hidden, cfg.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's gelu_new


class SwiGLU(nn.Module):
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        hidden = int(cfg.ffn_mult * cfg.n_embd)
        self.w_gate = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.w_up = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=False)  # Llama's down_proj

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.silu(self.w_gate(x)) * self.w_up(x))

# -----------------------------------------------------------------------------
# Mamba mixer (mamba_simple.Mamba without the fused CUDA paths)

class MambaMixer(nn.Module):
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        C = cfg.n_embd
        di = cfg.expand * cfg.n_embd
        self.ds = cfg.d_state
        self.R = cfg.dt_rank
        self.backend = cfg.scan_backend
        self.in_proj = nn.Linear(C, 2 * di, bias=False)  # x and the gate z
        # depthwise, causal after trim
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(di, self.R + 2 * self.ds, bias=False)  # (dt_low, B, C), input-dependent
        self.dt_proj = nn.Linear(self.R, di)
        self.A_log = nn.Parameter(torch.empty(di, self.ds))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, C, bias=False)

    def forward(self, x: Tensor, rope: Rope = None) -> Tensor:
        T = x.shape[1]
        x, z = self.in_proj(x).chunk(2, dim=-1)                    # (B, T, di) each
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :T])        # (B, di, T); drop the right pad = causal
        dt, Bm, Cm = self.x_proj(x.transpose(1, 2)).split([self.R, self.ds, self.ds], dim=-1)
        dt = dt @ self.dt_proj.weight.t()                          # (B, T, di); bias is added inside the scan
        A = -torch.exp(self.A_log.float())                         # (di, ds), negative: a stable decay
        # (B, di, T) views of (B, T, .) tensors: the transposes are not copies
        # deterministic: fixed-order sums on GPU
        y = selective_scan(x, dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2), self.D.float(),
                           z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           backend=self.backend,
                           deterministic=torch.are_deterministic_algorithms_enabled())
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """the leading pre-norm Mamba block, used as "positional embedder" (2.1, 2.3, Park): x + mixer(norm(x)).
    With reference_quirks the reference's extra residual marker doubles the stream: 2x + mixer(norm(x))."""
    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.norm = NORMS[cfg.norm](cfg.n_embd, MIXERS["M"].rms_eps)
        self.mixer = MambaMixer(cfg)
        self.skip = 2.0 if "doubling" in quirk_parts(cfg) else 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.skip * x + self.mixer(self.norm(x))

# -----------------------------------------------------------------------------
# init rules, one pair per module kind: the clean default, and what the reference package ends up with
# (reference_quirks=True; `family` is reference_family(cfg), docs/paper.md §3.4). Each rule sets every
# parameter of its module; the draws happen in module order, so a seed fixes the weights.

STD = 0.02  # GPT-2's and Llama's N(0, 0.02)


def _normal(linear, std):  # weight N(0, std), bias 0
    nn.init.normal_(linear.weight, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _residual_std(cfg):  # GPT-2's scaled init of the projections that write into the residual stream
    return STD / math.sqrt(2 * cfg.n_layer)


def init_linears(mod: nn.Module, cfg: "ModelConfig") -> None:
    """clean rule for a module of Linear layers: N(0, 0.02), and N(0, 0.02 / sqrt(2 n_layer)) for the one
    named c_proj (it writes into the residual stream). Any new module of Linears can use it."""
    for name, linear in mod.named_children():
        _normal(linear, _residual_std(cfg) if name == "c_proj" else STD)


def init_linears_reference(mod, cfg, family):
    """reference rule for attention and MLPs: HF GPT-2 modules (GELU MLP, gpt2 attention) get N(0, 0.02),
    scaled for c_proj only inside a real HF GPT2Model; a pure HF Llama gets N(0, 0.02) unscaled; Llama modules
    built outside HF (in a hybrid) keep PyTorch's default init."""
    parts = quirk_parts(cfg)
    hf_gpt2_module = isinstance(mod, MLP) or (isinstance(mod, CausalSelfAttention) and cfg.attn == "gpt2")
    resid_std = STD if "residual_scale" in parts else _residual_std(cfg)
    for name, linear in mod.named_children():
        if "torch_init" in parts and not hf_gpt2_module:
            linear.reset_parameters()  # LlamaAttention / LlamaMLP built outside HF: torch default
        else:
            _normal(linear, resid_std if name == "c_proj" else STD)


def _mamba_dynamics(mod, dt_init):
    # A_log = log(1..ds) (A = -1..-ds), D = 1, and with dt_init the dt_proj init of HF / mamba_simple: weight
    # U(+-R^-0.5), bias = softplus^-1(dt) for dt log-uniform in [1e-3, 0.1] (floor 1e-4)
    if dt_init:
        nn.init.uniform_(mod.dt_proj.weight, -mod.R ** -0.5, mod.R ** -0.5)
        dt = torch.exp(torch.rand(mod.dt_proj.bias.shape) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        mod.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    ds = torch.arange(1, mod.ds + 1, dtype=torch.float32)
    mod.A_log.copy_(torch.log(ds).repeat(mod.A_log.shape[0], 1))
    nn.init.ones_(mod.D)


def _mamba_anchor_init(mod, cfg, dt_init=True):
    # what mamba_ssm and HF's MambaModel do: PyTorch-default linears (in_proj, x_proj, out_proj carry no bias;
    # dt_proj's is set by the dt init), out_proj then / sqrt(n_layer); without dt_init (a Mamba block built
    # outside HF in the reference's hybrid engine) PyTorch defaults throughout, out_proj unscaled
    for linear in (mod.in_proj, mod.x_proj, mod.out_proj, mod.dt_proj):
        linear.reset_parameters()
    mod.conv1d.reset_parameters()
    if dt_init:
        mod.out_proj.weight /= math.sqrt(cfg.n_layer)
    _mamba_dynamics(mod, dt_init=dt_init)


def init_mamba(mod: MambaMixer, cfg: "ModelConfig", out_std: Optional[float] = None) -> None:
    """clean rule, by cfg.mamba_init: 'mamba' is mamba_ssm's (and HF's) init; 'gpt2' gives the linears GPT-2's
    N(0, 0.02) (out_proj N(0, 0.02 / sqrt(2 n_layer)), or out_std), conv1d PyTorch default, Mamba's dt, A and
    D init."""
    if cfg.mamba_init == "mamba":
        _mamba_anchor_init(mod, cfg)
        return
    for linear in (mod.in_proj, mod.x_proj, mod.out_proj, mod.dt_proj):
        _normal(linear, STD)
    mod.conv1d.reset_parameters()
    mod.out_proj.weight.normal_(0.0, out_std or _residual_std(cfg))
    _mamba_dynamics(mod, dt_init=True)


def init_mamba_reference(mod, cfg, family):
    """reference rule: HF MambaModel (pure Mamba: part mamba_init) is mamba_ssm's init; a Mamba block inside
    the hybrid engine (part torch_init) keeps PyTorch defaults throughout (no dt init); with neither, the
    clean rule (out_proj unscaled with residual_scale)."""
    parts = quirk_parts(cfg)
    if not {"torch_init", "mamba_init"} & parts:
        init_mamba(mod, cfg, out_std=STD if "residual_scale" in parts else None)
        return
    _mamba_anchor_init(mod, cfg, dt_init="torch_init" not in parts)

# -----------------------------------------------------------------------------
# the tables: what each letter of layer_pattern and each ffn name builds

@dataclass(frozen=True)
class Kind:
    module: type                        # built as module(cfg); a mixer's forward(x, rope=None), an FFN's (x)
    group: str                          # its group in ICLModel.param_counts
    rms_eps: float                      # eps of an RMSNorm in front of it
    init: Optional[Callable]            # clean init rule: init(module, cfg)
    init_reference: Optional[Callable]  # reference_quirks init rule: init_reference(module, cfg, family)
    uses_heads: bool = False            # n_embd must divide into n_head heads
    # None: a plain residual, x + f(norm(x)). A float s: a scaled one, s x + f(norm(x)), with s = this value
    # under reference_quirks and 1 without; the multiply stays even at 1 (autograd's sum order, so the bits,
    # follow it)
    reference_skip: Optional[float] = None


MIXERS = {  # layer_pattern letters
    "A": Kind(CausalSelfAttention, "attention", 1e-6, init_linears, init_linears_reference, uses_heads=True),
    "M": Kind(MambaMixer, "mamba", 1e-5, init_mamba, init_mamba_reference),
}
FFNS = {  # ffn names; "none": mixer-only blocks (Mamba, MambaFormer)
    "gelu": Kind(MLP, "mlp", 1e-6, init_linears, init_linears_reference),
    "swiglu": Kind(SwiGLU, "mlp", 1e-6, init_linears, init_linears_reference),
    # a whole Mamba block as FFN (2.2, 2.3); the reference's residual marker after it doubles the stream
    "mamba": Kind(MambaMixer, "mamba", 1e-5, init_mamba, init_mamba_reference, reference_skip=2.0),
    "none": None,
}
# the ModelConfig keys that name a table entry (the tables themselves: a row added is a valid name at once)
CHOICES = dict(norm=NORMS, pos=POSITIONS, attn=ATTNS, ffn=FFNS, scan_backend=BACKENDS, mamba_init=MAMBA_INITS)

# -----------------------------------------------------------------------------
# config

@dataclass
class ModelConfig:
    # icl interface
    # (the defaults are train.py's: a small GPT-2 on 5-d linear regression; configs/ hold the paper's sizes)
    n_dims: int = 5             # x dimension = read-in width (y tokens are zero-padded to it)
    y_dim: int = 1              # read-out width (n_dims for mqar)
    n_positions: int = 141      # max points per prompt; the learned table has 2 * n_positions rows
    # backbone: each block is [norm, mixer, +res] then optionally [norm, ffn, +res]
    n_layer: int = 4            # number of blocks
    n_embd: int = 64
    n_head: int = 4
    norm: str = "layernorm"     # a NORMS name: layernorm | rmsnorm
    pos: str = "learned"        # learned | rope | none
    attn: str = "gpt2"          # gpt2: biased fused qkv and proj | llama: no biases
    ffn: str = "gelu"           # an FFNS name: gelu (tanh-GELU MLP) | swiglu | mamba (a Mamba block) | none
    ffn_mult: float = 4.0       # FFN hidden = ffn_mult * C; the reference uses 4 for SwiGLU too (not 8/3)
    mamba_embed: bool = False   # a leading pre-norm Mamba block as "positional embedder" (2.1, 2.3, Park)
    layer_pattern: str = "A"    # mixer per block, tiled over n_layer: MIXERS letters (A attention, M Mamba)
    # mamba
    d_state: int = 16
    d_conv: int = 4
    expand: int = 4             # the paper uses 4 "to give similar parameter counts" (Mamba's default is 2)
    dt_rank: int = 0            # 0 -> ceil(C / 16)
    scan_backend: str = "auto"  # ssm_scan backend: auto | torch | cpu | triton
    mamba_init: str = "mamba"   # Mamba mixers' init: mamba (mamba_ssm's and HF's) | gpt2 (N(0, 0.02) linears)
    # reproduce the reference package instead of the clean defaults (docs/paper.md §3.4): True (what the
    # reference does for this architecture) or a comma list of QUIRK_PARTS
    reference_quirks: Union[bool, str] = False

    def __post_init__(self):
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if not self.layer_pattern or set(self.layer_pattern) - set(MIXERS):
            raise ValueError(f"layer_pattern={self.layer_pattern!r} must be a non-empty string of the "
                             f"MIXERS letters ({', '.join(MIXERS)})")
        uses_heads = any(MIXERS[letter].uses_heads for letter in self.layer_pattern)
        if uses_heads and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("RoPE needs an even head size, got "
                             f"n_embd/n_head = {self.n_embd // self.n_head}")
        for key in ("n_dims", "y_dim", "n_positions", "n_layer", "n_embd", "n_head", "d_state", "d_conv",
                    "expand"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.y_dim > self.n_dims:
            raise ValueError(f"y_dim={self.y_dim} cannot exceed n_dims={self.n_dims} "
                             "(y tokens are padded to n_dims)")
        if type(self.reference_quirks) is str:
            unknown = sorted(quirk_parts(self) - set(QUIRK_PARTS))
            if unknown:
                raise ValueError(f"reference_quirks: unknown part(s) {', '.join(unknown)}; the parts are "
                                 f"{', '.join(QUIRK_PARTS)} (or True: the reference's own set)")
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.n_embd / 16)

    @classmethod
    def from_dict(cls, cfg: dict) -> "ModelConfig":
        # the flat training config holds these keys among others
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    def uses_mamba(self) -> bool:
        """whether a Mamba mixer is in the model (a mixer letter, the FFN or the leading block): only then
        do the Mamba keys (d_state, mamba_init, ...) change it"""
        ffn = FFNS[self.ffn]
        kinds = [MIXERS[letter] for letter in self.layer_pattern] + ([ffn] if ffn else [])
        return self.mamba_embed or any(kind.module is MambaMixer for kind in kinds)

    def blocks(self) -> List[str]:
        """the mixer letter of each block: layer_pattern tiled over n_layer"""
        return [self.layer_pattern[i % len(self.layer_pattern)] for i in range(self.n_layer)]

# -----------------------------------------------------------------------------
# the block and the stack

class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, letter: str):
        super().__init__()
        mixer = MIXERS[letter]
        ffn = FFNS[cfg.ffn]
        self.ln_1 = NORMS[cfg.norm](cfg.n_embd, mixer.rms_eps)
        self.mixer = mixer.module(cfg)
        self.ffn: Optional[nn.Module] = None
        self.skip: Optional[float] = None
        if ffn is not None:
            self.ln_2 = NORMS[cfg.norm](cfg.n_embd, ffn.rms_eps)
            self.ffn = ffn.module(cfg)
            if ffn.reference_skip is not None:
                self.skip = ffn.reference_skip if "doubling" in quirk_parts(cfg) else 1.0

    def forward(self, x: Tensor, rope: Rope = None) -> Tensor:
        x = x + self.mixer(self.ln_1(x), rope)
        if self.ffn is not None:
            residual = x if self.skip is None else self.skip * x
            x = residual + self.ffn(self.ln_2(x))
        return x


class ICLModel(nn.Module):
    """prompt (xs, ys) -> predictions at the x tokens. There is no vocabulary, so no weight tying."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.n_embd
        self.read_in = nn.Linear(cfg.n_dims, C)
        self.wpe = nn.Embedding(2 * cfg.n_positions, C) if cfg.pos == "learned" else None
        self.embed = MambaBlock(cfg) if cfg.mamba_embed else None
        self.h = nn.ModuleList(Block(cfg, letter) for letter in cfg.blocks())
        # the final norm's eps: HF Mamba's (1e-5) for a pure-Mamba stack, else Llama's (1e-6)
        final_eps = 1e-5 if set(cfg.layer_pattern) == {"M"} else 1e-6
        self.ln_f = NORMS[cfg.norm](C, final_eps)
        self.read_out = nn.Linear(C, cfg.y_dim)
        if quirk_parts(cfg):
            init_reference(self)
        else:
            init_clean(self)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        B, N, d = xs.shape
        if d != self.cfg.n_dims or ys.shape[-1] != self.cfg.y_dim:
            raise ValueError(f"model was built for x of dimension {self.cfg.n_dims} and y of dimension "
                             f"{self.cfg.y_dim}, got x {tuple(xs.shape)} and y {tuple(ys.shape)}")
        if self.wpe is not None and N > self.cfg.n_positions:
            raise ValueError(f"prompt has {N} points but the learned position table holds "
                             f"n_positions={self.cfg.n_positions}")
        # (B, N, 2, d): x_i then [y_i, 0, ..., 0]
        z = torch.stack((xs, F.pad(ys, (0, d - ys.shape[-1]))), dim=2)
        h = self.read_in(rearrange(z, "b n two d -> b (n two) d"))     # (B, T, C)
        T = h.shape[1]
        if self.wpe is not None:
            h = h + self.wpe(torch.arange(T, device=h.device))
        if self.embed is not None:
            h = self.embed(h)
        rope = None
        if self.cfg.pos == "rope":
            cos, sin = rope_cache(T, self.cfg.n_embd // self.cfg.n_head, h.device)
            rope = (cos.to(h.dtype), sin.to(h.dtype))
        for block in self.h:
            h = block(h, rope)
        return self.read_out(self.ln_f(h)[:, ::2])                      # (B, N, y_dim), read at the x tokens

    def param_counts(self) -> Dict[str, int]:
        """parameter counts by group; backbone = everything but read-in/out (the paper's §3.5 convention)."""
        groups = dict(read_in_out=0, attention=0, mlp=0, mamba=0, norm=0, embeddings=0)
        group_of = {kind.module: kind.group for kind in _table_kinds()}
        group_of.update({nn.LayerNorm: "norm", RMSNorm: "norm", nn.Embedding: "embeddings"})
        for name, mod in self.named_modules():  # these module kinds never nest inside one another
            group = "read_in_out" if name in ("read_in", "read_out") else group_of.get(type(mod))
            if group:
                groups[group] = groups.get(group, 0) + sum(p.numel() for p in mod.parameters())
        groups["backbone"] = sum(v for k, v in groups.items() if k != "read_in_out")
        groups["total"] = sum(p.numel() for p in self.parameters())
        assert groups["total"] == groups["backbone"] + groups["read_in_out"], "a parameter escaped the groups"
        return groups

    def optim_groups(self, weight_decay: float) -> List[dict]:
        """decay Linear/Embedding weights only; never norms, biases, conv, A_log, D (A_log is 2-D, so the
        usual dim >= 2 rule would wrongly decay it)."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        params = list(self.parameters())
        groups: List[dict] = [dict(params=[p for p in params if id(p) in decay], weight_decay=weight_decay),
                              dict(params=[p for p in params if id(p) not in decay], weight_decay=0.0)]
        assert sum(len(g["params"]) for g in groups) == len(params)
        return groups

# -----------------------------------------------------------------------------
# init: one walk over the modules in order, each module set by its table's rule

# the parts of the reference package's quirks (docs/paper.md §3.4), each a switch of its own:
#   position        the learned position table N(0, 1) instead of N(0, 0.02)
#   residual_scale  the projections into the residual stream (c_proj, Mamba's out_proj) N(0, 0.02), not scaled
#                   by 1 / sqrt(2 n_layer)
#   torch_init      Llama and Mamba modules keep PyTorch's default init, no dt init (built outside HF)
#   mamba_init      Mamba mixers get HF MambaModel's init: default linears, its dt init, out_proj / sqrt(L)
#   doubling        the residual stream doubled after every Mamba block: x <- 2x + mixer(norm(x))
# reference_quirks=True is what the reference package gives this architecture (reference_family); a comma
# list ('position,residual_scale') applies exactly those parts, to any architecture (a LayerNorm GPT-2 too)
QUIRK_PARTS = ("position", "residual_scale", "torch_init", "mamba_init", "doubling")
FAMILY_PARTS = dict(gpt2=(), llama=("residual_scale",), mamba=("mamba_init",),
                    hybrid=("position", "residual_scale", "torch_init", "doubling"))


def quirk_parts(cfg: ModelConfig) -> FrozenSet[str]:
    """the set of quirk parts this config applies"""
    q = cfg.reference_quirks
    if q is True:
        return frozenset(FAMILY_PARTS[reference_family(cfg)])
    if not q:
        return frozenset()
    return frozenset(p.strip() for p in q.split(",") if p.strip())


def reference_family(cfg: ModelConfig) -> str:
    """which model of the reference package this config is: its pure models are HuggingFace models
    with their own init; everything else went through its hybrid engine, where no HF init runs."""
    plain = not cfg.mamba_embed and cfg.layer_pattern == "A"
    if plain and (cfg.norm, cfg.pos, cfg.attn, cfg.ffn) == ("layernorm", "learned", "gpt2", "gelu"):
        return "gpt2"
    if plain and (cfg.norm, cfg.pos, cfg.attn, cfg.ffn) == ("rmsnorm", "rope", "llama", "swiglu"):
        return "llama"
    if set(cfg.layer_pattern) == {"M"} and cfg.ffn == "none" and not cfg.mamba_embed:
        return "mamba"
    return "hybrid"


class InitRuleError(RuntimeError):
    """a parameter that no init rule sets: a table row added without its init rules"""


def _init_walk(model, rules, position_std):
    # norms: ones (and zero bias); read-in/out: PyTorch default, as the reference; the position table
    # N(0, position_std); every other module with parameters by rules[its class]
    covered = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(mod.weight)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)
        elif name in ("read_in", "read_out"):
            mod.reset_parameters()
        elif name == "wpe":
            nn.init.normal_(mod.weight, std=position_std)
        elif type(mod) in rules:
            rules[type(mod)](mod)
        else:
            continue
        covered.update(id(p) for p in mod.parameters())
    for name, p in model.named_parameters():
        if id(p) not in covered:
            raise InitRuleError(f"no init rule covers parameter {name!r}: give its module's row in "
                                "model.py's MIXERS or FFNS table an init and init_reference rule "
                                "(init_linears fits a module of Linears)")


def _table_kinds():
    return [kind for kind in (*MIXERS.values(), *FFNS.values()) if kind is not None]


@torch.no_grad()
def init_clean(model: ICLModel) -> None:
    """the default, one rule for every family: weights N(0, 0.02), biases 0, residual-output projections
    (c_proj, Mamba out_proj) N(0, 0.02 / sqrt(2 n_layer)), learned positions N(0, 0.02), Mamba A_log =
    log(1..ds), D = 1 and the dt init, conv1d and read-in/out PyTorch defaults."""
    rules = {kind.module: functools.partial(kind.init, cfg=model.cfg) for kind in _table_kinds() if kind.init}
    _init_walk(model, rules, position_std=STD)


@torch.no_grad()
def init_reference(model: ICLModel) -> None:
    """reference_quirks=True: what the reference package ends up with (docs/paper.md §3.4). Pure GPT-2 as
    init_clean; pure Llama N(0, 0.02) unscaled; pure Mamba = HF (default Linear, dt init, out_proj / sqrt(L));
    hybrids get no HF init at all: GPT-2 modules N(0, 0.02) unscaled (HF Conv1D's own init), Llama and Mamba
    linears PyTorch defaults (dt_proj included), position table N(0, 1)."""
    family = reference_family(model.cfg)
    rules = {kind.module: functools.partial(kind.init_reference, cfg=model.cfg, family=family)
             for kind in _table_kinds() if kind.init_reference}
    _init_walk(model, rules, position_std=1.0 if "position" in quirk_parts(model.cfg) else STD)
