/* Force-included (-include edgemtl_hooks.h) into every source of the GAP9 harness: routes the generated
 * network's per-layer hooks EDGEMTL_LAYER_BEGIN / END(i) to main.c, which reads the core's cycle counter
 * (pi_perf_read(PI_PERF_CYCLES)) around each layer. Defining the hooks also switches off the network's
 * default minstret counting, which a GAP9 core does not need. */
#ifndef EDGEMTL_GAP9_HOOKS_H
#define EDGEMTL_GAP9_HOOKS_H

void edgemtl_layer_begin(int layer);
void edgemtl_layer_end(int layer);

#define EDGEMTL_LAYER_BEGIN(i) edgemtl_layer_begin(i)
#define EDGEMTL_LAYER_END(i) edgemtl_layer_end(i)

#endif
