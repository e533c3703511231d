// AXI4-Stream glue between the hls4ml IP (`myproject`, io_stream) and AXI DMAs, added to the block
// design by block_design.tcl as RTL module references.
//
// Why: hls4ml's io_stream ports carry no TLAST, and their TDATA width is whatever the layer's values
// need (channels x ceil(bits/8) bytes, e.g. 6 bytes), while the AXI DMA wants a power-of-two stream
// width and ends an S2MM (stream -> memory) transfer only on TLAST.
//
// axis_to_dma:   HLS output -> DMA S2MM: zero-extends TDATA to OUT_BYTES and raises TLAST on every
//                BEATS-th beat (one frame = BEATS beats).
// axis_from_dma: DMA MM2S -> HLS input: keeps the low OUT_BYTES of TDATA (TLAST is not needed by hls4ml).
// Both are combinational pass-throughs apart from the beat counter: no added latency or buffering.

`timescale 1ns / 1ps

module axis_to_dma #(
    parameter integer IN_BYTES = 6,
    parameter integer OUT_BYTES = 8,
    parameter integer BEATS = 1
) (
    (* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF s_axis:m_axis, ASSOCIATED_RESET aresetn" *)
    input  wire                     aclk,
    input  wire                     aresetn,
    input  wire [IN_BYTES*8-1:0]    s_axis_tdata,
    input  wire                     s_axis_tvalid,
    output wire                     s_axis_tready,
    output wire [OUT_BYTES*8-1:0]   m_axis_tdata,
    output wire [OUT_BYTES-1:0]     m_axis_tkeep,
    output wire                     m_axis_tvalid,
    input  wire                     m_axis_tready,
    output wire                     m_axis_tlast
);
    reg [31:0] count;
    wire fire = s_axis_tvalid && m_axis_tready;

    generate
        if (OUT_BYTES > IN_BYTES) begin : pad
            assign m_axis_tdata = {{(OUT_BYTES - IN_BYTES) * 8{1'b0}}, s_axis_tdata};
        end else begin : same  // block_design.tcl never makes the DMA side narrower
            assign m_axis_tdata = s_axis_tdata;
        end
    endgenerate
    assign m_axis_tkeep  = {OUT_BYTES{1'b1}};
    assign m_axis_tvalid = s_axis_tvalid;
    assign s_axis_tready = m_axis_tready;
    assign m_axis_tlast  = (count == BEATS - 1);

    always @(posedge aclk) begin
        if (!aresetn) begin
            count <= 0;
        end else if (fire) begin
            count <= (count == BEATS - 1) ? 0 : count + 1;
        end
    end
endmodule


module axis_from_dma #(
    parameter integer IN_BYTES = 8,
    parameter integer OUT_BYTES = 6
) (
    (* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF s_axis:m_axis, ASSOCIATED_RESET aresetn" *)
    input  wire                     aclk,
    input  wire                     aresetn,
    input  wire [IN_BYTES*8-1:0]    s_axis_tdata,
    input  wire                     s_axis_tvalid,
    output wire                     s_axis_tready,
    input  wire                     s_axis_tlast,
    output wire [OUT_BYTES*8-1:0]   m_axis_tdata,
    output wire                     m_axis_tvalid,
    input  wire                     m_axis_tready
);
    // block_design.tcl always makes the DMA side at least as wide (IN_BYTES >= OUT_BYTES)
    assign m_axis_tdata  = s_axis_tdata[OUT_BYTES*8-1:0];
    assign m_axis_tvalid = s_axis_tvalid;
    assign s_axis_tready = m_axis_tready;
endmodule
