/* The plan a generated model_plan.c describes, as strataml_runtime.c reads it (internal). */
#ifndef STRATAML_PLAN_H
#define STRATAML_PLAN_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *name;
    const char *dtype;
    int rank;
    const int64_t *shape;
    uint64_t bytes;
    int region;      /* where the code leaves it: 0 arena, 1 weights, 2 io table */
    uint64_t offset; /* bytes into the arena or the weights; for io, the table index */
} strataml_tensor;

typedef struct {
    int num_inputs, num_outputs;
    const strataml_tensor *inputs, *outputs;
    uint64_t arena_bytes, weights_bytes, weights_checksum;
    int num_threads;
    const char *model_name;
} strataml_plan;

extern const strataml_plan strataml_plan_data;

/* The compiled code (kernels.o) and its thread-count knob. */
void strataml_entry(void *arena, void *weights, void **io);
extern int32_t strataml_num_threads;
extern int32_t strataml_fault; /* nonzero after a run that divided an integer by zero */

#endif
