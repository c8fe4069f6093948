/*
 * Every kernel, copy and fill a CUDA process runs, with its device start and end: a small
 * Nsight Systems for machines without one. CUDA loads this library at initialisation when
 * CUDA_INJECTION64_PATH names it; it asks CUPTI's activity API for each kernel's record
 * (kernels inside a replayed CUDA graph included, with their graph's id) and appends one line
 * per record to the file KERNEL_TRACE names (default kernel-trace.tsv):
 *
 *   kind <TAB> start ns <TAB> end ns <TAB> stream <TAB> graph id <TAB> graph node <TAB> name or bytes
 *
 * The process runs at its own pace (records are written from CUPTI's buffers, not per launch),
 * unlike Nsight Compute, which serialises and replays every kernel.
 * scripts/bench/kernel_trace.py reads the file; scripts/gpu/kernel_trace/build.sh builds this.
 */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

#define BUFFER_BYTES (8u << 20)

static FILE *out;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = aligned_alloc(8, BUFFER_BYTES);
    *size = BUFFER_BYTES;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t *buffer,
                                      size_t size, size_t valid) {
    CUpti_Activity *record = NULL;
    (void)context;
    (void)stream;
    (void)size;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        switch (record->kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        case CUPTI_ACTIVITY_KIND_KERNEL: {
            CUpti_ActivityKernel13 *k = (CUpti_ActivityKernel13 *)record;
            fprintf(out, "kernel\t%llu\t%llu\t%u\t%u\t%llu\t%s\n", (unsigned long long)k->start,
                    (unsigned long long)k->end, k->streamId, k->graphId,
                    (unsigned long long)k->graphNodeId, k->name);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            CUpti_ActivityMemcpy7 *m = (CUpti_ActivityMemcpy7 *)record;
            fprintf(out, "memcpy\t%llu\t%llu\t%u\t%u\t%llu\t%llu\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, m->streamId, m->graphId,
                    (unsigned long long)m->graphNodeId, (unsigned long long)m->bytes);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            CUpti_ActivityMemset5 *m = (CUpti_ActivityMemset5 *)record;
            fprintf(out, "memset\t%llu\t%llu\t%u\t%u\t%llu\t%llu\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, m->streamId, m->graphId,
                    (unsigned long long)m->graphNodeId, (unsigned long long)m->bytes);
            break;
        }
        default:
            break;
        }
    }
    free(buffer);
}

static void flush_at_exit(void) {
    cuptiActivityFlushAll(1);
    if (out) fclose(out);
}

/* Called by the CUDA driver at initialisation (CUDA_INJECTION64_PATH). */
int InitializeInjection(void) {
    const char *path = getenv("KERNEL_TRACE");
    out = fopen(path ? path : "kernel-trace.tsv", "w");
    if (!out) return 0;
    setvbuf(out, NULL, _IOFBF, 1 << 20);
    cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    atexit(flush_at_exit);
    return 1;
}
