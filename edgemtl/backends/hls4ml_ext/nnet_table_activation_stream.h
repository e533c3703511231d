// edgemtl extension to hls4ml 1.3.0 (io_stream): an elementwise function of a quantized value, as a table.
//
// The input is a W-bit fixed-point value; the table holds, for each of its 2^W codes (indexed by the raw bits, so
// a negative two's-complement value indexes the upper half), what the quantized model computes: the function in
// float32, then the next quantizer's rounding and clamp. So the output equals the quantized model bit for bit, where
// hls4ml's own sigmoid / tanh / softplus tables sample the function on their own grid (measured 1-2 LSB off).
#ifndef EDGEMTL_NNET_TABLE_ACTIVATION_STREAM_H_
#define EDGEMTL_NNET_TABLE_ACTIVATION_STREAM_H_

#include "hls_stream.h"
#include "nnet_common.h"

namespace nnet {

struct table_activation_config {
    static const unsigned n_in = 10;
    static const unsigned in_width = 8;
    static const unsigned table_size = 256;
};

template <class data_T, class res_T, typename CONFIG_T, class table_T>
void table_activation(hls::stream<data_T> &data, const table_T table[CONFIG_T::table_size], hls::stream<res_T> &res) {
    static_assert(CONFIG_T::table_size == (1u << CONFIG_T::in_width), "one table entry per input code");
TableActivationLoop:
    for (unsigned i = 0; i < CONFIG_T::n_in / res_T::size; i++) {
        #pragma HLS PIPELINE
        const data_T in = data.read();
        res_T out;
        PRAGMA_DATA_PACK(out)
    TableActivationPack:
        for (unsigned j = 0; j < res_T::size; j++) {
            #pragma HLS UNROLL
            const ap_uint<CONFIG_T::in_width> code = in[j].range(CONFIG_T::in_width - 1, 0);
            out[j] = table[code];
        }
        res.write(out);
    }
}

} // namespace nnet

#endif
