
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

constexpr int64_t BD = 32;    // channels per block: the vector lanes
constexpr int64_t K = 16;     // time steps per chunk: the backward's recompute window
constexpr int64_t MAXN = 64;  // largest d_state (checked by the caller)

// A (b, l, d) tensor with unit stride over d: element (b, t, j) at p[b * sb + t * st + j]. Null: absent.
template <typename T> struct Rows {
    T* p;
    int64_t sb, st;
    T* at(int64_t b, int64_t t) const { return p + b * sb + t * st; }
};
struct Dims { int64_t b, d, l, n, threads, softplus; };

// exp(x) the compiler can vectorise (a libm call would not be): x = k ln2 + r with |r| <= ln2 / 2, e^r by
// its Taylor series to r^6 (relative error < 3e-7), 2^k written into the exponent bits. 0 below -87, e^88
// above 88.
static inline float fast_exp(float x) {
    const float xc = std::min(std::max(x, -87.0f), 88.0f);
    const float k = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest: the 1.5 * 2^23 trick
    const float r = (xc - k * 0.693145752f) - k * 1.42860677e-6f;     // ln 2 in two parts, for an exact k ln2
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
        r / 720)))));
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x > -87.0f ? p * scale : 0.0f;
}
static inline double fast_exp(double x) { return std::exp(x); }

// log(1 + w) for w in [0, 1], as 2 atanh(s) with s = w / (2 + w) <= 1/3: exact to fp32 rounding even for
// tiny w
static inline float log1p_unit(float w) {
    const float s = w / (2.0f + w);
    const float s2 = s * s;
    const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (
        1.0f / 11 + s2 / 13)))));
    return 2.0f * s * series;
}

// softplus(x) = log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), the identity above 20 (as F.softplus); its
// derivative is sigmoid(x)
static inline float softplus(float x) {
    const float sp = std::max(x, 0.0f) + log1p_unit(fast_exp(-std::fabs(x)));
    return x > 20.0f ? x : sp;
}
static inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
template <typename T> static inline T sigmoid(T x) { return T(1) / (T(1) + fast_exp(-x)); }

// f(width) with width a compile-time BD for a full channel block (fixed trip counts: no remainder loops) and
// the runtime bd for the last, partial one
template <typename F>
static inline void lanes(int64_t bd, F f) {
    if (bd == BD) {
        f(std::integral_constant<int64_t, BD>());
    } else {
        f(bd);
    }
}

// run body(b) for every batch row on `threads` threads: contiguous ranges, so the result is independent of
// the thread count
template <typename F>
static void for_each_row(const Dims& m, F body) {
    const int64_t threads = std::max<int64_t>(1, std::min(m.threads, m.b));
    std::vector<std::thread> pool;
    for (int64_t i = 0; i < threads; i++) {
        pool.emplace_back([&, i] {
            for (int64_t b = m.b * i / threads; b < m.b * (i + 1) / threads; b++) body(b);
        });
    }
    for (auto& thread : pool) thread.join();
}

// dt = softplus(delta + bias) (or delta + bias) for one row of a channel block; dsp (if asked) its
// derivative. Each case its own branch-free loop, so that the compiler vectorises it
template <typename T>
static inline void time_step(const Dims& m, const T* delta, const T* bias, int64_t bd, T* dt, T* dsp) {
    T r[BD];
    if (bias) {
        for (int64_t j = 0; j < bd; j++) r[j] = delta[j] + bias[j];
    } else {
        for (int64_t j = 0; j < bd; j++) r[j] = delta[j];
    }
    if (!m.softplus) {
        for (int64_t j = 0; j < bd; j++) dt[j] = r[j];
        if (dsp) for (int64_t j = 0; j < bd; j++) dsp[j] = T(1);
        return;
    }
    #pragma omp simd
    for (int64_t j = 0; j < bd; j++) dt[j] = softplus(r[j]);
    if (dsp) {
        #pragma omp simd
        for (int64_t j = 0; j < bd; j++) dsp[j] = r[j] > T(20) ? T(1) : sigmoid(r[j]);
    }
}

// out = (y + D u) * silu(z), the D skip and the z gate, for one row of a channel block; y becomes y + D u
template <typename T>
static inline void gate(int64_t bd, T* y, const T* u, const T* D, const T* z, T* out) {
    if (D) for (int64_t j = 0; j < bd; j++) y[j] += D[j] * u[j];
    if (!z) {
        for (int64_t j = 0; j < bd; j++) out[j] = y[j];
        return;
    }
    #pragma omp simd
    for (int64_t j = 0; j < bd; j++) out[j] = y[j] * z[j] * sigmoid(z[j]);
}

// the forward: out = (sum_n C h + D u) * silu(z). At: (n, d). B, C: (b, l, n). states: (b, chunks, n, d),
// the state entering each chunk. last: (b, n, d). out: (b, l, d) contiguous.
template <typename T>
static void forward(Dims m, Rows<const T> u, Rows<const T> delta, Rows<const T> z, const T* At, const T* B,
                    const T* C, const T* D, const T* bias, T* out, T* states, T* last) {
    const int64_t Dn = m.d, N = m.n, L = m.l, chunks = (L + K - 1) / K;
    for_each_row(m, [&](int64_t b) {
        for (int64_t d0 = 0; d0 < Dn; d0 += BD) {
            const int64_t bd = std::min(BD, Dn - d0);
            T h[MAXN][BD] = {};
            for (int64_t t = 0; t < L; t++) {
                if (t % K == 0) {  // where the backward restarts
                    for (int64_t n = 0; n < N; n++)
                        std::memcpy(states + ((b * chunks + t / K) * N + n) * Dn + d0, h[n], bd * sizeof(T));
                }
                const T* ut = u.at(b, t) + d0;
                const T* Bt = B + (b * L + t) * N;
                const T* Ct = C + (b * L + t) * N;
                T dt[BD];
                T x[BD];
                T y[BD] = {};
                time_step(m, delta.at(b, t) + d0, bias ? bias + d0 : nullptr, bd, dt,
                          static_cast<T*>(nullptr));
                for (int64_t j = 0; j < bd; j++) x[j] = dt[j] * ut[j];
                lanes(bd, [&](auto width) {
                    for (int64_t n = 0; n < N; n++) {
                        const T* An = At + n * Dn + d0;
                        T* hn = h[n];
                        #pragma omp simd
                        for (int64_t j = 0; j < width; j++) {
                            // h[t] = a[t] h[t-1] + x[t]
                            hn[j] = fast_exp(dt[j] * An[j]) * hn[j] + x[j] * Bt[n];
                            // y[t] = sum_n C[n,t] h[t]
                            y[j] += Ct[n] * hn[j];
                        }
                    }
                });
                gate(bd, y, ut, D ? D + d0 : nullptr, z.p ? z.at(b, t) + d0 : nullptr,
                     out + (b * L + t) * Dn + d0);
            }
            for (int64_t n = 0; n < N; n++) std::memcpy(last + (b * N + n) * Dn + d0, h[n], bd * sizeof(T));
        }
    });
}

// the backward (the derivation is in ssm_scan.py). g, du, ddelta, dz: (b, l, d). parts: (b, n + 2, d)
// per-row partials of dA | dD | dbias. dB, dC: (b, l, n), zeroed by the caller.
template <typename T>
static void backward(Dims m, Rows<const T> u, Rows<const T> delta, Rows<const T> z, Rows<const T> g,
                     const T* At, const T* B, const T* C, const T* D, const T* bias, const T* states, T* du,
                     T* ddelta, T* dz, T* parts, T* dB, T* dC) {
    const int64_t Dn = m.d, N = m.n, L = m.l, chunks = (L + K - 1) / K;
    for_each_row(m, [&](int64_t b) {
        // one chunk's recomputed states, decays, dt, dsp
        std::vector<T> window(2 * K * MAXN * BD + 2 * K * BD);
        auto hs = reinterpret_cast<T (*)[MAXN][BD]>(window.data());
        auto as = reinterpret_cast<T (*)[MAXN][BD]>(window.data() + K * MAXN * BD);
        auto dts = reinterpret_cast<T (*)[BD]>(window.data() + 2 * K * MAXN * BD);
        auto dsps = reinterpret_cast<T (*)[BD]>(window.data() + 2 * K * MAXN * BD + K * BD);
        T* part = parts + b * (N + 2) * Dn;
        for (int64_t d0 = 0; d0 < Dn; d0 += BD) {
            const int64_t bd = std::min(BD, Dn - d0);
            T dh_next[MAXN][BD] = {};  // a[t+1] dh[t+1], flowing in from the right
            T dA[MAXN][BD] = {};
            T dD[BD] = {};
            T dbias[BD] = {};
            for (int64_t c = chunks - 1; c >= 0; c--) {
                const int64_t s = c * K, e = std::min(s + K, L);
                for (int64_t t = s; t < e; t++) {  // re-run the chunk's forward from its saved state
                    const T* ut = u.at(b, t) + d0;
                    const T* Bt = B + (b * L + t) * N;
                    T* dt = dts[t - s];
                    time_step(m, delta.at(b, t) + d0, bias ? bias + d0 : nullptr, bd, dt, dsps[t - s]);
                    lanes(bd, [&](auto width) {
                        for (int64_t n = 0; n < N; n++) {
                            const T* An = At + n * Dn + d0;
                            const T* hp = t == s ? states + ((b * chunks + c) * N + n) * Dn + d0
                                                 : hs[t - s - 1][n];
                            T* ht = hs[t - s][n];
                            T* at = as[t - s][n];
                            #pragma omp simd
                            for (int64_t j = 0; j < width; j++) {
                                at[j] = fast_exp(dt[j] * An[j]);
                                ht[j] = at[j] * hp[j] + dt[j] * ut[j] * Bt[n];
                            }
                        }
                    });
                }
                for (int64_t t = e - 1; t >= s; t--) {  // the adjoint, right to left
                    const T* ut = u.at(b, t) + d0;
                    const T* gt = g.at(b, t) + d0;
                    const T* zt = z.p ? z.at(b, t) + d0 : nullptr;
                    const T* dt = dts[t - s];
                    const T* Bt = B + (b * L + t) * N;
                    const T* Ct = C + (b * L + t) * N;
                    T x[BD];
                    T ybar[BD];  // dloss/dy
                    T y[BD] = {};    // recomputed, for dz
                    T dhB[BD] = {};  // sum_n dh B
                    T qA[BD] = {};   // sum_n dh (h - x) A
                    T sz[BD];  // sigmoid(z)
                    for (int64_t j = 0; j < bd; j++) x[j] = dt[j] * ut[j];
                    if (zt) {
                        #pragma omp simd
                        for (int64_t j = 0; j < bd; j++) sz[j] = sigmoid(zt[j]);
                        for (int64_t j = 0; j < bd; j++) ybar[j] = gt[j] * zt[j] * sz[j];
                    } else {
                        for (int64_t j = 0; j < bd; j++) ybar[j] = gt[j];
                    }
                    lanes(bd, [&](auto width) {
                    for (int64_t n = 0; n < N; n++) {
                        const T* An = At + n * Dn + d0;
                        const T* ht = hs[t - s][n];
                        const T* at = as[t - s][n];
                        T* dhn = dh_next[n];
                        T* dAn = dA[n];
                        T sum_dB = 0;
                        T sum_dC = 0;
                        #pragma omp simd reduction(+:sum_dB, sum_dC)
                        for (int64_t j = 0; j < width; j++) {
                            const T dh = ybar[j] * Ct[n] + dhn[j];
                            // dh[t] a[t] h[t-1], as dh (h[t] - x[t])
                            const T q = dh * (ht[j] - x[j] * Bt[n]);
                            y[j] += Ct[n] * ht[j];
                            sum_dC += ybar[j] * ht[j];
                            sum_dB += dh * x[j];
                            dhB[j] += dh * Bt[n];
                            qA[j] += q * An[j];
                            dAn[j] += q * dt[j];
                            dhn[j] = at[j] * dh;
                        }
                        // channel blocks in order: one writer, fixed order
                        dB[(b * L + t) * N + n] += sum_dB;
                        dC[(b * L + t) * N + n] += sum_dC;
                    }
                    });
                    const int64_t o = (b * L + t) * Dn + d0;
                    const T* dsp = dsps[t - s];
                    for (int64_t j = 0; j < bd; j++) {
                        const T dd = (ut[j] * dhB[j] + qA[j]) * dsp[j];
                        du[o + j] = dt[j] * dhB[j];
                        ddelta[o + j] = dd;
                        dbias[j] += dd;
                        dD[j] += ybar[j] * ut[j];
                    }
                    if (D) {
                        for (int64_t j = 0; j < bd; j++) {
                            du[o + j] += D[d0 + j] * ybar[j];
                            y[j] += D[d0 + j] * ut[j];
                        }
                    }
                    if (zt) {
                        for (int64_t j = 0; j < bd; j++)
                            dz[o + j] = gt[j] * y[j] * sz[j] * (T(1) + zt[j] * (T(1) - sz[j]));
                    }
                }
            }
            for (int64_t n = 0; n < N; n++) std::memcpy(part + n * Dn + d0, dA[n], bd * sizeof(T));
            std::memcpy(part + N * Dn + d0, dD, bd * sizeof(T));
            std::memcpy(part + (N + 1) * Dn + d0, dbias, bd * sizeof(T));
        }
    });
}

// out = the sum over rows of parts (rows, size), row 0 first: a fixed order whatever the thread count
template <typename T>
static void sum_rows(int64_t rows, int64_t size, const T* parts, T* out) {
    for (int64_t i = 0; i < size; i++) out[i] = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < size; i++) out[i] += parts[r * size + i];
}

#define ENTRY_POINTS(T, SUFFIX)                                                                         \
    extern "C" void forward_##SUFFIX(Dims m, Rows<const T> u, Rows<const T> delta, Rows<const T> z,     \
                                     const T* At, const T* B, const T* C, const T* D, const T* bias,    \
                                     T* out, T* states, T* last) {                                      \
        forward<T>(m, u, delta, z, At, B, C, D, bias, out, states, last);                               \
    }                                                                                                   \
    extern "C" void backward_##SUFFIX(Dims m, Rows<const T> u, Rows<const T> delta, Rows<const T> z,    \
                                      Rows<const T> g, const T* At, const T* B, const T* C, const T* D, \
                                      const T* bias, const T* states, T* du, T* ddelta, T* dz,          \
                                      T* parts, T* dB, T* dC) {                                         \
        backward<T>(m, u, delta, z, g, At, B, C, D, bias, states, du, ddelta, dz, parts, dB, dC);       \
    }                                                                                                   \
    extern "C" void sum_rows_##SUFFIX(int64_t rows, int64_t size, const T* parts, T* out) {             \
        sum_rows<T>(rows, size, parts, out);                                                            \
    }
ENTRY_POINTS(float, f32)
ENTRY_POINTS(double, f64)
