/* strataml's C runtime: binds a generated plan to memory and runs the compiled code.
 *
 * The compiler decided everything at compile time (model_plan.c): this file only allocates
 * the arena and the weights region, checks the weights it is given against the size and
 * checksum the code was built with, fills the io table and calls the entry point. */
#include "strataml_model.h"
#include "strataml_plan.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGNMENT 64

struct strataml_model {
    const strataml_plan *plan;
    unsigned char *arena;
    unsigned char *weights;
    void **io;
    int threads;
    pthread_mutex_t lock;
};

static void fail(char *error, size_t size, const char *fmt, ...) {
    if (error == NULL || size == 0) return;
    va_list args;
    va_start(args, fmt);
    int n = snprintf(error, size, "strataml: ");
    if (n >= 0 && (size_t)n < size) vsnprintf(error + n, size - (size_t)n, fmt, args);
    va_end(args);
}

/* Position-weighted sum of 64-bit words (the tail zero-padded), modulo 2^64: one flipped
 * bit or two swapped words change it. deploy/c_library.py computes the same. */
static uint64_t checksum(const unsigned char *data, uint64_t size) {
    uint64_t sum = 0, i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, data + i, 8);
        sum += word * (2 * (i / 8) + 1);
    }
    if (i < size) {
        uint64_t word = 0;
        memcpy(&word, data + i, (size_t)(size - i));
        sum += word * (2 * (i / 8) + 1);
    }
    return sum;
}

static void *aligned(uint64_t size) {
    uint64_t rounded = (size + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    return aligned_alloc(ALIGNMENT, rounded ? (size_t)rounded : ALIGNMENT);
}

static int default_threads(const strataml_plan *plan) {
    const char *env = getenv("STRATAML_NUM_THREADS");
    if (env != NULL) {
        char *end;
        long n = strtol(env, &end, 10);
        if (*env != '\0' && *end == '\0' && n >= 1 && n <= 4096) return (int)n;
    }
    return plan->num_threads > 0 ? plan->num_threads : 1;
}

strataml_model *strataml_create_from_memory(const void *weights, size_t size, char *error,
                                            size_t error_size) {
    const strataml_plan *plan = &strataml_plan_data;
    if (size != plan->weights_bytes || (size > 0 && weights == NULL)) {
        fail(error, error_size, "weights of %zu bytes, model '%s' takes %llu", size,
             plan->model_name, (unsigned long long)plan->weights_bytes);
        return NULL;
    }
    if (checksum((const unsigned char *)weights, size) != plan->weights_checksum) {
        fail(error, error_size, "the weights do not match model '%s' (checksum differs: "
             "damaged, or another model's)", plan->model_name);
        return NULL;
    }
    strataml_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        fail(error, error_size, "out of memory");
        return NULL;
    }
    m->plan = plan;
    m->arena = aligned(plan->arena_bytes);
    m->weights = aligned(plan->weights_bytes);
    m->io = calloc((size_t)(plan->num_inputs + plan->num_outputs) + 1, sizeof(void *));
    if (m->arena == NULL || m->weights == NULL || m->io == NULL ||
        pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m->arena);
        free(m->weights);
        free(m->io);
        free(m);
        fail(error, error_size, "out of memory (arena %llu bytes, weights %llu bytes)",
             (unsigned long long)plan->arena_bytes, (unsigned long long)plan->weights_bytes);
        return NULL;
    }
    if (size > 0) memcpy(m->weights, weights, size);
    m->threads = default_threads(plan);
    return m;
}

strataml_model *strataml_create(const char *weights_path, char *error, size_t error_size) {
    if (weights_path == NULL) {
        fail(error, error_size, "no weights path given");
        return NULL;
    }
    FILE *f = fopen(weights_path, "rb");
    if (f == NULL) {
        fail(error, error_size, "cannot open weights file %s", weights_path);
        return NULL;
    }
    uint64_t want = strataml_plan_data.weights_bytes;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || (uint64_t)size != want) {
        fclose(f);
        fail(error, error_size, "weights file %s holds %ld bytes, model '%s' takes %llu",
             weights_path, size, strataml_plan_data.model_name, (unsigned long long)want);
        return NULL;
    }
    unsigned char *data = malloc(want ? (size_t)want : 1);
    int ok = data != NULL && fseek(f, 0, SEEK_SET) == 0 &&
             fread(data, 1, (size_t)want, f) == (size_t)want;
    fclose(f);
    if (!ok) {
        free(data);
        fail(error, error_size, "cannot read weights file %s", weights_path);
        return NULL;
    }
    strataml_model *m = strataml_create_from_memory(data, (size_t)want, error, error_size);
    free(data);
    return m;
}

void strataml_destroy(strataml_model *m) {
    if (m == NULL) return;
    pthread_mutex_destroy(&m->lock);
    free(m->arena);
    free(m->weights);
    free(m->io);
    free(m);
}

static const strataml_tensor *input(const strataml_model *m, int i) {
    return m != NULL && i >= 0 && i < m->plan->num_inputs ? &m->plan->inputs[i] : NULL;
}

static const strataml_tensor *output(const strataml_model *m, int i) {
    return m != NULL && i >= 0 && i < m->plan->num_outputs ? &m->plan->outputs[i] : NULL;
}

int strataml_num_inputs(const strataml_model *m) { return m ? m->plan->num_inputs : 0; }
int strataml_num_outputs(const strataml_model *m) { return m ? m->plan->num_outputs : 0; }
const char *strataml_input_name(const strataml_model *m, int i) {
    return input(m, i) ? input(m, i)->name : NULL;
}
const char *strataml_output_name(const strataml_model *m, int i) {
    return output(m, i) ? output(m, i)->name : NULL;
}
const char *strataml_input_dtype(const strataml_model *m, int i) {
    return input(m, i) ? input(m, i)->dtype : NULL;
}
const char *strataml_output_dtype(const strataml_model *m, int i) {
    return output(m, i) ? output(m, i)->dtype : NULL;
}
int strataml_input_rank(const strataml_model *m, int i) {
    return input(m, i) ? input(m, i)->rank : -1;
}
int strataml_output_rank(const strataml_model *m, int i) {
    return output(m, i) ? output(m, i)->rank : -1;
}
const int64_t *strataml_input_shape(const strataml_model *m, int i) {
    return input(m, i) ? input(m, i)->shape : NULL;
}
const int64_t *strataml_output_shape(const strataml_model *m, int i) {
    return output(m, i) ? output(m, i)->shape : NULL;
}
size_t strataml_input_bytes(const strataml_model *m, int i) {
    return input(m, i) ? (size_t)input(m, i)->bytes : 0;
}
size_t strataml_output_bytes(const strataml_model *m, int i) {
    return output(m, i) ? (size_t)output(m, i)->bytes : 0;
}

void strataml_set_num_threads(strataml_model *m, int threads) {
    if (m != NULL) m->threads = threads < 1 ? 1 : threads;
}

int strataml_run(strataml_model *m, const void *const *inputs, void *const *outputs,
                 char *error, size_t error_size) {
    if (m == NULL || (m->plan->num_inputs > 0 && inputs == NULL) ||
        (m->plan->num_outputs > 0 && outputs == NULL)) {
        fail(error, error_size, "strataml_run needs a model, its inputs and its outputs");
        return 1;
    }
    const strataml_plan *plan = m->plan;
    for (int i = 0; i < plan->num_inputs; i++)
        if (inputs[i] == NULL && plan->inputs[i].bytes > 0) {
            fail(error, error_size, "input %d ('%s') is NULL", i, plan->inputs[i].name);
            return 1;
        }
    for (int k = 0; k < plan->num_outputs; k++)
        if (outputs[k] == NULL && plan->outputs[k].bytes > 0) {
            fail(error, error_size, "output %d ('%s') is NULL", k, plan->outputs[k].name);
            return 1;
        }
    pthread_mutex_lock(&m->lock); /* one arena and one io table per model */
    int n_in = plan->num_inputs;
    for (int i = 0; i < n_in; i++) m->io[i] = (void *)inputs[i];
    for (int k = 0; k < plan->num_outputs; k++) m->io[n_in + k] = outputs[k];
    strataml_num_threads = m->threads;
    strataml_entry(m->arena, m->weights, m->io);
    if (strataml_fault) {
        strataml_fault = 0;
        pthread_mutex_unlock(&m->lock);
        fail(error, error_size, "integer division by zero: a Div or Mod of model '%s' met a "
             "zero divisor in these inputs", plan->model_name);
        return 1;
    }
    /* Outputs the kernels did not write in place: a copy of an input, of another output,
     * of a weight or of an arena buffer. */
    for (int k = 0; k < plan->num_outputs; k++) {
        const strataml_tensor *t = &plan->outputs[k];
        const void *from = NULL;
        if (t->region == 2 && t->offset == (uint64_t)(n_in + k)) continue;
        if (t->region == 2) from = m->io[t->offset];
        else if (t->region == 1) from = m->weights + t->offset;
        else from = m->arena + t->offset;
        if (t->bytes > 0 && from != outputs[k]) memmove(outputs[k], from, (size_t)t->bytes);
    }
    pthread_mutex_unlock(&m->lock);
    return 0;
}

const char *strataml_version(void) { return "strataml C runtime, API " "1"; }
