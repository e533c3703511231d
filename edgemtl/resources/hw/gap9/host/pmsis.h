/* A host stand-in for the few PMSIS calls hw/gap9/main.c makes, so the harness compiles and runs with any C99
 * compiler (tests/hw/test_gap9_kit.py). Not the GAP SDK: the "cluster task" runs inline on the calling
 * thread, and PI_PERF_CYCLES counts clock() ticks of the host, NOT GAP9 cycles. */
#ifndef EDGEMTL_HOST_PMSIS_H
#define EDGEMTL_HOST_PMSIS_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define PI_PERF_CYCLES 0
#define PI_FREQ_DOMAIN_FC 0
#define PI_FREQ_DOMAIN_CL 1

struct pi_device {
    void *config;
};

struct pi_cluster_conf {
    int id;
};

struct pi_cluster_task {
    void (*entry)(void *);
    void *arg;
    void *stacks;
    uint32_t stack_size;
    uint32_t slave_stack_size;
    int nb_cores;
};

static clock_t pi_shim_base;
static clock_t pi_shim_stopped_at;
static int pi_shim_running;

static inline void pi_cluster_conf_init(struct pi_cluster_conf *conf) { conf->id = 0; }
static inline void pi_open_from_conf(struct pi_device *device, void *conf) { device->config = conf; }
static inline int pi_cluster_open(struct pi_device *device) { (void)device; return 0; }
static inline int pi_cluster_close(struct pi_device *device) { (void)device; return 0; }

static inline struct pi_cluster_task *pi_cluster_task(struct pi_cluster_task *task, void (*entry)(void *), void *arg)
{
    task->entry = entry;
    task->arg = arg;
    task->stacks = NULL;
    task->stack_size = 0;
    task->slave_stack_size = 0;
    task->nb_cores = 0;
    return task;
}

static inline int pi_cluster_send_task_to_cl(struct pi_device *device, struct pi_cluster_task *task)
{
    (void)device;
    task->entry(task->arg);
    return 0;
}

static inline void pi_perf_conf(unsigned events) { (void)events; }
static inline void pi_perf_reset(void) { pi_shim_base = clock(); pi_shim_stopped_at = pi_shim_base; }
static inline void pi_perf_start(void) { pi_shim_running = 1; }
static inline void pi_perf_stop(void) { pi_shim_stopped_at = clock(); pi_shim_running = 0; }
static inline unsigned int pi_perf_read(int event)
{
    (void)event;
    return (unsigned int)((pi_shim_running ? clock() : pi_shim_stopped_at) - pi_shim_base);
}

static inline uint32_t pi_freq_get(int domain) { (void)domain; return 0; }   /* unknown on the host */
static inline int pi_freq_set(int domain, uint32_t hz) { (void)domain; (void)hz; return 0; }

static inline void pmsis_exit(int status) { exit(status); }
static inline int pmsis_kickoff(void *entry)
{
    ((void (*)(void))entry)();
    return 0;
}

#endif
