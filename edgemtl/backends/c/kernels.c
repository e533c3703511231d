/* edgemtl portable int8 kernels: the type-agnostic ones here, the typed ones instantiated twice from
 * kernels_typed.inc (once per input type), so the inner loops load with the right signedness. */
#include "kernels.h"

#include <string.h>

#define EMK_T int8_t
#define EMK_SUFFIX s8
#include "kernels_typed.inc"
#undef EMK_T
#undef EMK_SUFFIX

#define EMK_T uint8_t
#define EMK_SUFFIX u8
#include "kernels_typed.inc"
#undef EMK_T
#undef EMK_SUFFIX

void emk_copy(const uint8_t *x, int32_t bytes, uint8_t *y)
{
    memcpy(y, x, (size_t)bytes);
}

void emk_concat(const uint8_t *const *xs, const int32_t *bytes, int32_t n, uint8_t *y)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        memcpy(y, xs[i], (size_t)bytes[i]);
        y += bytes[i];
    }
}

void emk_resize_nearest(const uint8_t *x, int32_t c, int32_t h, int32_t w, int32_t f, uint8_t *y)
{
    int32_t ch, oy, ox;
    const int32_t ow = w * f;
    for (ch = 0; ch < c; ch++) {
        const uint8_t *plane = x + ch * h * w;
        for (oy = 0; oy < h * f; oy++) {
            const uint8_t *row = plane + (oy / f) * w;
            for (ox = 0; ox < ow; ox++) {
                *y++ = row[ox / f];
            }
        }
    }
}

void emk_lut(const uint8_t *x, int32_t c, int32_t n, const uint8_t *table, uint8_t *y)
{
    int32_t ch, i;
    for (ch = 0; ch < c; ch++) {
        const uint8_t *t = table + 256 * ch;
        for (i = 0; i < n; i++) {
            *y++ = t[*x++];
        }
    }
}

void emk_transpose(const uint8_t *x, int32_t rank, const int32_t *dims, const int32_t *perm, uint8_t *y)
{
    int32_t stride[8], out_dims[8], index[8], a, total = 1, i;
    for (a = rank - 1; a >= 0; a--) {
        stride[a] = total;
        total *= dims[a];
    }
    for (a = 0; a < rank; a++) {
        out_dims[a] = dims[perm[a]];
        index[a] = 0;
    }
    for (i = 0; i < total; i++) {
        int32_t offset = 0;
        for (a = 0; a < rank; a++) {
            offset += index[a] * stride[perm[a]];
        }
        *y++ = x[offset];
        for (a = rank - 1; a >= 0; a--) {   /* the next output index, row-major */
            if (++index[a] < out_dims[a]) {
                break;
            }
            index[a] = 0;
        }
    }
}

void emk_slice(const uint8_t *x, int32_t outer, int32_t n, int32_t inner, int32_t start, int32_t stop, uint8_t *y)
{
    int32_t o;
    const int32_t bytes = (stop - start) * inner;
    for (o = 0; o < outer; o++) {
        memcpy(y, x + (o * n + start) * inner, (size_t)bytes);
        y += bytes;
    }
}


void emk_moe_s8(const int8_t *x, const emk_moe_t *m, const emk_requant_t *rq, int32_t *chosen, uint8_t *gates,
                int8_t *hidden, int32_t *acc, uint8_t *y)
{
    const int32_t T = m->tokens, D = m->d, H = m->hidden, E = m->experts, K = m->top_k;
    int32_t t, e, j, i, o;
    int8_t logits[256];
    for (t = 0; t < T; t++) {   /* route: logits, the k largest (ties: lower index), their softmax */
        const int8_t *xt = x + t * D;
        int64_t sum = 0, scale;
        for (e = 0; e < E; e++) {
            int32_t a = 0;
            for (i = 0; i < D; i++) {
                a += (int32_t)xt[i] * m->router[e * D + i];
            }
            logits[e] = (int8_t)emk_requant(a, m->router_mul[e], m->router_add[e], m->router_shift, -128, 127);
        }
        for (j = 0; j < K; j++) {
            int32_t best = -1;
            for (e = 0; e < E; e++) {
                int32_t taken = 0, q;
                for (q = 0; q < j; q++) {
                    taken |= chosen[t * K + q] == e;
                }
                if (!taken && (best < 0 || logits[e] > logits[best])) {
                    best = e;
                }
            }
            chosen[t * K + j] = best;
        }
        for (j = 0; j < K; j++) {
            sum += m->exp[logits[chosen[t * K]] - logits[chosen[t * K + j]]];
        }
        scale = (m->p << 16) / sum;
        for (j = 0; j < K; j++) {
            int64_t v = ((int64_t)m->exp[logits[chosen[t * K]] - logits[chosen[t * K + j]]] * scale
                         + ((int64_t)1 << 31)) >> 32;
            gates[t * K + j] = (uint8_t)(v > 255 ? 255 : v);
        }
        for (o = 0; o < D; o++) {
            acc[t * D + o] = 0;
        }
    }
    for (e = 0; e < E; e++) {   /* expert-major: expert e's weights, its tokens only */
        const int8_t *w1 = m->fc1 + e * H * D, *w2 = m->fc2 + e * D * H;
        for (t = 0; t < T; t++) {
            int32_t gate = -1;
            for (j = 0; j < K; j++) {
                gate = chosen[t * K + j] == e ? gates[t * K + j] : gate;
            }
            if (gate < 0) {
                continue;
            }
            for (i = 0; i < H; i++) {
                int32_t a = 0;
                for (o = 0; o < D; o++) {
                    a += (int32_t)x[t * D + o] * w1[i * D + o];
                }
                hidden[i] = (int8_t)emk_requant(a, m->fc1_mul[e * H + i], m->fc1_add[e * H + i], m->fc1_shift[e], -128,
                                                127);
                hidden[H + i] = m->gelu[hidden[i] + 128];
            }
            for (o = 0; o < D; o++) {
                int32_t a = 0;
                for (i = 0; i < H; i++) {
                    a += (int32_t)hidden[H + i] * w2[o * H + i];
                }
                acc[t * D + o] += gate * (int8_t)emk_requant(a, m->fc2_mul[e * D + o], m->fc2_add[e * D + o],
                                                             m->fc2_shift[e], -128, 127);
            }
        }
    }
    for (i = 0; i < T * D; i++) {
        y[i] = EMK_REQUANT(acc[i], rq, rq->mul[0], rq->add[0]);
    }
}
