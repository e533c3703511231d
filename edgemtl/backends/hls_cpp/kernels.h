/* edgemtl HLS kernels (Vitis HLS C++): the integer graph's ops (edgemtl.model.intgraph), bit-exact with its
 * reference executor and with the portable C kernels (edgemtl/backends/c), for Xilinx FPGAs.
 *
 * Every size is a template parameter, so every loop has a static trip count HLS can schedule (a loop whose
 * count depends on data, such as an expert's routed tokens, carries a LOOP_TRIPCOUNT for the reports).
 * Activations are ap_int<8> / ap_uint<8> arrays in CHW (or token-major) order; a kernel takes its input and
 * output element types from its array arguments (X_T, Y_T), so one template serves every signedness.
 * Weights, mul / add and tables are plain int8_t / int32_t arrays (the generator's weights header; plain C
 * initialisers compile in a fraction of the time ap_int ones take). Widths of accumulators and of the
 * requantisation product are template parameters the generator derives from the worst case of every node
 * (intgraph.worst_case_accumulator): exact by construction, and only as wide as the data needs.
 *
 * Requantisation (intgraph.requantize): y = clip((acc * mul + add + 2^(shift - 1)) >> shift, lo, hi), >> floor
 * (arithmetic on ap_int), no rounding term when shift == 0, [lo, hi] from the output type.
 * Pragmas are for Vitis HLS; g++ ignores them (the C simulation builds with -Wno-unknown-pragmas).
 * Define EMH_MOE_TRACE in a C simulation to log the mixture-of-experts schedule (loads, computes) to stderr.
 */
#ifndef EDGEMTL_HLS_KERNELS_H
#define EDGEMTL_HLS_KERNELS_H

#include <stdint.h>

#include "ap_int.h"

#if defined(EMH_MOE_TRACE) && !defined(__SYNTHESIS__)
#include <cstdio>
#define EMH_TRACE(...) std::fprintf(stderr, __VA_ARGS__)
#else
#define EMH_TRACE(...) ((void)0)
#endif

/* Define EMH_CYCLES in a C simulation to count the iterations of every pipelined loop (II = 1: one cycle each at
 * best); the test bench prints the count per sample. Loop entry, pipeline fill and the unpipelined control loops
 * are not counted, and loads the ping-pong buffers would overlap are counted in full. */
#if defined(EMH_CYCLES) && !defined(__SYNTHESIS__)
namespace emh {
static unsigned long long pipelined_iterations = 0;
}
#define EMH_TICK() (++emh::pipelined_iterations)
#else
#define EMH_TICK() ((void)0)
#endif

namespace emh {

typedef ap_int<8> s8_t;
typedef ap_uint<8> u8_t;

/* The clip range of an output type. */
template <typename T>
struct limits;
template <>
struct limits<ap_int<8> > {
    enum { lo = -128, hi = 127 };
};
template <>
struct limits<ap_uint<8> > {
    enum { lo = 0, hi = 255 };
};

/* Bits of an unsigned index that holds 0 .. n - 1. */
constexpr int index_bits(int n) { return n <= 2 ? 1 : 1 + index_bits((n + 1) / 2); }

/* The fused requantisation. RQ_W holds |acc * mul + add + 2^(shift - 1)| for every input (the generator's bound). */
template <int RQ_W, typename Y_T, typename ACC_T>
inline Y_T rq(const ACC_T &acc, int32_t mul, int32_t add, int shift) {
#pragma HLS INLINE
    ap_int<RQ_W> v = acc * ap_int<32>(mul) + ap_int<32>(add);
    if (shift > 0) {
        v += ap_int<RQ_W>(1) << (shift - 1);
        v >>= shift;
    }
    if (v < limits<Y_T>::lo) {
        return Y_T(limits<Y_T>::lo);
    }
    if (v > limits<Y_T>::hi) {
        return Y_T(limits<Y_T>::hi);
    }
    return Y_T(v);
}

/* An input value's table index: the tables list outputs for the inputs lo .. hi. */
template <typename X_T>
inline int table_index(const X_T &x) {
#pragma HLS INLINE
    return x.to_int() - limits<X_T>::lo;
}

/* -- data movement -------------------------------------------------------------------------------------------- */
template <int N, typename X_T, typename Y_T>
void copy(const X_T x[N], Y_T y[N]) {
COPY:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        y[i] = x[i];
    }
}

/* One input of a channel concat: its N values at OFFSET of the TOTAL-value output. */
template <int N, int OFFSET, int TOTAL, typename T>
void copy_to(const T x[N], T y[TOTAL]) {
COPY_TO:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        y[OFFSET + i] = x[i];
    }
}

/* x viewed as (OUTER, N, INNER): rows START .. STOP - 1 of the middle axis. */
template <int OUTER, int N, int INNER, int START, int STOP, typename T>
void slice(const T x[OUTER * N * INNER], T y[OUTER * (STOP - START) * INNER]) {
SLICE_O:
    for (int o = 0; o < OUTER; o++) {
    SLICE_I:
        for (int i = 0; i < (STOP - START) * INNER; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            y[o * (STOP - START) * INNER + i] = x[(o * N + START) * INNER + i];
        }
    }
}

/* x viewed as D0 x .. x D7 (leading axes of 1 pad smaller ranks), axes permuted: output axis a is input axis Pa.
 * One pass over the output in row-major order with an odometer of output indices. */
template <int D0, int D1, int D2, int D3, int D4, int D5, int D6, int D7, int P0, int P1, int P2, int P3, int P4,
          int P5, int P6, int P7, typename T>
void transpose(const T x[D0 * D1 * D2 * D3 * D4 * D5 * D6 * D7], T y[D0 * D1 * D2 * D3 * D4 * D5 * D6 * D7]) {
    const int N = D0 * D1 * D2 * D3 * D4 * D5 * D6 * D7;
    const int dims[8] = {D0, D1, D2, D3, D4, D5, D6, D7};
    const int perm[8] = {P0, P1, P2, P3, P4, P5, P6, P7};
    int stride[8], out_dims[8], out_stride[8], index[8];
#pragma HLS ARRAY_PARTITION variable = index complete
    stride[7] = 1;
    for (int a = 6; a >= 0; a--) {
        stride[a] = stride[a + 1] * dims[a + 1];
    }
    for (int a = 0; a < 8; a++) {
        out_dims[a] = dims[perm[a]];
        out_stride[a] = stride[perm[a]];   /* the input stride of output axis a */
        index[a] = 0;
    }
TRANSPOSE:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        int offset = 0;
        for (int a = 0; a < 8; a++) {
            offset += index[a] * out_stride[a];
        }
        y[i] = x[offset];
        bool carry = true;   /* the next output index, row-major */
        for (int a = 7; a >= 0; a--) {
            if (carry) {
                index[a] = index[a] + 1 == out_dims[a] ? 0 : index[a] + 1;
                carry = index[a] == 0;
            }
        }
    }
}

template <int C, int H, int W, int F, typename T>
void resize_nearest(const T x[C * H * W], T y[C * H * F * W * F]) {
NEAREST_C:
    for (int c = 0; c < C; c++) {
    NEAREST_Y:
        for (int oy = 0; oy < H * F; oy++) {
        NEAREST_X:
            for (int ox = 0; ox < W * F; ox++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                y[(c * H * F + oy) * W * F + ox] = x[(c * H + oy / F) * W + ox / F];
            }
        }
    }
}

/* Padding never wins: the max of the window's pixels inside the image (the generator checks pads < kernel, so a
 * window always holds one; starting from the type's lowest value is then exact). */
template <int C, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PT, int PL, typename T>
void maxpool(const T x[C * H * W], T y[C * OH * OW]) {
MAXPOOL_C:
    for (int c = 0; c < C; c++) {
    MAXPOOL_Y:
        for (int oy = 0; oy < OH; oy++) {
        MAXPOOL_X:
            for (int ox = 0; ox < OW; ox++) {
                T best = T(limits<T>::lo);
            MAXPOOL_KY:
                for (int ky = 0; ky < KH; ky++) {
                MAXPOOL_KX:
                    for (int kx = 0; kx < KW; kx++) {
#pragma HLS PIPELINE II = 1
                        EMH_TICK();
                        const int iy = oy * SH - PT + ky, ix = ox * SW - PL + kx;
                        if (iy >= 0 && iy < H && ix >= 0 && ix < W && x[(c * H + iy) * W + ix] > best) {
                            best = x[(c * H + iy) * W + ix];
                        }
                    }
                }
                y[(c * OH + oy) * OW + ox] = best;
            }
        }
    }
}

/* An elementwise function as a table over every input value: C tables of 256 (one for all when C == 1), each for
 * N values. */
template <int C, int N, int TABLES, typename X_T, typename TB_T, typename Y_T>
void lut(const X_T x[C * N], const TB_T table[TABLES * 256], Y_T y[C * N]) {
LUT_C:
    for (int c = 0; c < C; c++) {
    LUT_I:
        for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            y[c * N + i] = Y_T(table[(TABLES == 1 ? 0 : c) * 256 + table_index(x[c * N + i])]);
        }
    }
}

/* -- compute: ACC_W the accumulator's bits, RQ_W the requantisation's, SHIFT its shift -------------------------- */

/* Grouped convolution (depthwise when G == C), zero padding: weights (K, C / G, KH, KW). */
template <int C, int H, int W, int K, int OH, int OW, int KH, int KW, int SH, int SW, int PT, int PL, int G, int ACC_W,
          int RQ_W, int SHIFT, typename X_T, typename Y_T>
void conv(const X_T x[C * H * W], const int8_t w[K * (C / G) * KH * KW], const int32_t mul[K], const int32_t add[K],
          Y_T y[K * OH * OW]) {
    const int CG = C / G, KPG = K / G;
CONV_K:
    for (int k = 0; k < K; k++) {
    CONV_Y:
        for (int oy = 0; oy < OH; oy++) {
        CONV_X:
            for (int ox = 0; ox < OW; ox++) {
                ap_int<ACC_W> acc = 0;
            CONV_C:
                for (int ch = 0; ch < CG; ch++) {
                CONV_KY:
                    for (int ky = 0; ky < KH; ky++) {
                    CONV_KX:
                        for (int kx = 0; kx < KW; kx++) {
#pragma HLS PIPELINE II = 1
                            EMH_TICK();
                            const int iy = oy * SH - PT + ky, ix = ox * SW - PL + kx;
                            if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                                const ap_int<8> weight = w[((k * CG + ch) * KH + ky) * KW + kx];
                                acc += x[((k / KPG * CG + ch) * H + iy) * W + ix] * weight;
                            }
                        }
                    }
                }
                y[(k * OH + oy) * OW + ox] = rq<RQ_W, Y_T>(acc, mul[k], add[k], SHIFT);
            }
        }
    }
}

/* Transposed convolution with kernel == stride, no padding: input pixel (i, j) alone makes the output block at
 * (i * KH, j * KW); weights (K, C, KH, KW). */
template <int C, int H, int W, int K, int KH, int KW, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void conv_transpose(const X_T x[C * H * W], const int8_t w[K * C * KH * KW], const int32_t mul[K], const int32_t add[K],
                    Y_T y[K * H * KH * W * KW]) {
CONVT_K:
    for (int k = 0; k < K; k++) {
    CONVT_Y:
        for (int oy = 0; oy < H * KH; oy++) {
        CONVT_X:
            for (int ox = 0; ox < W * KW; ox++) {
                const int iy = oy / KH, a = oy % KH, ix = ox / KW, b = ox % KW;
                ap_int<ACC_W> acc = 0;
            CONVT_C:
                for (int c = 0; c < C; c++) {
#pragma HLS PIPELINE II = 1
                    EMH_TICK();
                    acc += x[(c * H + iy) * W + ix] * ap_int<8>(w[((k * C + c) * KH + a) * KW + b]);
                }
                y[(k * H * KH + oy) * W * KW + ox] = rq<RQ_W, Y_T>(acc, mul[k], add[k], SHIFT);
            }
        }
    }
}

/* ROWS rows (1 for a vector) of C values -> ROWS rows of K; mul / add per output feature. */
template <int ROWS, int C, int K, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void gemm(const X_T x[ROWS * C], const int8_t w[K * C], const int32_t mul[K], const int32_t add[K], Y_T y[ROWS * K]) {
GEMM_R:
    for (int r = 0; r < ROWS; r++) {
    GEMM_K:
        for (int k = 0; k < K; k++) {
            ap_int<ACC_W> acc = 0;
        GEMM_C:
            for (int c = 0; c < C; c++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                acc += x[r * C + c] * ap_int<8>(w[k * C + c]);
            }
            y[r * K + k] = rq<RQ_W, Y_T>(acc, mul[k], add[k], SHIFT);
        }
    }
}

/* acc = a * mul_a + b * mul_b, requantised per channel (mul is 1 there; the scales live in mul_a / mul_b). The
 * multipliers are arguments, not template parameters, so that one call serves tasks whose scales differ (a one-task
 * design passes constants, which HLS propagates). */
template <int C, int HW, int ACC_W, int RQ_W, int SHIFT, typename A_T, typename B_T, typename Y_T>
void add(const A_T a[C * HW], const B_T b[C * HW], int32_t mul_a, int32_t mul_b, const int32_t mul[C],
         const int32_t add[C], Y_T y[C * HW]) {
ADD_C:
    for (int c = 0; c < C; c++) {
    ADD_I:
        for (int i = 0; i < HW; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            const ap_int<ACC_W> acc = a[c * HW + i] * ap_int<32>(mul_a) + b[c * HW + i] * ap_int<32>(mul_b);
            y[c * HW + i] = rq<RQ_W, Y_T>(acc, mul[c], add[c], SHIFT);
        }
    }
}

template <int C, int HW, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void requant(const X_T x[C * HW], const int32_t mul[C], const int32_t add[C], Y_T y[C * HW]) {
REQUANT_C:
    for (int c = 0; c < C; c++) {
    REQUANT_I:
        for (int i = 0; i < HW; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            y[c * HW + i] = rq<RQ_W, Y_T>(ap_int<ACC_W>(x[c * HW + i]), mul[c], add[c], SHIFT);
        }
    }
}

template <int C, int HW, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void avgpool_global(const X_T x[C * HW], const int32_t mul[C], const int32_t add[C], Y_T y[C]) {
GAP_C:
    for (int c = 0; c < C; c++) {
        ap_int<ACC_W> acc = 0;
    GAP_I:
        for (int i = 0; i < HW; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            acc += x[c * HW + i];
        }
        y[c] = rq<RQ_W, Y_T>(acc, mul[c], add[c], SHIFT);
    }
}

/* Window sums with zero padding (the divisor, KH * KW, lives in mul / shift). */
template <int C, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PT, int PL, int ACC_W, int RQ_W,
          int SHIFT, typename X_T, typename Y_T>
void avgpool(const X_T x[C * H * W], const int32_t mul[C], const int32_t add[C], Y_T y[C * OH * OW]) {
AVGPOOL_C:
    for (int c = 0; c < C; c++) {
    AVGPOOL_Y:
        for (int oy = 0; oy < OH; oy++) {
        AVGPOOL_X:
            for (int ox = 0; ox < OW; ox++) {
                ap_int<ACC_W> acc = 0;
            AVGPOOL_KY:
                for (int ky = 0; ky < KH; ky++) {
                AVGPOOL_KX:
                    for (int kx = 0; kx < KW; kx++) {
#pragma HLS PIPELINE II = 1
                        EMH_TICK();
                        const int iy = oy * SH - PT + ky, ix = ox * SW - PL + kx;
                        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                            acc += x[(c * H + iy) * W + ix];
                        }
                    }
                }
                y[(c * OH + oy) * OW + ox] = rq<RQ_W, Y_T>(acc, mul[c], add[c], SHIFT);
            }
        }
    }
}

/* PyTorch's align_corners=False bilinear x F in integers (intgraph.bilinear_taps): output d reads source rows
 * i0 and i1 = min(i0 + 1, n - 1) with weights (2F - frac, frac), where i0 * 2F + frac = max(2d + 1 - F, 0). */
template <int C, int H, int W, int F, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void resize_bilinear(const X_T x[C * H * W], const int32_t mul[C], const int32_t add[C], Y_T y[C * H * F * W * F]) {
BILINEAR_C:
    for (int c = 0; c < C; c++) {
    BILINEAR_Y:
        for (int oy = 0; oy < H * F; oy++) {
            const int ny = 2 * oy + 1 - F > 0 ? 2 * oy + 1 - F : 0;
            const int y0 = ny / (2 * F), fy = ny % (2 * F), y1 = y0 + 1 < H ? y0 + 1 : H - 1;
        BILINEAR_X:
            for (int ox = 0; ox < W * F; ox++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                const int nx = 2 * ox + 1 - F > 0 ? 2 * ox + 1 - F : 0;
                const int x0 = nx / (2 * F), fx = nx % (2 * F), x1 = x0 + 1 < W ? x0 + 1 : W - 1;
                const ap_int<ACC_W> left = (2 * F - fy) * x[(c * H + y0) * W + x0] + fy * x[(c * H + y1) * W + x0];
                const ap_int<ACC_W> right = (2 * F - fy) * x[(c * H + y0) * W + x1] + fy * x[(c * H + y1) * W + x1];
                const ap_int<ACC_W> acc = (2 * F - fx) * left + fx * right;
                y[(c * H * F + oy) * W * F + ox] = rq<RQ_W, Y_T>(acc, mul[c], add[c], SHIFT);
            }
        }
    }
}

/* Mean over the middle axis of x viewed as (OUTER, N, INNER): sums, one requantisation for the tensor. */
template <int OUTER, int N, int INNER, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void reduce_mean(const X_T x[OUTER * N * INNER], const int32_t mul[1], const int32_t add[1], Y_T y[OUTER * INNER]) {
REDUCE_O:
    for (int o = 0; o < OUTER; o++) {
    REDUCE_J:
        for (int j = 0; j < INNER; j++) {
            ap_int<ACC_W> acc = 0;
        REDUCE_I:
            for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                acc += x[(o * N + i) * INNER + j];
            }
            y[o * INNER + j] = rq<RQ_W, Y_T>(acc, mul[0], add[0], SHIFT);
        }
    }
}

/* acc = x * MUL_A + constant[i] (one constant per element), one requantisation for the tensor. */
template <int N, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void add_const(const X_T x[N], int32_t mul_a, const int32_t constant[N], const int32_t mul[1], const int32_t add[1],
               Y_T y[N]) {
ADD_CONST:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        const ap_int<ACC_W> acc = x[i] * ap_int<32>(mul_a) + ap_int<32>(constant[i]);
        y[i] = rq<RQ_W, Y_T>(acc, mul[0], add[0], SHIFT);
    }
}

/* a (BATCH, M, KD) @ b (BATCH, KD, N), both activations of any signedness, one requantisation for the tensor. */
template <int BATCH, int M, int KD, int N, int ACC_W, int RQ_W, int SHIFT, typename A_T, typename B_T, typename Y_T>
void matmul(const A_T a[BATCH * M * KD], const B_T b[BATCH * KD * N], const int32_t mul[1], const int32_t add[1],
            Y_T y[BATCH * M * N]) {
MATMUL_B:
    for (int t = 0; t < BATCH; t++) {
    MATMUL_I:
        for (int i = 0; i < M; i++) {
        MATMUL_J:
            for (int j = 0; j < N; j++) {
                ap_int<ACC_W> acc = 0;
            MATMUL_L:
                for (int l = 0; l < KD; l++) {
#pragma HLS PIPELINE II = 1
                    EMH_TICK();
                    acc += a[(t * M + i) * KD + l] * b[(t * KD + l) * N + j];
                }
                y[(t * M + i) * N + j] = rq<RQ_W, Y_T>(acc, mul[0], add[0], SHIFT);
            }
        }
    }
}

/* The integer softmax of n values (intgraph.softmax): e = table[max - x] (0 <= e <= 2^16, checked by the
 * generator), m = (p << 16) / sum e, y = min((e * m + 2^31) >> 32, 255). Widths: sum <= n 2^16, m <= p 2^16 < 2^56,
 * e * m <= p 2^16 (as e <= sum e). p is an argument: one call serves tasks whose output scales differ. */
inline ap_uint<56> softmax_scale(long long p, const ap_uint<48> &sum) {
#pragma HLS INLINE
    return ap_uint<56>(ap_uint<56>(p) << 16) / sum;
}

inline u8_t softmax_value(const ap_uint<17> &e, const ap_uint<56> &m) {
#pragma HLS INLINE
    const ap_uint<57> v = (ap_uint<57>(e * m) + (ap_uint<57>(1) << 31)) >> 32;
    return v > 255 ? u8_t(255) : u8_t(v);
}

/* Along the middle axis of x viewed as (OUTER, N, INNER); uint8 probabilities. */
template <int OUTER, int N, int INNER, typename X_T>
void softmax(const X_T x[OUTER * N * INNER], const int32_t exp_table[256], long long p, u8_t y[OUTER * N * INNER]) {
SOFTMAX_O:
    for (int o = 0; o < OUTER; o++) {
    SOFTMAX_J:
        for (int j = 0; j < INNER; j++) {
            const int base = o * N * INNER + j;
            X_T top = x[base];
        SOFTMAX_MAX:
            for (int i = 1; i < N; i++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                top = x[base + i * INNER] > top ? x[base + i * INNER] : top;
            }
            ap_uint<48> sum = 0;
        SOFTMAX_SUM:
            for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                sum += ap_uint<17>(exp_table[(top - x[base + i * INNER]).to_int()]);
            }
            const ap_uint<56> m = softmax_scale(p, sum);
        SOFTMAX_OUT:
            for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                y[base + i * INNER] = softmax_value(ap_uint<17>(exp_table[(top - x[base + i * INNER]).to_int()]), m);
            }
        }
    }
}

/* floor(sqrt(v)), digit by digit in a fixed 32 steps (the C kernel's loop with its data-dependent start unrolled
 * away: while bit > v the step leaves root at 0). */
inline ap_uint<32> isqrt64(ap_uint<64> v) {
    ap_uint<64> root = 0, bit = ap_uint<64>(1) << 62;
ISQRT:
    for (int i = 0; i < 32; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        if (v >= root + bit) {
            v -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return ap_uint<32>(root);
}

/* Layer normalisation over the last axis (D <= 4096 features) of ROWS rows, exact (intgraph.layernorm_z):
 * c = D x - sum x (|c| < 2^22), S = sum c^2 + eps (< 2^55 with eps < 2^40; an argument: one call serves tasks whose input scales differ), m = (62 - bits(S)) / 2,
 * inv = 2^62 / isqrt(S << 2m) (<= 2^32), z = (c * inv + 2^(45 - m)) >> (46 - m) (|z| <= 2^16 < 2^(ACC_W - 1)),
 * then the per-feature requantisation of z. */
template <int ROWS, int D, int ACC_W, int RQ_W, int SHIFT, typename X_T, typename Y_T>
void layernorm(const X_T x[ROWS * D], long long eps, const int32_t mul[D], const int32_t add[D], Y_T y[ROWS * D]) {
LAYERNORM_R:
    for (int r = 0; r < ROWS; r++) {
        ap_int<24> sum = 0;
    LAYERNORM_SUM:
        for (int i = 0; i < D; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            sum += x[r * D + i];
        }
        ap_uint<64> total = eps;
    LAYERNORM_VAR:
        for (int i = 0; i < D; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            const ap_int<24> c = D * x[r * D + i] - sum;
            total += ap_uint<48>(c * c);
        }
        int bits = 0;
    LAYERNORM_BITS:
        for (int b = 0; b < 63; b++) {
            if ((total >> b) != 0) {
                bits = b + 1;
            }
        }
        const int m = (62 - bits) / 2, shift = 46 - m;
        const ap_uint<33> inv = (ap_uint<64>(1) << 62) / isqrt64(total << (2 * m));
    LAYERNORM_OUT:
        for (int i = 0; i < D; i++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            const ap_int<24> c = D * x[r * D + i] - sum;
            const ap_int<58> scaled = c * inv + (ap_int<58>(1) << (shift - 1));
            const ap_int<ACC_W> z = scaled >> shift;
            y[r * D + i] = rq<RQ_W, Y_T>(z, mul[i], add[i], SHIFT);
        }
    }
}

/* -- mixture of experts, expert-major (M3ViT's order) ---------------------------------------------------------- */

/* One expert's weights on chip: fc1 (H, D), fc2 (D, H) int8, their per-feature requantisation, their shifts. */
template <int D, int H>
struct expert_buffer {
    int8_t fc1[H * D];
    int32_t fc1_mul[H], fc1_add[H];
    int8_t fc2[D * H];
    int32_t fc2_mul[D], fc2_add[D];
    int fc1_shift, fc2_shift;
};

/* Copies expert e's weights (row `row` of the weight tables) and its requantisation (entry e of this path's tables)
 * into an on-chip buffer: sequential, burst-friendly reads. In a DDR design those arrays sit behind an m_axi port;
 * the generated top passes its weight ROMs (its interface carries only the input and output), so the buffers model
 * the schedule and the on-chip working set. */
template <int D, int H, int E, int ROWS>
void moe_load(int e, int row, int slot, const int8_t fc1[ROWS * H * D], const int32_t fc1_mul[E * H],
              const int32_t fc1_add[E * H], const int32_t fc1_shift[E], const int8_t fc2[ROWS * D * H],
              const int32_t fc2_mul[E * D], const int32_t fc2_add[E * D], const int32_t fc2_shift[E],
              expert_buffer<D, H> &buf) {
    (void)slot;   /* names the buffer in EMH_MOE_TRACE's log only */
    EMH_TRACE("moe load %d %d\n", e, slot);
MOE_LOAD_FC1:
    for (int i = 0; i < H * D; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        buf.fc1[i] = fc1[row * H * D + i];
    }
MOE_LOAD_FC2:
    for (int i = 0; i < D * H; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        buf.fc2[i] = fc2[row * D * H + i];
    }
MOE_LOAD_RQ1:
    for (int i = 0; i < H; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        buf.fc1_mul[i] = fc1_mul[e * H + i];
        buf.fc1_add[i] = fc1_add[e * H + i];
    }
MOE_LOAD_RQ2:
    for (int i = 0; i < D; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        buf.fc2_mul[i] = fc2_mul[e * D + i];
        buf.fc2_add[i] = fc2_add[e * D + i];
    }
    buf.fc1_shift = fc1_shift[e];
    buf.fc2_shift = fc2_shift[e];
}

/* Routing, token by token, over the path's `experts` experts (expert e's router row: row ids[e] of `router`): int8
 * logits = requant(x @ router^T); the `top_k` largest (ties: the lower expert index, a strict > scanning upwards);
 * their softmax as uint8 gates. Then the gather: per expert, the ascending list of the tokens routed to it and their
 * gates (each token at most once per expert: its k experts differ). */
template <int T, int D, int E, int ROWS, int TOP_K, int ROUTER_SHIFT, long long P, int R_ACC_W, int R_RQ_W>
void moe_route(const s8_t x[T * D], int experts, int top_k, const int32_t ids[E], const int8_t router[ROWS * D],
               const int32_t router_mul[E], const int32_t router_add[E], const int32_t exp_table[256],
               ap_uint<index_bits(T)> tokens[E][T], u8_t token_gates[E][T], ap_uint<index_bits(T + 1)> count[E]) {
    s8_t logits[E];
    bool taken[E];
    ap_uint<8> chosen[TOP_K];
#pragma HLS ARRAY_PARTITION variable = taken complete
MOE_COUNT_ZERO:
    for (int e = 0; e < E; e++) {
        count[e] = 0;
    }
MOE_ROUTE_T:
    for (int t = 0; t < T; t++) {
    MOE_LOGITS:
        for (int e = 0; e < experts; e++) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = E
            ap_int<R_ACC_W> acc = 0;
            const int row = ids[e];
        MOE_LOGITS_D:
            for (int i = 0; i < D; i++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                acc += x[t * D + i] * ap_int<8>(router[row * D + i]);
            }
            logits[e] = rq<R_RQ_W, s8_t>(acc, router_mul[e], router_add[e], ROUTER_SHIFT);
            taken[e] = false;
        }
    MOE_TOPK:
        for (int j = 0; j < top_k; j++) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = TOP_K
            int best = -1;
        MOE_TOPK_E:
            for (int e = 0; e < experts; e++) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = E
                if (!taken[e] && (best < 0 || logits[e] > logits[best])) {
                    best = e;
                }
            }
            taken[best] = true;
            chosen[j] = best;
        }
        ap_uint<48> sum = 0;   /* the gates: the softmax of the k logits, chosen[0] holds the largest */
    MOE_GATE_SUM:
        for (int j = 0; j < top_k; j++) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = TOP_K
            sum += ap_uint<17>(exp_table[(logits[chosen[0]] - logits[chosen[j]]).to_int()]);
        }
        const ap_uint<56> m = softmax_scale(P, sum);
    MOE_GATHER:
        for (int j = 0; j < top_k; j++) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = TOP_K
            const int e = chosen[j];
            tokens[e][count[e]] = t;
            const ap_uint<17> numerator = exp_table[(logits[chosen[0]] - logits[e]).to_int()];
            token_gates[e][count[e]] = softmax_value(numerator, m);
            count[e]++;
        }
    }
}

/* Expert e's MLP on its gathered tokens only, from an on-chip weight buffer: the token tile (gather), fc1 and its
 * requantisation into the hidden tile through the GELU table, fc2 and its requantisation, each result times the
 * token's gate scatter-added into the token's accumulator row. */
template <int T, int D, int H, int E, int F1_ACC_W, int F1_RQ_W, int F2_ACC_W, int F2_RQ_W, int ACC_W>
void moe_expert(int e, int slot, const expert_buffer<D, H> &buf, const s8_t x[T * D], const int8_t gelu[256],
                const ap_uint<index_bits(T)> tokens[E][T], const u8_t token_gates[E][T], int count,
                ap_int<ACC_W> acc[T * D]) {
    static s8_t tile[T * D];     /* the routed tokens, gathered */
    static s8_t hidden[T * H];   /* GELU(fc1) of the tile */
    (void)slot;   /* names the buffer in EMH_MOE_TRACE's log only */
    EMH_TRACE("moe compute %d %d %d\n", e, slot, count);
MOE_TILE:
    for (int i = 0; i < count; i++) {
#pragma HLS LOOP_TRIPCOUNT min = 0 max = T
    MOE_TILE_D:
        for (int d = 0; d < D; d++) {
#pragma HLS PIPELINE II = 1
            EMH_TICK();
            tile[i * D + d] = x[tokens[e][i].to_int() * D + d];
        }
    }
MOE_FC1:
    for (int i = 0; i < count; i++) {
#pragma HLS LOOP_TRIPCOUNT min = 0 max = T
    MOE_FC1_H:
        for (int h = 0; h < H; h++) {
            ap_int<F1_ACC_W> a = 0;
        MOE_FC1_D:
            for (int d = 0; d < D; d++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                a += tile[i * D + d] * ap_int<8>(buf.fc1[h * D + d]);
            }
            const s8_t pre = rq<F1_RQ_W, s8_t>(a, buf.fc1_mul[h], buf.fc1_add[h], buf.fc1_shift);
            hidden[i * H + h] = s8_t(gelu[table_index(pre)]);
        }
    }
MOE_FC2:
    for (int i = 0; i < count; i++) {
#pragma HLS LOOP_TRIPCOUNT min = 0 max = T
    MOE_FC2_D:
        for (int o = 0; o < D; o++) {
            ap_int<F2_ACC_W> a = 0;
        MOE_FC2_H:
            for (int h = 0; h < H; h++) {
#pragma HLS PIPELINE II = 1
                EMH_TICK();
                a += hidden[i * H + h] * ap_int<8>(buf.fc2[o * H + h]);
            }
            const s8_t out = rq<F2_RQ_W, s8_t>(a, buf.fc2_mul[o], buf.fc2_add[o], buf.fc2_shift);
            acc[tokens[e][i].to_int() * D + o] += token_gates[e][i] * out;
        }
    }
}

/* A task-conditioned top-k mixture of expert MLPs on T int8 tokens of D features (intgraph "moe"), as M3ViT's
 * expert-major hardware runs it: route every token, gather per-expert token lists, then expert by expert load its
 * weights once and run them on its tokens only, scatter-adding gate * output into per-token accumulators; one
 * requantisation of the accumulators at the end.
 *
 * One task's path through the layer: `experts` (<= E) experts, expert e's router row and weights at row ids[e] of
 * the ROWS-row tables `router`, `fc1`, `fc2`, its requantisation at entry e of the path's own tables; `top_k` (<=
 * TOP_K) experts per token. A one-task design passes its experts in order (ids = 0 .. E - 1); the design serving every
 * task (multitask.py) passes the running task's path: the tables hold every task's experts once, and switching
 * tasks changes only which rows are read.
 *
 * Double buffering (ping-pong): expert e computes from buffer e % 2 while expert e + 1 is loaded into buffer
 * (e + 1) % 2. The expert loop is unrolled by two so each call names a fixed buffer, and a load and a compute in the
 * same iteration touch different buffers, so HLS may run them concurrently; the C simulation runs them one after
 * the other, with the same results.
 *
 * On-chip memory (what analysis/memory_plan.py's expert-major plan counts, weights at one byte):
 *   weights:      2 expert buffers x (2 D H int8 + (H + D) x 8 bytes of mul / add + 8 bytes of shifts)
 *                 + the router, E D int8 + E x 8 bytes of mul / add (+ 1 KiB of exp table, 256 B of GELU table)
 *                 (the plan counts one bias per feature where these carry a 32-bit mul and add);
 *   activations:  the input tokens T D int8 + the accumulators T D x ACC_W bits (the plan: T D at one byte each)
 *                 + the token tile T D int8 and the hidden tile T H int8, sized for the worst case of every token
 *                 routed to one expert (the plan's largest expert batch M <= T; HLS needs the static bound)
 *                 + the token lists E T (index + gate).
 * generate.py writes these byte counts next to each moe call, with the plan's. */
template <int T, int D, int H, int E, int ROWS, int TOP_K, int ROUTER_SHIFT, long long P, int R_ACC_W, int R_RQ_W,
          int F1_ACC_W, int F1_RQ_W, int F2_ACC_W, int F2_RQ_W, int ACC_W, int RQ_W, int SHIFT, typename Y_T>
void moe(const s8_t x[T * D], int experts, int top_k, const int32_t ids[E], const int8_t router[ROWS * D],
         const int32_t router_mul[E], const int32_t router_add[E], const int32_t exp_table[256],
         const int8_t fc1[ROWS * H * D], const int32_t fc1_mul[E * H], const int32_t fc1_add[E * H],
         const int32_t fc1_shift[E], const int8_t gelu[256], const int8_t fc2[ROWS * D * H], const int32_t fc2_mul[E * D],
         const int32_t fc2_add[E * D], const int32_t fc2_shift[E], const int32_t mul[1], const int32_t add[1],
         Y_T y[T * D]) {
    static ap_uint<index_bits(T)> tokens[E][T];
    static u8_t token_gates[E][T];
    static ap_uint<index_bits(T + 1)> count[E];
    static ap_int<ACC_W> acc[T * D];
    static expert_buffer<D, H> ping, pong;
    EMH_TRACE("moe begin %d %d %d\n", experts, T, top_k);
    moe_route<T, D, E, ROWS, TOP_K, ROUTER_SHIFT, P, R_ACC_W, R_RQ_W>(x, experts, top_k, ids, router, router_mul,
                                                                      router_add, exp_table, tokens, token_gates, count);
MOE_ACC_ZERO:
    for (int i = 0; i < T * D; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        acc[i] = 0;
    }
    moe_load<D, H, E, ROWS>(0, ids[0], 0, fc1, fc1_mul, fc1_add, fc1_shift, fc2, fc2_mul, fc2_add, fc2_shift, ping);
MOE_EXPERTS:
    for (int e = 0; e < experts; e += 2) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = E
        /* ping holds expert e: fill pong with e + 1 while ping computes */
        if (e + 1 < experts) {
            moe_load<D, H, E, ROWS>(e + 1, ids[e + 1], 1, fc1, fc1_mul, fc1_add, fc1_shift, fc2, fc2_mul, fc2_add,
                                    fc2_shift, pong);
        }
        moe_expert<T, D, H, E, F1_ACC_W, F1_RQ_W, F2_ACC_W, F2_RQ_W, ACC_W>(e, 0, ping, x, gelu, tokens, token_gates,
                                                                            count[e].to_int(), acc);
        if (e + 1 < experts) {
            /* pong holds expert e + 1: refill ping with e + 2 while pong computes */
            if (e + 2 < experts) {
                moe_load<D, H, E, ROWS>(e + 2, ids[e + 2], 0, fc1, fc1_mul, fc1_add, fc1_shift, fc2, fc2_mul, fc2_add,
                                        fc2_shift, ping);
            }
            moe_expert<T, D, H, E, F1_ACC_W, F1_RQ_W, F2_ACC_W, F2_RQ_W, ACC_W>(e + 1, 1, pong, x, gelu, tokens,
                                                                                token_gates, count[e + 1].to_int(),
                                                                                acc);
        }
    }
MOE_OUT:
    for (int i = 0; i < T * D; i++) {
#pragma HLS PIPELINE II = 1
        EMH_TICK();
        y[i] = rq<RQ_W, Y_T>(acc[i], mul[0], add[0], SHIFT);
    }
}

}  // namespace emh

#endif /* EDGEMTL_HLS_KERNELS_H */
