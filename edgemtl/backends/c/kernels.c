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
