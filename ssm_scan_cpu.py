"""
The fused CPU backend of ssm_scan.selective_scan: the recurrence and its backward as C++ loops
(ssm_scan_cpu.cpp, beside this file), compiled on first use with the system's C++ compiler, cached, and
called through ctypes. ssm_scan.py holds the contract and the readable torch reference this kernel must
agree with; this file is only the build, the cache and the glue.

    selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False)      # CPU tensors; raises CPUBuildError if it cannot build

The cache: $SSM_SCAN_CACHE, else $XDG_CACHE_HOME/icl-hybrids (~/.cache/icl-hybrids). The file name holds a
hash of the source, the flags and $CXX, and the CPU's vector ISA; each library has a checksum beside it, and
a file that fails it is rebuilt. One process builds (a file lock), the others wait and load it.
"""
import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Optional

import torch

# Layout: one thread per batch row (so the sums over channels for dB and dC have one writer each and a
# fixed order), channels in blocks of 32 as the vector lanes, the 16 states as an outer loop. The decay
# exp is a polynomial the compiler can vectorise (a libm call would not be); -fno-trapping-math lets it
# if-convert the clamp. Flags that change numerics for the whole process (-ffast-math sets flush-to-zero
# when the library loads) are deliberately not used. The library depends on no torch headers, so the
# build is one compiler call of a second or two.

# the C++ source: a real file beside this one, hashed by content into the cache key (an edit rebuilds)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ssm_scan_cpu.cpp")) as _f:
    _CPU_SOURCE = _f.read()
_CPU_CHUNK = 16      # K in the source: time steps between saved states
_CPU_MAX_STATE = 64  # MAXN in the source


class _Dims(ctypes.Structure):
    _fields_ = [("b", ctypes.c_int64), ("d", ctypes.c_int64), ("l", ctypes.c_int64), ("n", ctypes.c_int64),
                ("threads", ctypes.c_int64), ("softplus", ctypes.c_int64)]


class _Rows(ctypes.Structure):  # a (b, l, d) tensor with unit stride over d
    _fields_ = [("p", ctypes.c_void_p), ("sb", ctypes.c_int64), ("st", ctypes.c_int64)]


class CPUBuildError(RuntimeError):
    """the fused CPU scan could not be compiled or loaded here."""


def _cpu_flags():
    # vector ISA of this CPU, as torch detected it. AVX2 builds would crash on an older x86 CPU, so the cache
    # file is named by the ISA: a shared cache never hands one machine another machine's build
    isa = torch.backends.cpu.get_cpu_capability()
    if isa.startswith("AVX2") or isa.startswith("AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "base", []


def _cpu_cache_dir():
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "icl-hybrids")
    return os.environ.get("SSM_SCAN_CACHE") or default


_cpu_lib = None
_cpu_lock = threading.Lock()


def _cpu_digest(path):  # "size sha256" of a file's bytes, as written beside the library
    with open(path, "rb") as f:
        data = f.read()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def _cpu_verified(path):
    # a truncated or overwritten library would be mapped and die of SIGBUS: load only what matches its
    # checksum
    try:
        with open(path + ".sha256") as f:
            expected = f.read().strip()
        return _cpu_digest(path) == expected
    except OSError:
        return False


class _BuildLock:
    """an exclusive lock on `path`.lock: one process builds, the others wait and find it built"""

    def __init__(self, path):
        self.path = path + ".lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): builds are not serialized, the renames still are atomic
            return self
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def _cpu_build(compiler, flags, path):
    """compile into a temporary directory of the cache, then rename the library and its checksum into place"""
    if shutil.which(compiler[0]) is None:
        raise CPUBuildError(f"no C++ compiler ({compiler[0]!r} not found; set CXX)")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        src = os.path.join(tmp, "ssm_scan_cpu.cpp")
        with open(src, "w") as f:
            f.write(_CPU_SOURCE)
        built = os.path.join(tmp, "lib.so")
        r = subprocess.run([*compiler, *flags, src, "-o", built], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise CPUBuildError(f"{shlex.join(compiler)} failed (exit {r.returncode}): {last}")
        digest = os.path.join(tmp, "lib.sha256")
        with open(digest, "w") as f:
            f.write(_cpu_digest(built) + "\n")
        # atomic: a reader never maps a half-written file; the library first, so a reader that sees the new
        # checksum sees the new library (one that sees the old checksum waits on the lock and checks again)
        os.replace(built, path)
        os.replace(digest, path + ".sha256")


def _cpu_build_once(compiler, flags, path):
    """build the library at `path`: one process builds (a file lock), the others wait, then find it built"""
    damaged = os.path.exists(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _BuildLock(path):
            if not _cpu_verified(path):  # another process may have built it while this one waited
                _cpu_build(compiler, flags, path)
    except (OSError, subprocess.SubprocessError, CPUBuildError) as e:
        why = f"cannot build in {os.path.dirname(path)}: {e}"
        if isinstance(e, CPUBuildError):
            why = str(e)
        if damaged:  # name the file, which is what a user would delete
            why = f"{path} fails its checksum and cannot be rebuilt: {why}"
        raise CPUBuildError(why) from e


def _cpu_library():
    """the compiled library, built on first use into the cache (a changed source, flag set or CXX gets a new
    file name, so it rebuilds; a file that does not match its checksum is rebuilt). Raises CPUBuildError with
    the reason."""
    global _cpu_lib
    with _cpu_lock:
        if _cpu_lib is not None:
            return _cpu_lib
        isa, isa_flags = _cpu_flags()
        flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-fno-trapping-math",
                 *isa_flags]
        cxx = os.environ.get("CXX", "")
        try:
            compiler = shlex.split(cxx) or ["c++"]  # a command line, as build tools read it: 'ccache g++'
        except ValueError as e:
            raise CPUBuildError(f"CXX={cxx!r} is not a command line: {e}") from e
        # the compiler command is in the key: its flags (-march=native) change the code
        keyed = "\n".join([_CPU_SOURCE, " ".join(flags), shlex.join(compiler)])
        key = hashlib.sha256(keyed.encode()).hexdigest()[:16]
        path = os.path.join(_cpu_cache_dir(), f"ssm_scan_cpu-{key}-{isa}.so")
        if not _cpu_verified(path):
            _cpu_build_once(compiler, flags, path)
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise CPUBuildError(f"cannot load {path}: {e}") from e
        for suffix in ("f32", "f64"):
            for name in ("forward", "backward", "sum_rows"):
                getattr(lib, f"{name}_{suffix}").restype = None
        _cpu_lib = lib
        return lib


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def _rows(x):
    # a (b, d, l) tensor as the C code's Rows: its storage needs unit stride over d. model.py's delta and z
    # are such views of (b, l, .) Linear outputs already (no copy); anything else is copied once, as
    # (b, l, d)
    if x.stride(1) != 1:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x, _Rows(x.data_ptr(), x.stride(0), x.stride(2))


def _absent():
    return _Rows(None, 0, 0)


def _vector_ptr(x):
    return None if x is None else ctypes.c_void_p(x.data_ptr())


class _ScanCPU(torch.autograd.Function):
    """the whole of selective_scan in two C calls: bias and softplus, the recurrence, the D skip and the z
    gate forward; all their gradients backward"""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
        lib = _cpu_library()
        b, d, l = u.shape
        n = A.shape[1]
        acc = torch.promote_types(torch.float32, u.dtype)
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, bias)]
        u, u_rows = _rows(u.to(acc))
        delta, delta_rows = _rows(delta.to(acc))
        z, z_rows = (None, _absent()) if z is None else _rows(z.to(acc))
        At = A.to(acc).t().contiguous()           # (n, d)
        # (b, l, n): a view of model.py's x_proj output, no copy there
        Bt = B.to(acc).transpose(1, 2).contiguous()
        Ct = C.to(acc).transpose(1, 2).contiguous()
        D = None if D is None else D.to(acc).contiguous()
        bias = None if bias is None else bias.to(acc).contiguous()
        out = u.new_empty(b, l, d)
        states = u.new_empty(b, -(-l // _CPU_CHUNK), n, d)
        last = u.new_empty(b, n, d)
        dims = _Dims(b, d, l, n, torch.get_num_threads(), int(softplus))
        entry = lib.forward_f64 if acc == torch.float64 else lib.forward_f32
        entry(dims, u_rows, delta_rows, z_rows, _ptr(At), _ptr(Bt), _ptr(Ct), _vector_ptr(D),
              _vector_ptr(bias), _ptr(out), _ptr(states), _ptr(last))
        ctx.save_for_backward(u, delta, z, At, Bt, Ct, D, bias, states)
        ctx.softplus = softplus
        last = last.transpose(1, 2)  # (b, d, n)
        ctx.mark_non_differentiable(last)
        return out.transpose(1, 2).to(ctx.dtypes[0]), last

    @staticmethod
    def backward(ctx, gout, _glast):
        u, delta, z, At, Bt, Ct, D, bias, states = ctx.saved_tensors
        lib = _cpu_library()
        b, d, l = u.shape
        n = At.shape[0]
        g, g_rows = _rows(gout.to(u.dtype))
        z_rows = _absent() if z is None else _Rows(z.data_ptr(), z.stride(0), z.stride(2))
        du = u.new_empty(b, l, d)
        ddelta = u.new_empty(b, l, d)
        dz = u.new_empty(b, l, d) if z is not None else u.new_empty(1)
        parts = u.new_empty(b, n + 2, d)  # per batch row: dA | dD | dbias
        sums = u.new_empty(n + 2, d)
        dB = u.new_zeros(b, l, n)
        dC = u.new_zeros(b, l, n)
        dims = _Dims(b, d, l, n, torch.get_num_threads(), int(ctx.softplus))
        f64 = u.dtype == torch.float64
        entry = lib.backward_f64 if f64 else lib.backward_f32
        entry(dims, _Rows(u.data_ptr(), u.stride(0), u.stride(2)),
              _Rows(delta.data_ptr(), delta.stride(0), delta.stride(2)), z_rows, g_rows, _ptr(At), _ptr(Bt),
              _ptr(Ct), _vector_ptr(D), _vector_ptr(bias), _ptr(states), _ptr(du), _ptr(ddelta), _ptr(dz),
              _ptr(parts), _ptr(dB), _ptr(dC))
        (lib.sum_rows_f64 if f64 else lib.sum_rows_f32)(ctypes.c_int64(b), ctypes.c_int64((n + 2) * d),
                                                        _ptr(parts), _ptr(sums))
        du_t, ddelta_t, dA_t, dB_t, dC_t, dD_t, dz_t, dbias_t = ctx.dtypes
        grads = (du.transpose(1, 2).to(du_t), ddelta.transpose(1, 2).to(ddelta_t), sums[:n].t().to(dA_t),
                 dB.transpose(1, 2).to(dB_t), dC.transpose(1, 2).to(dC_t),
                 None if D is None else sums[n].to(dD_t), None if z is None else dz.transpose(1, 2).to(dz_t),
                 None if bias is None else sums[n + 1].to(dbias_t))
        return *grads, None


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False) -> Any:
    """The fused CPU backend (CPU tensors). Raises CPUBuildError if it cannot be built here."""
    if u.device.type != "cpu":
        raise ValueError(f"the cpu backend takes CPU tensors, got {u.device}")
    if A.shape[1] > _CPU_MAX_STATE:
        raise ValueError(f"the cpu backend supports d_state <= {_CPU_MAX_STATE}, got {A.shape[1]}")
    out, last = _ScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (out, last) if return_last_state else out
