// edgemtl extension to hls4ml 1.3.0 (io_stream): max pooling with any window, stride and padding.
//
// hls4ml's stream pooling asserts window == stride and no padding, so Caffe-era networks (3x3 windows at
// stride 2, ceil_mode, which ONNX writes as end padding) do not map. This kernel reads the channels-last pixel
// stream once, keeps one accumulator row per output row a window can still reach (ceil(window / stride) of
// them) and writes each output row as soon as its last input row has been read. Padding never wins (it is
// -inf in ONNX MaxPool): each window's first real value initialises its accumulator, and every window holds at
// least one real value (edgemtl's converter refuses padding >= window). Max is exact in the input type, so
// the output equals the reference bit for bit whatever the result type, as long as it holds the input type.
#ifndef EDGEMTL_NNET_WINDOW_POOL_STREAM_H_
#define EDGEMTL_NNET_WINDOW_POOL_STREAM_H_

#include "hls_stream.h"
#include "nnet_common.h"

namespace nnet {

struct window_maxpool2d_config {
    static const unsigned in_height = 10;
    static const unsigned in_width = 10;
    static const unsigned n_filt = 1;
    static const unsigned out_height = 5;
    static const unsigned out_width = 5;
    static const unsigned pool_height = 2;
    static const unsigned pool_width = 2;
    static const unsigned stride_height = 2;
    static const unsigned stride_width = 2;
    static const unsigned pad_top = 0;
    static const unsigned pad_left = 0;
};

template <class data_T, class res_T, typename CONFIG_T>
void window_maxpool2d_cl(hls::stream<data_T> &data, hls::stream<res_T> &res) {
    static_assert(data_T::size == CONFIG_T::n_filt && res_T::size == CONFIG_T::n_filt,
                  "window_maxpool2d_cl streams one pixel (all channels) per beat");
    constexpr int rows_in_flight = (CONFIG_T::pool_height + CONFIG_T::stride_height - 1) / CONFIG_T::stride_height;
    constexpr int cols_per_pixel = (CONFIG_T::pool_width + CONFIG_T::stride_width - 1) / CONFIG_T::stride_width;
    constexpr int kh = CONFIG_T::pool_height, kw = CONFIG_T::pool_width;
    constexpr int sh = CONFIG_T::stride_height, sw = CONFIG_T::stride_width;
    constexpr int oh_n = CONFIG_T::out_height, ow_n = CONFIG_T::out_width;
    constexpr int pt = CONFIG_T::pad_top, pl = CONFIG_T::pad_left, ih_n = CONFIG_T::in_height, iw_n = CONFIG_T::in_width;

    typename data_T::value_type acc[rows_in_flight][CONFIG_T::out_width][CONFIG_T::n_filt];
    #pragma HLS ARRAY_PARTITION variable=acc complete dim=3

PoolRows:
    for (int ih = 0; ih < ih_n; ih++) {
        const int ph = ih + pt;  // row in padded coordinates
    PoolCols:
        for (int iw = 0; iw < iw_n; iw++) {
            #pragma HLS PIPELINE
            const data_T pixel = data.read();
            const int pw = iw + pl;
        PoolWindowRows:
            for (int r = 0; r < rows_in_flight; r++) {
                #pragma HLS UNROLL
                const int oh = ph / sh - r;  // the output rows whose window holds padded row ph
                if (oh < 0 || oh >= oh_n || ph >= oh * sh + kh)
                    continue;
                const bool first_row = ph == (oh * sh > pt ? oh * sh : pt);
            PoolWindowCols:
                for (int c = 0; c < cols_per_pixel; c++) {
                    #pragma HLS UNROLL
                    const int ow = pw / sw - c;
                    if (ow < 0 || ow >= ow_n || pw >= ow * sw + kw)
                        continue;
                    const bool first = first_row && pw == (ow * sw > pl ? ow * sw : pl);
                PoolChannels:
                    for (unsigned k = 0; k < CONFIG_T::n_filt; k++) {
                        #pragma HLS UNROLL
                        typename data_T::value_type &slot = acc[oh % rows_in_flight][ow][k];
                        if (first || pixel[k] > slot)
                            slot = pixel[k];
                    }
                }
            }
        }
    PoolEmitRows:
        for (int r = rows_in_flight - 1; r >= 0; r--) {  // oldest output row first
            const int oh = ph / sh - r;
            const int last_row = oh * sh + kh - 1 < pt + ih_n - 1 ? oh * sh + kh - 1 : pt + ih_n - 1;
            if (oh < 0 || oh >= oh_n || last_row != ph)
                continue;
        PoolEmitCols:
            for (int ow = 0; ow < ow_n; ow++) {
                #pragma HLS PIPELINE
                res_T out;
                PRAGMA_DATA_PACK(out)
                for (unsigned k = 0; k < CONFIG_T::n_filt; k++) {
                    #pragma HLS UNROLL
                    out[k] = acc[oh % rows_in_flight][ow][k];
                }
                res.write(out);
            }
        }
    }
}

} // namespace nnet

#endif
