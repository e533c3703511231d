/* edgemtl portable int8 kernels (C99): the integer graph's ops, bit-exact with edgemtl.model.intgraph.
 *
 * Activations are bytes in CHW order (one sample). A kernel reads its input as int8_t or uint8_t (the
 * _s8 / _u8 suffix names the input type) and writes its output as raw bytes: a requantised value is
 * clipped to [lo, hi] ([-128, 127] for int8, [0, 255] for uint8) and stored as its two's-complement
 * byte, so one kernel serves both output types. Accumulators are int32 (add: int64, its scalar
 * multipliers are not bounded by the quantizer); requantisation is evaluated in int64:
 *     y = clip((acc * mul[c] + add[c] + 2^(shift-1)) >> shift, lo, hi)     (>> = floor, no term if shift 0)
 */
#ifndef EDGEMTL_KERNELS_H
#define EDGEMTL_KERNELS_H

#include <stdint.h>

#if defined(__GNUC__)
#define EMK_ALIGNED(n) __attribute__((aligned(n)))
#define EMK_NOINLINE __attribute__((noinline))
#else
#define EMK_ALIGNED(n)
#define EMK_NOINLINE
#endif

/* Per-output-channel requantisation of one node. `narrow` != 0 promises (the generator proves it from
 * the worst-case accumulator, intgraph.check_int32) that acc * mul + add + 2^(shift-1) fits int32 for
 * every input, so the cheaper int32 path gives the same integers as the int64 one. */
typedef struct {
    const int32_t *mul;
    const int32_t *add;
    int32_t shift;
    int32_t lo;
    int32_t hi;
    int32_t narrow;
} emk_requant_t;

/* Geometry of a convolution: input (c, h, w), output (k, oh, ow), weights (k, c / groups, kh, kw). */
typedef struct {
    int32_t c, h, w, k, oh, ow, kh, kw, sh, sw, pad_top, pad_left, groups;
} emk_conv_t;

/* Geometry of a max pool: input (c, h, w), output (c, oh, ow). */
typedef struct {
    int32_t c, h, w, oh, ow, kh, kw, sh, sw, pad_top, pad_left;
} emk_pool_t;

/* floor(v / 2^s) for 0 <= s <= 62 without relying on the implementation-defined right shift of a
 * negative value: for v < 0, ~v = -v - 1 >= 0 and ~(~v >> s) = floor(v / 2^s) exactly. */
static inline int64_t emk_floor_shift(int64_t v, int32_t s)
{
    return v >= 0 ? (v >> s) : ~((~v) >> s);
}

/* floor(sqrt(v)), exactly (bit by bit). */
static inline uint64_t emk_isqrt64(uint64_t v)
{
    uint64_t root = 0, bit = (uint64_t)1 << 62;
    while (bit > v) {
        bit >>= 2;
    }
    while (bit != 0) {
        if (v >= root + bit) {
            v -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return root;
}

/* The fused requantisation (intgraph.requantize), stored as the output byte. */
static inline uint8_t emk_requant(int64_t acc, int32_t mul, int32_t add, int32_t shift, int32_t lo, int32_t hi)
{
    int64_t v = acc * (int64_t)mul + (int64_t)add;
    if (shift > 0) {
        v = emk_floor_shift(v + ((int64_t)1 << (shift - 1)), shift);
    }
    if (v < lo) {
        v = lo;
    }
    if (v > hi) {
        v = hi;
    }
    return (uint8_t)(int32_t)v;
}

/* The same in int32, valid only when the whole sum fits int32 (see emk_requant_t.narrow). */
static inline uint8_t emk_requant32(int32_t acc, int32_t mul, int32_t add, int32_t shift, int32_t lo, int32_t hi)
{
    int32_t v = acc * mul + add;
    if (shift > 0) {
        v += (int32_t)((uint32_t)1 << (shift - 1));
        v = v >= 0 ? (v >> shift) : ~((~v) >> shift);
    }
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    return (uint8_t)v;
}

/* Requantise with the node's parameters for channel-wise mul / add. */
#define EMK_REQUANT(acc, rq, mul, add)                                                                    \
    ((rq)->narrow ? emk_requant32((int32_t)(acc), (mul), (add), (rq)->shift, (rq)->lo, (rq)->hi)          \
                  : emk_requant((acc), (mul), (add), (rq)->shift, (rq)->lo, (rq)->hi))

#if defined(__riscv)
/* Retired-instruction counter (user/machine mode). GCC 12's assembler needs Zicsr enabled for csrr. */
static inline uint32_t emk_instret(void)
{
    uint32_t value;
    __asm__ volatile(".option push\n\t.option arch, +zicsr\n\tcsrr %0, minstret\n\t.option pop" : "=r"(value));
    return value;
}
#endif

void emk_conv_s8(const int8_t *x, const int8_t *w, const emk_conv_t *p, const emk_requant_t *rq, uint8_t *y);
void emk_conv_u8(const uint8_t *x, const int8_t *w, const emk_conv_t *p, const emk_requant_t *rq, uint8_t *y);
/* Transposed convolution with kernel == stride and no padding (p->kh, p->kw; one group): weights (k, c, kh, kw),
 * output (k, h * kh, w * kw); input pixel (i, j) alone makes the output block at (i * kh, j * kw). */
void emk_conv_transpose_s8(const int8_t *x, const int8_t *w, const emk_conv_t *p, const emk_requant_t *rq, uint8_t *y);
void emk_conv_transpose_u8(const uint8_t *x, const int8_t *w, const emk_conv_t *p, const emk_requant_t *rq, uint8_t *y);
/* rows (1 for a vector) of c values each -> rows of k; mul / add per output feature. */
void emk_gemm_s8(const int8_t *x, const int8_t *w, int32_t rows, int32_t c, int32_t k, const emk_requant_t *rq, uint8_t *y);
void emk_gemm_u8(const uint8_t *x, const int8_t *w, int32_t rows, int32_t c, int32_t k, const emk_requant_t *rq, uint8_t *y);
/* Token ops (transformers). reduce_mean / softmax work along the middle axis of x viewed as (outer, n, inner). */
void emk_reduce_mean_s8(const int8_t *x, int32_t outer, int32_t n, int32_t inner, const emk_requant_t *rq, uint8_t *y);
void emk_reduce_mean_u8(const uint8_t *x, int32_t outer, int32_t n, int32_t inner, const emk_requant_t *rq, uint8_t *y);
void emk_avgpool_s8(const int8_t *x, const emk_pool_t *p, const emk_requant_t *rq, uint8_t *y);
void emk_avgpool_u8(const uint8_t *x, const emk_pool_t *p, const emk_requant_t *rq, uint8_t *y);
void emk_add_const_s8(const int8_t *x, int32_t n, int32_t mul_a, const int32_t *constant, const emk_requant_t *rq, uint8_t *y);
void emk_add_const_u8(const uint8_t *x, int32_t n, int32_t mul_a, const int32_t *constant, const emk_requant_t *rq, uint8_t *y);
void emk_softmax_s8(const int8_t *x, int32_t outer, int32_t n, int32_t inner, const int32_t *table, int64_t p, uint8_t *y);
void emk_softmax_u8(const uint8_t *x, int32_t outer, int32_t n, int32_t inner, const int32_t *table, int64_t p, uint8_t *y);
void emk_layernorm_s8(const int8_t *x, int32_t rows, int32_t d, int64_t eps, const emk_requant_t *rq, uint8_t *y);
void emk_layernorm_u8(const uint8_t *x, int32_t rows, int32_t d, int64_t eps, const emk_requant_t *rq, uint8_t *y);
/* matmul: a (batch, m, kd) of the first suffix's type @ b (batch, kd, n) of the second's. */
void emk_matmul_s8_s8(const int8_t *a, const int8_t *b, int32_t batch, int32_t m, int32_t kd, int32_t n, const emk_requant_t *rq, uint8_t *y);
void emk_matmul_s8_u8(const int8_t *a, const uint8_t *b, int32_t batch, int32_t m, int32_t kd, int32_t n, const emk_requant_t *rq, uint8_t *y);
void emk_matmul_u8_s8(const uint8_t *a, const int8_t *b, int32_t batch, int32_t m, int32_t kd, int32_t n, const emk_requant_t *rq, uint8_t *y);
void emk_matmul_u8_u8(const uint8_t *a, const uint8_t *b, int32_t batch, int32_t m, int32_t kd, int32_t n, const emk_requant_t *rq, uint8_t *y);
void emk_requant_s8(const int8_t *x, int32_t c, int32_t hw, const emk_requant_t *rq, uint8_t *y);
void emk_requant_u8(const uint8_t *x, int32_t c, int32_t hw, const emk_requant_t *rq, uint8_t *y);
void emk_avgpool_global_s8(const int8_t *x, int32_t c, int32_t hw, const emk_requant_t *rq, uint8_t *y);
void emk_avgpool_global_u8(const uint8_t *x, int32_t c, int32_t hw, const emk_requant_t *rq, uint8_t *y);
void emk_maxpool_s8(const int8_t *x, const emk_pool_t *p, uint8_t *y);
void emk_maxpool_u8(const uint8_t *x, const emk_pool_t *p, uint8_t *y);
void emk_resize_bilinear_s8(const int8_t *x, int32_t c, int32_t h, int32_t w, int32_t f, const emk_requant_t *rq, uint8_t *y);
void emk_resize_bilinear_u8(const uint8_t *x, int32_t c, int32_t h, int32_t w, int32_t f, const emk_requant_t *rq, uint8_t *y);
/* add: a is the first input (suffix 1), b the second (suffix 2). */
void emk_add_s8_s8(const int8_t *a, const int8_t *b, int32_t c, int32_t hw, int32_t mul_a, int32_t mul_b,
                   const emk_requant_t *rq, uint8_t *y);
void emk_add_s8_u8(const int8_t *a, const uint8_t *b, int32_t c, int32_t hw, int32_t mul_a, int32_t mul_b,
                   const emk_requant_t *rq, uint8_t *y);
void emk_add_u8_s8(const uint8_t *a, const int8_t *b, int32_t c, int32_t hw, int32_t mul_a, int32_t mul_b,
                   const emk_requant_t *rq, uint8_t *y);
void emk_add_u8_u8(const uint8_t *a, const uint8_t *b, int32_t c, int32_t hw, int32_t mul_a, int32_t mul_b,
                   const emk_requant_t *rq, uint8_t *y);

/* Data movement (type-agnostic bytes). */
void emk_copy(const uint8_t *x, int32_t bytes, uint8_t *y);
void emk_concat(const uint8_t *const *xs, const int32_t *bytes, int32_t n, uint8_t *y);
void emk_resize_nearest(const uint8_t *x, int32_t c, int32_t h, int32_t w, int32_t f, uint8_t *y);
/* x viewed as dims[0..rank) (rank <= 8), axes permuted: output axis a is input axis perm[a]. */
void emk_transpose(const uint8_t *x, int32_t rank, const int32_t *dims, const int32_t *perm, uint8_t *y);
/* x viewed as (outer, n, inner): rows start .. stop - 1 of the middle axis. */
void emk_slice(const uint8_t *x, int32_t outer, int32_t n, int32_t inner, int32_t start, int32_t stop, uint8_t *y);
/* An elementwise function as a table: y = table[256 * channel + x] over c channels of n values each, both raw
 * bytes (the generator orders each table by input byte; c == 1: one table for every value). */
void emk_lut(const uint8_t *x, int32_t c, int32_t n, const uint8_t *table, uint8_t *y);

/* A task-conditioned top-k mixture of expert MLPs on int8 tokens (intgraph "moe"), expert-major: the router's
 * logits and each token's k experts and gates first, then expert by expert over the tokens routed to it only (its
 * weights read once), each result weighted by its gate into an int32 accumulator per token. */
typedef struct {
    int32_t tokens, d, hidden, experts, top_k, router_shift;
    const int8_t *router;                  /* (experts, d) */
    const int32_t *router_mul, *router_add;
    const int32_t *exp;                    /* the gates' softmax table */
    int64_t p;
    const int8_t *fc1;                     /* (experts, hidden, d) */
    const int32_t *fc1_mul, *fc1_add, *fc1_shift;
    const int8_t *gelu;                    /* output by input + 128 */
    const int8_t *fc2;                     /* (experts, d, hidden) */
    const int32_t *fc2_mul, *fc2_add, *fc2_shift;
} emk_moe_t;

/* Scratch (caller's): chosen and gates tokens * top_k each, hidden 2 * hidden bytes, acc tokens * d. */
void emk_moe_s8(const int8_t *x, const emk_moe_t *m, const emk_requant_t *rq, int32_t *chosen, uint8_t *gates,
                int8_t *hidden, int32_t *acc, uint8_t *y);

#endif /* EDGEMTL_KERNELS_H */
